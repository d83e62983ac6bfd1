//! Prometheus metrics and health endpoints (`--metrics-addr`).
//!
//! * `GET /metrics` — Prometheus text: the agent's own metrics (rejections,
//!   sync duration, event-to-map latency, frontend count) and the
//!   dataplane's counters read from the maps at scrape time (per frontend,
//!   per backend, per source cluster, drops by reason, map fill).
//! * `GET /healthz` — 200 while the agent runs.
//! * `GET /readyz` — 200 once the first full sync reached the maps, 503
//!   before, with the reason (e.g. a source that has not delivered a
//!   complete snapshot since an earlier agent's dataplane was adopted);
//!   while ready, the body lists what the source fails to read, if
//!   anything.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tracing::{info, warn};

use crate::{dataplane::PinnedMaps, dump};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    pub kind: String,
    pub reason: String,
}

/// A conntrack expiry class (`crate::conntrack::expiry::Class::label`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: String,
}

/// An object source (`file`, `kube`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

/// A map, by its pinned name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

/// The agent's own metrics.
#[derive(Debug)]
pub struct Metrics {
    pub rejected: Family<RejectionLabels, Counter>,
    pub sync_duration: Histogram,
    pub event_to_map: Histogram,
    pub frontends: Gauge,
    pub map_write_errors: Counter,
    /// Frontends that started failing because a map was full (each time a
    /// frontend's failure appears, not on every retry), by map.
    pub map_full: Family<MapLabels, Counter>,
    /// Frontends failing now because a map is full, by map.
    pub map_full_frontends: Family<MapLabels, Gauge>,
    pub ready: AtomicBool,
    /// Why the agent is not ready (for `/readyz`), when it is not.
    pub not_ready: Mutex<String>,
    /// Conntrack flows expired by the janitor, by class.
    pub conntrack_expired: Family<ClassLabels, Counter>,
    /// Conntrack entries the janitor's collection read.
    pub conntrack_scanned: Counter,
    /// Duration of a collection pass over the whole conntrack map.
    pub conntrack_gc_pass: Histogram,
    /// Socket-LB reverse entries expired.
    pub sock_revnat_expired: Counter,
    /// 1 while the source delivers complete snapshots, 0 while it fails
    /// (the last good state is kept).
    pub source_healthy: Family<SourceLabels, Gauge>,
    /// Source failures (a file that does not parse, a list that fails),
    /// each counted once when it appears.
    pub source_errors: Family<SourceLabels, Counter>,
    /// What the source fails to read right now (shown by `/readyz`).
    pub source_failures: Mutex<Vec<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            rejected: Family::default(),
            // 100 µs … ~13 s.
            sync_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            event_to_map: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            frontends: Gauge::default(),
            map_write_errors: Counter::default(),
            map_full: Family::default(),
            map_full_frontends: Family::default(),
            ready: AtomicBool::new(false),
            not_ready: Mutex::new("waiting for the first full sync".to_owned()),
            conntrack_expired: Family::default(),
            conntrack_scanned: Counter::default(),
            // 1 ms … ~65 s.
            conntrack_gc_pass: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            sock_revnat_expired: Counter::default(),
            source_healthy: Family::default(),
            source_errors: Family::default(),
            source_failures: Mutex::new(Vec::new()),
        }
    }
}

/// Reads the dataplane's counters from the pinned maps at scrape time.
#[derive(Debug)]
struct DataplaneCollector {
    bpffs_dir: PathBuf,
    maps: Mutex<Option<PinnedMaps>>,
}

