//! Part 3's DNS line: the clusterset DNS responder's UDP throughput. The
//! agent's own server (`mcs_agent::dns::serve`, rate limiting off) on
//! loopback, holding the control part's services; one client keeps a window
//! of queries in flight for one name (`mcs_tests::dns_load`).

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use hickory_proto::rr::RecordType;
use mcs_agent::{
    dns::{self, DnsConfig, RateLimitConfig},
    model::Snapshot,
    sources::SourceUpdate,
};
use mcs_tests::dns_load::{BenchSpec, udp_queries_per_second};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Queries in flight at once.
const WINDOW: usize = 64;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DnsLoad {
    /// Services the responder held.
    pub services: usize,
    pub name: String,
    pub queries: usize,
    pub window: usize,
    /// Answered queries per second.
    pub queries_per_s: f64,
    /// Queries without an answer within a second.
    pub lost: usize,
}

/// Serves `snapshot` and measures `queries` A queries for `name` (after a
/// warm-up of a tenth as many).
pub fn run(snapshot: Snapshot, services: usize, name: &str, queries: usize) -> Result<DnsLoad> {
    // As the agent runs it: two worker threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let update = SourceUpdate {
        snapshot: snapshot.into(),
        complete: true,
        ..SourceUpdate::default()
    };
    let (_updates, receiver) = watch::channel(Some(update));
    let config = DnsConfig {
        rate_limit: RateLimitConfig {
            per_second: None,
            ..RateLimitConfig::default()
        },
        ..DnsConfig::new("127.0.0.1:0".parse().context("loopback address")?)
    };
    let server = runtime
        .block_on(dns::serve(&config, receiver))
        .context("start the DNS responder")?;
    let spec = |queries| BenchSpec {
        server: server.local_addr(),
        name: name.to_owned(),
        record_type: RecordType::A,
        queries,
        window: WINDOW,
        deadline: Duration::from_secs(120),
    };
    let warmup = runtime
        .block_on(udp_queries_per_second(&spec(queries / 10)))
        .context("DNS warm-up")?;
    ensure!(
        warmup.answered > 0,
        "the DNS responder answered none of {} queries for {name}",
        warmup.sent
    );
    let result = runtime
        .block_on(udp_queries_per_second(&spec(queries)))
        .context("DNS load")?;
    runtime
        .block_on(server.shutdown())
        .context("stop the DNS responder")?;
    Ok(DnsLoad {
        services,
        name: name.to_owned(),
        queries: result.sent,
        window: WINDOW,
        queries_per_s: result.queries_per_second(),
        lost: result.lost,
    })
}
