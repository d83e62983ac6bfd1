//! Prometheus metrics and health endpoints (`--metrics-addr`).
//!
//! * `GET /metrics` — Prometheus text: the agent's own metrics (rejections,
//!   sync duration, event-to-map latency, frontend count) and the
//!   dataplane's counters read from the maps (per frontend, per backend,
//!   per source cluster, drops by reason, map fill), at most
//!   [`DATAPLANE_MAX_AGE`] old (`collector.rs`).
//! * `GET /healthz` — 200 while the agent runs.
//! * `GET /readyz` — 200 once the first full sync reached the maps, 503
//!   before.
//!
//! The HTTP server (`server.rs`) bounds what clients can hold: a request
//! head must arrive within a timeout, idle connections are closed, and the
//! number of connections is capped (the oldest idle one makes room).

mod collector;
mod server;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::sync::Semaphore;

use self::collector::DataplaneCollector;
pub use self::server::{EVICTABLE_AFTER, Limits, MAX_HEAD_BYTES, MetricsServer};

/// The dataplane's counters are read from the maps at most this often.
pub const DATAPLANE_MAX_AGE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    pub kind: String,
    pub reason: String,
}

/// The agent's own metrics.
#[derive(Debug)]
pub struct Metrics {
    pub rejected: Family<RejectionLabels, Counter>,
    pub sync_duration: Histogram,
    pub event_to_map: Histogram,
    pub frontends: Gauge,
    pub map_write_errors: Counter,
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
            ready: AtomicBool::new(false),
        }
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
    registry.register_collector(Box::new(DataplaneCollector::new(
        bpffs_dir,
        DATAPLANE_MAX_AGE,
    )));
    registry
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// One encoding at a time: scrapes wait here (a task, not a thread)
    /// and then share the collector's cached read of the maps.
    encoding: Arc<Semaphore>,
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    let Ok(_turn) = state.encoding.acquire().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
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

/// Binds `addr` and serves until the returned server is dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    bpffs_dir: PathBuf,
    limits: Limits,
) -> std::io::Result<MetricsServer> {
    let state = AppState {
        registry: Arc::new(registry(&metrics, bpffs_dir)),
        metrics,
        encoding: Arc::new(Semaphore::new(1)),
    };
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(state);
    server::serve(addr, app, limits).await
}