impl std::fmt::Debug for PinnedMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinnedMaps")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&'static str, String)>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric =
        encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&'static str, String)>, f64)],
) -> Result<(), std::fmt::Error> {
    let mut metric =
        encoder.encode_descriptor(name, help, None, ConstGauge::new(0.0f64).metric_type())?;
    for (labels, value) in rows {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for DataplaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(mut guard) = self.maps.lock() else {
            return Ok(());
        };
        if guard.is_none() {
            *guard = PinnedMaps::open(&self.bpffs_dir).ok();
        }
        let Some(maps) = guard.as_ref() else {
            return Ok(());
        };
        let report = match dump::collect(&maps.0) {
            Ok(report) => report,
            Err(error) => {
                warn!(error = %format!("{error:#}"), "cannot read the maps for metrics");
                *guard = None; // reopen next time
                return Ok(());
            }
        };
        let frontend = |s: &dump::ServiceDump| {
            vec![
                ("frontend", s.name.clone()),
                ("vip", s.vip.to_string()),
                ("port", s.port.to_string()),
                ("protocol", s.protocol.clone()),
            ]
        };
        for (name, help, pick) in [
            (
                "frontend_packets",
                "Packets translated per frontend.",
                (|s: &dump::Stats| s.packets) as fn(&dump::Stats) -> u64,
            ),
            (
                "frontend_bytes",
                "Bytes translated per frontend.",
                |s: &dump::Stats| s.bytes,
            ),
            (
                "frontend_new_flows",
                "New flows balanced per frontend.",
                |s: &dump::Stats| s.new_flows,
            ),
            (
                "frontend_refused",
                "New flows refused (no usable backend) per frontend.",
                |s: &dump::Stats| s.no_backend,
            ),
        ] {
            let rows: Vec<_> = report
                .services
                .iter()
                .map(|s| (frontend(s), pick(&s.stats)))
                .collect();
            counter(&mut encoder, name, help, &rows)?;
        }
        for (name, help, pick) in [
            (
                "socket_connections",
                "Sockets (connect/sendmsg) sent to a backend by socket LB, per frontend.",
                (|s: &dump::Stats| s.new_flows) as fn(&dump::Stats) -> u64,
            ),
            (
                "socket_refused",
                "Socket-LB connects refused (no usable backend), per frontend.",
                |s: &dump::Stats| s.no_backend,
            ),
        ] {
            let rows: Vec<_> = report
                .services
                .iter()
                .map(|s| (frontend(s), pick(&s.socket_stats)))
                .collect();
            counter(&mut encoder, name, help, &rows)?;
        }
        for (name, help, pick) in [
            (
                "backend_packets",
                "Packets per backend endpoint.",
                (|s: &dump::Stats| s.packets) as fn(&dump::Stats) -> u64,
            ),
            (
                "backend_bytes",
                "Bytes per backend endpoint.",
                |s: &dump::Stats| s.bytes,
            ),
            (
                "backend_new_flows",
                "New flows per backend endpoint.",
                |s: &dump::Stats| s.new_flows,
            ),
        ] {
            let rows: Vec<_> = report
                .backends
                .iter()
                .map(|b| {
                    (
                        vec![
                            ("backend", format!("{}:{}", b.addr, b.port)),
                            ("cluster", b.cluster.clone()),
                        ],
                        pick(&b.stats),
                    )
                })
                .collect();
            counter(&mut encoder, name, help, &rows)?;
        }
        for (name, help, pick) in [
            (
                "cluster_packets",
                "Packets per source cluster.",
                (|s: &dump::Stats| s.packets) as fn(&dump::Stats) -> u64,
            ),
            (
                "cluster_bytes",
                "Bytes per source cluster.",
                |s: &dump::Stats| s.bytes,
            ),
            (
                "cluster_new_flows",
                "New flows per source cluster.",
                |s: &dump::Stats| s.new_flows,
            ),
        ] {
            let rows: Vec<_> = report
                .clusters
                .iter()
                .map(|(cluster, stats)| (vec![("cluster", cluster.clone())], pick(stats)))
                .collect();
            counter(&mut encoder, name, help, &rows)?;
        }
        let drops: Vec<_> = report
            .drops
            .iter()
            .map(|(reason, count)| (vec![("reason", reason.clone())], *count))
            .collect();
        counter(
            &mut encoder,
            "drops",
            "Packets not forwarded, by reason.",
            &drops,
        )?;
        let fill: Vec<_> = report
            .maps
            .iter()
            .map(|m| {
                (
                    vec![("map", m.name.clone())],
                    m.entries as f64 / m.capacity.max(1) as f64,
                )
            })
            .collect();
        gauge(
            &mut encoder,
            "map_fill_ratio",
            "Entries / capacity per map.",
            &fill,
        )?;
        Ok(())
    }
}

