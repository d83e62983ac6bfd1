//! The DNS server: hickory's UDP/TCP machinery (framing, malformed
//! messages, truncation) with our own request handler (`handler.rs`)
//! answering from the current [`ZoneTable`], which a task rebuilds on every
//! source update, off the async workers and without holding the update
//! channel's lock.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, atomic::AtomicUsize},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwapOption;
use hickory_proto::rr::{LowerName, Name};
use hickory_server::Server;
use tokio::{
    net::{TcpListener, UdpSocket},
    sync::watch,
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use super::{
    handler::Handler,
    rate_limit::{RateLimitConfig, ResponseLimiter, SWEEP_INTERVAL},
    records::ZoneTable,
};
use crate::{desired::ClustersetIpCidrs, rejection_log::RejectionLog, sources::SourceUpdate};

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
    /// ClusterSetIPs outside these ranges are not answered (as the
    /// dataplane does not serve them); empty answers every one.
    pub clusterset_ip_cidrs: ClustersetIpCidrs,
    /// UDP response rate limiting per client prefix.
    pub rate_limit: RateLimitConfig,
}

impl DnsConfig {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            zone: DEFAULT_ZONE.to_owned(),
            ttl: DEFAULT_TTL,
            clusterset_ip_cidrs: ClustersetIpCidrs::default(),
            rate_limit: RateLimitConfig::default(),
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
    /// Forgets idle client prefixes of the rate limiter.
    sweeper: Option<JoinHandle<()>>,
    limiter: Option<Arc<ResponseLimiter>>,
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

    /// UDP responses rate limited so far (dropped or truncated).
    pub fn rate_limited(&self) -> u64 {
        self.limiter.as_ref().map_or(0, |limiter| limiter.limited())
    }

    /// Stops answering and waits for the sockets to close.
    pub async fn shutdown(mut self) -> Result<(), DnsError> {
        self.updater.abort();
        if let Some(sweeper) = &self.sweeper {
            sweeper.abort();
        }
        self.server
            .shutdown_gracefully()
            .await
            .map_err(DnsError::Stopped)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.updater.abort();
        if let Some(sweeper) = &self.sweeper {
            sweeper.abort();
        }
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
        clusterset_ips: config.clusterset_ip_cidrs.clone(),
        table: Arc::clone(&table),
        serial: 0,
        rejections: RejectionLog::default(),
    };
    // What the source already published is served from the first query on.
    follower.apply(&mut updates).await;
    let updater = tokio::spawn(follower.follow(updates));
    let limiter = ResponseLimiter::new(config.rate_limit).map(Arc::new);
    let sweeper = limiter.clone().map(|limiter| {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                every.tick().await;
                limiter.sweep();
            }
        })
    });
    let handler = Handler {
        origin: LowerName::new(&zone),
        table,
        rotation: AtomicUsize::new(0),
        limiter: limiter.clone(),
    };
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    let rate_limit = config.rate_limit.per_second.map(|rate| {
        format!(
            "{rate}/s per /{} or /{}, slip {}",
            config.rate_limit.ipv4_prefix, config.rate_limit.ipv6_prefix, config.rate_limit.slip
        )
    });
    info!(
        %local_addr,
        zone = %zone,
        ttl = config.ttl,
        udp_rate_limit = rate_limit.as_deref().unwrap_or("off"),
        "DNS server listening (UDP and TCP)"
    );
    Ok(DnsServer {
        local_addr,
        server,
        updater,
        sweeper,
        limiter,
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
    clusterset_ips: ClustersetIpCidrs,
    table: Arc<ArcSwapOption<ZoneTable>>,
    serial: u32,
    /// The zone's own rejections (names DNS cannot serve), logged once
    /// each while they persist.
    rejections: RejectionLog,
}

impl ZoneFollower {
    /// Builds the table of the current update, if any, and swaps it in.
    /// Only the snapshot is taken under the channel's lock (a copy of its
    /// maps of shared objects), so the source's next publish never waits
    /// for a build; the build, CPU work in the size of the zone, runs on a
    /// blocking thread, not on an async worker.
    async fn apply(&mut self, updates: &mut watch::Receiver<Option<SourceUpdate>>) {
        let Some(snapshot) = updates
            .borrow_and_update()
            .as_ref()
            .map(|update| update.snapshot.clone())
        else {
            return;
        };
        self.serial = next_serial(self.serial);
        let (zone, ttl, serial) = (self.zone.clone(), self.ttl, self.serial);
        let clusterset_ips = self.clusterset_ips.clone();
        let built = tokio::task::spawn_blocking(move || {
            ZoneTable::build_with(&snapshot, &zone, ttl, serial, &clusterset_ips)
        })
        .await;
        let (next, rejections) = match built {
            Ok(built) => built,
            Err(error) => {
                warn!(%error, "DNS zone build failed; the previous zone is still served");
                return;
            }
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

    /// Rebuilds on every later update (updates published during a build
    /// are taken together, from the latest). When the source goes away the
    /// last table keeps being served.
    async fn follow(mut self, mut updates: watch::Receiver<Option<SourceUpdate>>) {
        while updates.changed().await.is_ok() {
            self.apply(&mut updates).await;
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
