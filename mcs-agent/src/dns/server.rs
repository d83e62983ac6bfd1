//! The DNS server: hickory's UDP/TCP machinery (framing, malformed
//! messages, truncation) with our own request handler answering from the
//! current [`ZoneTable`], which a task rebuilds on every source update.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwapOption;
use hickory_proto::{
    op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode},
    rr::{DNSClass, LowerName, Name, Record, RecordType},
};
use hickory_server::{
    Server,
    net::runtime::Time,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use tokio::{
    net::{TcpListener, UdpSocket},
    sync::watch,
    task::JoinHandle,
};
use tracing::{debug, info};

use super::records::{Lookup, ZoneTable};
use crate::{rejection_log::RejectionLog, sources::SourceUpdate};

/// Default zone (KEP-1645 mandates `clusterset.local`).
pub const DEFAULT_ZONE: &str = "clusterset.local";
/// Default TTL of every record, in seconds: short, because endpoints of a
/// headless service come and go and clients should notice quickly.
pub const DEFAULT_TTL: u32 = 5;

/// A TCP connection idle for this long is closed (hickory's guard against
/// clients holding connections open).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Largest UDP response: the DNS Flag Day 2020 size, which avoids IP
/// fragmentation; larger answers are truncated and retried over TCP.
const MAX_UDP_PAYLOAD: u16 = 1232;
/// Attempts at finding a port free for both UDP and TCP when port 0 asks
/// for any.
const BIND_ATTEMPTS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid DNS zone {zone:?}")]
    InvalidZone {
        zone: String,
        #[source]
        source: hickory_proto::ProtoError,
    },
    #[error("invalid DNS zone {zone:?}: {reason}")]
    UnusableZone { zone: String, reason: &'static str },
    #[error("cannot bind DNS {protocol} socket on {addr}")]
    Bind {
        protocol: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("DNS server stopped")]
    Stopped(#[source] hickory_server::net::NetError),
}

/// Where and what to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// UDP and TCP address; port 0 picks a free port (the same for both).
    pub addr: SocketAddr,
    /// Zone apex, e.g. `clusterset.local`.
    pub zone: String,
    /// TTL of every record and of negative answers, in seconds.
    pub ttl: u32,
}

impl DnsConfig {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            zone: DEFAULT_ZONE.to_owned(),
            ttl: DEFAULT_TTL,
        }
    }
}

/// Parses the zone apex into an absolute, lower-case name with room for
/// the longest fixed name under it (`hostmaster.`, `dns-version.`).
pub fn parse_zone(zone: &str) -> Result<Name, DnsError> {
    let mut name = Name::from_ascii(zone).map_err(|source| DnsError::InvalidZone {
        zone: zone.to_owned(),
        source,
    })?;
    name.set_fqdn(true);
    if name.is_root() {
        return Err(DnsError::UnusableZone {
            zone: zone.to_owned(),
            reason: "the root zone cannot be served",
        });
    }
    if name.len() > 200 {
        return Err(DnsError::UnusableZone {
            zone: zone.to_owned(),
            reason: "too long to hold service names",
        });
    }
    Ok(name.to_lowercase())
}

/// A running DNS server. Dropping it stops it.
pub struct DnsServer {
    local_addr: SocketAddr,
    server: Server<Handler>,
    updater: JoinHandle<()>,
}

impl DnsServer {
    /// The bound address (UDP and TCP share the port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Resolves when the server stops on its own (a socket failed).
    pub async fn stopped(&mut self) -> Result<(), DnsError> {
        self.server
            .block_until_done()
            .await
            .map_err(DnsError::Stopped)
    }

    /// Stops answering and waits for the sockets to close.
    pub async fn shutdown(mut self) -> Result<(), DnsError> {
        self.updater.abort();
        self.server
            .shutdown_gracefully()
            .await
            .map_err(DnsError::Stopped)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.updater.abort();
        self.server.shutdown_token().cancel();
    }
}