/// Registry with the agent's metrics and the dataplane collector.
pub fn registry(metrics: &Arc<Metrics>, bpffs_dir: PathBuf) -> Registry {
    let mut registry = Registry::with_prefix("mcs");
    registry.register(
        "objects_rejected",
        "Objects (or parts of them) rejected by validation, by kind and reason.",
        metrics.rejected.clone(),
    );
    registry.register(
        "sync_duration_seconds",
        "Time to compute and apply one reconcile.",
        metrics.sync_duration.clone(),
    );
    registry.register(
        "event_to_map_seconds",
        "Time from a source publishing a change to the maps holding it.",
        metrics.event_to_map.clone(),
    );
    registry.register(
        "frontends",
        "Frontends programmed.",
        metrics.frontends.clone(),
    );
    registry.register(
        "map_write_errors",
        "Failed map writes (retried).",
        metrics.map_write_errors.clone(),
    );
    registry.register(
        "conntrack_expired",
        "Conntrack flows (both entries) expired by the janitor, by class (syn, established, closed, other).",
        metrics.conntrack_expired.clone(),
    );
    registry.register(
        "conntrack_gc_scanned",
        "Conntrack entries read by the janitor's expiry collection.",
        metrics.conntrack_scanned.clone(),
    );
    registry.register(
        "conntrack_gc_pass_seconds",
        "Time for one expiry collection pass over the whole conntrack map.",
        metrics.conntrack_gc_pass.clone(),
    );
    registry.register(
        "socket_revnat_expired",
        "Socket-LB reverse translations expired by the janitor.",
        metrics.sock_revnat_expired.clone(),
    );
    registry.register(
        "source_healthy",
        "1 while the source delivers complete snapshots; 0 while it fails and the last good state is kept.",
        metrics.source_healthy.clone(),
    );
    registry.register(
        "source_errors",
        "Source failures (unparsable file, failed list), each counted when it appears.",
        metrics.source_errors.clone(),
    );
    registry.register(
        "map_full",
        "Frontends that could not be programmed because a map (or the ids indexing it) was full, counted when the failure appears; raise the map's size flag.",
        metrics.map_full.clone(),
    );
    registry.register(
        "map_full_frontends",
        "Frontends not programmed now because a map is full, by map.",
        metrics.map_full_frontends.clone(),
    );
    registry.register_collector(Box::new(DataplaneCollector {
        bpffs_dir,
        maps: Mutex::new(None),
    }));
    registry
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    let registry = state.registry.clone();
    // Reading the maps is blocking syscalls: keep it off the async workers.
    let body = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        encode(&mut text, &registry).map(|()| text)
    })
    .await;
    match body {
        Ok(Ok(text)) => (
            StatusCode::OK,
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn ready_handler(State(state): State<AppState>) -> impl IntoResponse {
    if state.metrics.ready.load(Ordering::Relaxed) {
        // Still ready while the source fails: the dataplane serves the
        // last good state (a broken source is the metrics' and logs' to
        // report; readiness flapping with it would help nobody).
        let failures = state
            .metrics
            .source_failures
            .lock()
            .map(|failures| failures.clone())
            .unwrap_or_default();
        let mut body = "ready\n".to_owned();
        if !failures.is_empty() {
            body.push_str("source failing, serving its last good state:\n");
            for failure in failures {
                body.push_str(&format!("  {failure}\n"));
            }
        }
        (StatusCode::OK, body)
    } else {
        let reason = state
            .metrics
            .not_ready
            .lock()
            .map(|reason| reason.clone())
            .unwrap_or_default();
        (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"))
    }
}

impl Metrics {
    /// Not ready, and why (`/readyz` says it).
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.ready.store(false, Ordering::Relaxed);
        if let Ok(mut current) = self.not_ready.lock() {
            *current = reason.into();
        }
    }

    /// Ready (the first full sync reached the maps).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }
}

/// Binds `addr` and serves until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    bpffs_dir: PathBuf,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let state = AppState {
        registry: Arc::new(registry(&metrics, bpffs_dir)),
        metrics,
    };
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "metrics and health endpoints listening");
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            warn!(%error, "metrics server stopped");
        }
    }))
}
