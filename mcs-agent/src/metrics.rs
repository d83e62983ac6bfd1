//! Prometheus metrics and health endpoints (`--metrics-addr`).
//!
//! * `GET /metrics` — Prometheus text: the agent's own metrics (rejections,
//!   sync duration, event-to-map latency, frontend count) and the
//!   dataplane's counters read from the maps at scrape time (per frontend,
//!   per backend, per source cluster, drops by reason, map fill).
//! * `GET /healthz` — 200 while the agent runs.
//! * `GET /readyz` — 200 once the first full sync reached the maps, 503
//!   before.

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
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first full sync\n",
        )
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
