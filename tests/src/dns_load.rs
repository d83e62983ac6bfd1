//! Queries per second over UDP against a DNS server: a load generator for
//! timing the agent's clusterset DNS server (`mcs-agent`'s `dns` test), kept
//! out of the agent itself.
//!
//! It keeps a window of queries in flight on one socket (as a busy
//! resolver would) and counts answered queries per second of wall time.
//! Bounded in count and in time; it only sends to the address it is given,
//! which callers keep on loopback.

use std::{
    collections::HashSet,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RecordType},
    serialize::binary::{BinDecodable, BinEncodable},
};
use tokio::{net::UdpSocket, time::timeout};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid query name {name:?}")]
    Name {
        name: String,
        #[source]
        source: hickory_proto::ProtoError,
    },
    #[error("cannot encode the query")]
    Encode(#[source] hickory_proto::ProtoError),
    #[error("UDP socket")]
    Socket(#[source] io::Error),
}

/// What to send.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    pub server: SocketAddr,
    pub name: String,
    pub record_type: RecordType,
    /// Queries to send in total.
    pub queries: usize,
    /// Queries in flight at once.
    pub window: usize,
    /// Stop after this long even if not done.
    pub deadline: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BenchResult {
    pub sent: usize,
    pub answered: usize,
    /// Queries without a response within a second (UDP has no retries here).
    pub lost: usize,
    pub elapsed: Duration,
}

impl BenchResult {
    /// Answered queries per second.
    pub fn queries_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.answered as f64 / seconds
        } else {
            0.0
        }
    }
}

/// Waiting longer than this for any response counts the whole window lost.
const LOSS_TIMEOUT: Duration = Duration::from_secs(1);

fn encode_query(name: &Name, record_type: RecordType, id: u16) -> Result<Vec<u8>, BenchError> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.metadata.recursion_desired = false;
    message.add_query(Query::query(name.clone(), record_type));
    message.to_bytes().map_err(BenchError::Encode)
}

/// Sends `spec.queries` queries with `spec.window` in flight and measures
/// how many are answered per second.
pub async fn udp_queries_per_second(spec: &BenchSpec) -> Result<BenchResult, BenchError> {
    let name = Name::from_ascii(&spec.name).map_err(|source| BenchError::Name {
        name: spec.name.clone(),
        source,
    })?;
    let local: SocketAddr = match spec.server.ip() {
        IpAddr::V4(_) => (Ipv4Addr::LOCALHOST, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::LOCALHOST, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(BenchError::Socket)?;
    socket
        .connect(spec.server)
        .await
        .map_err(BenchError::Socket)?;
    let window = spec.window.clamp(1, usize::from(u16::MAX));
    // Query ids double as the "in flight" set; each id is reused only after
    // its query was answered or given up.
    let mut in_flight: HashSet<u16> = HashSet::with_capacity(window);
    let mut next_id: u16 = 0;
    let mut result = BenchResult {
        sent: 0,
        answered: 0,
        lost: 0,
        elapsed: Duration::ZERO,
    };
    let mut buffer = vec![0_u8; 4096];
    let start = Instant::now();
    while result.answered + result.lost < spec.queries && start.elapsed() < spec.deadline {
        while in_flight.len() < window && result.sent < spec.queries {
            while in_flight.contains(&next_id) {
                next_id = next_id.wrapping_add(1);
            }
            let query = encode_query(&name, spec.record_type, next_id)?;
            socket.send(&query).await.map_err(BenchError::Socket)?;
            in_flight.insert(next_id);
            next_id = next_id.wrapping_add(1);
            result.sent += 1;
        }
        match timeout(LOSS_TIMEOUT, socket.recv(&mut buffer)).await {
            Ok(Ok(length)) => {
                let id = buffer
                    .get(..length)
                    .and_then(|bytes| Message::from_bytes(bytes).ok())
                    .map(|message| message.metadata.id);
                if let Some(id) = id
                    && in_flight.remove(&id)
                {
                    result.answered += 1;
                }
            }
            Ok(Err(error)) => return Err(BenchError::Socket(error)),
            Err(_elapsed) => {
                result.lost += in_flight.len();
                in_flight.clear();
            }
        }
    }
    result.elapsed = start.elapsed();
    Ok(result)
}