/// Starts serving `config.zone` on UDP and TCP `config.addr` from the model
/// published on `updates`; every new update is answered from as soon as its
/// records are built, without a restart (an update already published when
/// this is called is served from the first query on). Until one arrives,
/// names in the zone get SERVFAIL (the agent does not know yet, and a
/// negative answer would be cached). Needs no privileges beyond binding the
/// port (53 needs `CAP_NET_BIND_SERVICE`), and no dataplane.
pub async fn serve(
    config: &DnsConfig,
    mut updates: watch::Receiver<Option<SourceUpdate>>,
) -> Result<DnsServer, DnsError> {
    let zone = parse_zone(&config.zone)?;
    let (udp, tcp) = bind(config.addr).await?;
    let local_addr = udp.local_addr().map_err(|source| DnsError::Bind {
        protocol: "UDP",
        addr: config.addr,
        source,
    })?;
    let table = Arc::new(ArcSwapOption::empty());
    let mut follower = ZoneFollower {
        zone: zone.clone(),
        ttl: config.ttl,
        table: Arc::clone(&table),
        serial: 0,
        rejections: RejectionLog::default(),
    };
    // What the source already published is served from the first query on.
    follower.apply(&mut updates);
    let updater = tokio::spawn(follower.follow(updates));
    let handler = Handler {
        origin: LowerName::new(&zone),
        table,
        rotation: AtomicUsize::new(0),
    };
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    info!(%local_addr, zone = %zone, ttl = config.ttl, "DNS server listening (UDP and TCP)");
    Ok(DnsServer {
        local_addr,
        server,
        updater,
    })
}

/// Binds UDP, then TCP on the same port. With port 0 the port UDP got may
/// be taken for TCP; another is tried then.
async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Bind {
                protocol: "UDP",
                addr,
                source,
            })?;
        let mut tcp_addr = addr;
        if addr.port() == 0 {
            let bound = udp.local_addr().map_err(|source| DnsError::Bind {
                protocol: "UDP",
                addr,
                source,
            })?;
            tcp_addr.set_port(bound.port());
        }
        match TcpListener::bind(tcp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error)
                if addr.port() == 0
                    && error.kind() == io::ErrorKind::AddrInUse
                    && attempt < BIND_ATTEMPTS =>
            {
                debug!(port = tcp_addr.port(), "TCP port taken; trying another");
            }
            Err(source) => {
                return Err(DnsError::Bind {
                    protocol: "TCP",
                    addr: tcp_addr,
                    source,
                });
            }
        }
    }
}

/// Keeps the served table in step with the model.
struct ZoneFollower {
    zone: Name,
    ttl: u32,
    table: Arc<ArcSwapOption<ZoneTable>>,
    serial: u32,
    /// The zone's own rejections (names DNS cannot serve), logged once
    /// each while they persist.
    rejections: RejectionLog,
}

impl ZoneFollower {
    /// Builds the table of the current update, if any, and swaps it in.
    /// Built while the update is borrowed: building is synchronous and
    /// cheaper than cloning the snapshot.
    fn apply(&mut self, updates: &mut watch::Receiver<Option<SourceUpdate>>) {
        let built = updates.borrow_and_update().as_ref().map(|update| {
            self.serial = next_serial(self.serial);
            ZoneTable::build(&update.snapshot, &self.zone, self.ttl, self.serial)
        });
        let Some((next, rejections)) = built else {
            return;
        };
        self.rejections.log(&rejections);
        let first = self.table.load().is_none();
        let records = next.record_count();
        self.table.store(Some(Arc::new(next)));
        if first {
            info!(records, serial = self.serial, "DNS zone loaded");
        } else {
            debug!(records, serial = self.serial, "DNS zone rebuilt");
        }
    }

    /// Rebuilds on every later update. When the source goes away the last
    /// table keeps being served.
    async fn follow(mut self, mut updates: watch::Receiver<Option<SourceUpdate>>) {
        while updates.changed().await.is_ok() {
            self.apply(&mut updates);
        }
        debug!("source gone; DNS keeps serving the last zone");
    }
}

/// SOA serials only grow: the clock's seconds (so a restarted agent does
/// not go back), or one more than the last when updates come faster.
fn next_serial(previous: u32) -> u32 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    // RFC 1982 serial arithmetic wraps; truncating the seconds is intended.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "SOA serials are 32-bit and wrap (RFC 1982)"
    )]
    let now = now as u32;
    now.max(previous.wrapping_add(1))
}

struct Handler {
    origin: LowerName,
    table: Arc<ArcSwapOption<ZoneTable>>,
    /// Rotates multi-record answers so clients that take the first address
    /// spread over all of them.
    rotation: AtomicUsize,
}

/// The response for one question.
enum Outcome<'a> {
    Error(ResponseCode),
    Records {
        code: ResponseCode,
        answers: Vec<&'a Record>,
        soa: Option<&'a Record>,
    },
}

impl Handler {
    fn answer<'a>(&self, request: &Request, table: Option<&'a ZoneTable>) -> Outcome<'a> {
        if request.metadata.op_code != OpCode::Query {
            return Outcome::Error(ResponseCode::NotImp);
        }
        let Ok(info) = request.request_info() else {
            return Outcome::Error(ResponseCode::FormErr); // not exactly one question
        };
        let name = info.query.name();
        let record_type = info.query.query_type();
        if !self.origin.zone_of(name) || info.query.query_class() != DNSClass::IN {
            return Outcome::Error(ResponseCode::Refused);
        }
        if matches!(record_type, RecordType::AXFR | RecordType::IXFR) {
            return Outcome::Error(ResponseCode::Refused); // no zone transfers
        }
        let Some(table) = table else {
            return Outcome::Error(ResponseCode::ServFail); // not loaded yet
        };
        match table.lookup(name, record_type) {
            Lookup::Answer(mut answers) => {
                if answers.len() > 1 && record_type != RecordType::ANY {
                    let turn = self.rotation.fetch_add(1, Ordering::Relaxed);
                    let by = turn % answers.len();
                    answers.rotate_left(by);
                }
                Outcome::Records {
                    code: ResponseCode::NoError,
                    answers,
                    soa: None,
                }
            }
            Lookup::NoData => Outcome::Records {
                code: ResponseCode::NoError,
                answers: Vec::new(),
                soa: Some(table.soa()),
            },
            Lookup::NxDomain => Outcome::Records {
                code: ResponseCode::NXDomain,
                answers: Vec::new(),
                soa: Some(table.soa()),
            },
            Lookup::NotInZone => Outcome::Error(ResponseCode::Refused),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        // EDNS (RFC 6891): answer with OPT when asked with it; only version 0
        // exists. The payload bounds UDP responses (hickory truncates there).
        let mut response_edns = None;
        let mut bad_version = false;
        if let Some(request_edns) = &request.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(request_edns.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns.set_version(0);
            bad_version = request_edns.version() > 0;
            response_edns = Some(edns);
        }
        let table = self.table.load_full();
        let outcome = if bad_version {
            Outcome::Error(ResponseCode::BADVERS)
        } else {
            self.answer(request, table.as_deref())
        };
        let builder = MessageResponseBuilder::new(&request.queries, response_edns.as_ref());
        let response = match outcome {
            Outcome::Error(code) => {
                metadata.response_code = code;
                builder.build(metadata, Vec::new(), Vec::new(), None, Vec::new())
            }
            Outcome::Records { code, answers, soa } => {
                metadata.response_code = code;
                metadata.authoritative = true;
                builder.build(metadata, answers, Vec::new(), soa, Vec::new())
            }
        };
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                debug!(%error, src = %request.src(), "cannot send DNS response");
                let mut failed = Metadata::response_from_request(&request.metadata);
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: failed,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_are_absolute_lower_case_and_not_the_root() {
        assert_eq!(
            parse_zone("ClusterSet.Local")
                .map(|name| name.to_string())
                .ok(),
            Some("clusterset.local.".to_owned())
        );
        assert!(parse_zone("clusterset.local.").is_ok());
        for bad in [".", "", "a..b", &"x".repeat(64), &"abcdefghi.".repeat(21)] {
            assert!(parse_zone(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serials_only_grow() {
        let first = next_serial(0);
        assert!(first > 1_600_000_000, "clock based: {first}");
        assert_eq!(next_serial(first + 10), first + 11);
        // Past u32::MAX the serial wraps to the clock (RFC 1982 "greater").
        assert!(next_serial(u32::MAX) >= first);
    }
}
