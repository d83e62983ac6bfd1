//! Prometheus metrics and health endpoints (`--metrics-addr`).
//!
//! * `GET /metrics` — Prometheus text: the agent's own metrics (rejections,
//!   sync duration, event-to-map latency, frontend count) and the
//!   dataplane's counters read from the maps (per frontend, per backend,
//!   per source cluster, drops by reason, map fill; `collector.rs`). The
//!   dataplane's part is rendered at most once per [`PAGE_MAX_AGE`] and
//!   shared by every scrape meanwhile, so a scrape costs a copy of it
//!   however many arrive and however large the dataplane; the agent's own
//!   metrics (a few dozen series) are encoded fresh on every scrape.
//! * `GET /healthz` — 200 while the agent runs.
//! * `GET /readyz` — 200 once the first full sync reached the maps, 503
//!   before, with the reason (e.g. a source that has not delivered a
//!   complete snapshot since an earlier agent's dataplane was adopted);
//!   while ready, the body lists what the source fails to read, if
//!   anything.
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
    time::{Duration, Instant},
};

use axum::body::Bytes;
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::{
        EncodeLabelSet,
        text::{encode_eof, encode_registry},
    },
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::sync::Mutex;

use self::collector::DataplaneCollector;
pub use self::server::{Limits, MAX_HEAD_BYTES, MetricsServer};

/// The dataplane's part of `/metrics` is rendered (the maps read) at most
/// this often.
pub const PAGE_MAX_AGE: Duration = Duration::from_secs(5);

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
    pub not_ready: std::sync::Mutex<String>,
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
    pub source_failures: std::sync::Mutex<Vec<String>>,
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
            not_ready: std::sync::Mutex::new("waiting for the first full sync".to_owned()),
            conntrack_expired: Family::default(),
            conntrack_scanned: Counter::default(),
            // 1 ms … ~65 s.
            conntrack_gc_pass: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            sock_revnat_expired: Counter::default(),
            source_healthy: Family::default(),
            source_errors: Family::default(),
            source_failures: std::sync::Mutex::new(Vec::new()),
        }
    }
}

/// Registry with the agent's own metrics.
pub fn registry(metrics: &Arc<Metrics>) -> Registry {
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
    registry
}

/// Registry with the dataplane's counters, read from the maps.
fn dataplane_registry(bpffs_dir: PathBuf) -> Registry {
    let mut registry = Registry::with_prefix("mcs");
    registry.register_collector(Box::new(DataplaneCollector::new(bpffs_dir)));
    registry
}

#[derive(Clone)]
struct AppState {
    own: Arc<Registry>,
    dataplane: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// The dataplane's last rendered part and when; scrapes wait here (as
    /// tasks, not threads) while one renders it.
    dataplane_page: Arc<Mutex<Option<(Instant, Bytes)>>>,
}

/// The dataplane's part: the cached one, or a new one rendered on a
/// blocking thread (reading the maps is blocking syscalls, encoding is CPU
/// work).
async fn dataplane_page(state: &AppState) -> Option<Bytes> {
    let mut page = state.dataplane_page.lock().await;
    if let Some((rendered, text)) = &*page
        && rendered.elapsed() < PAGE_MAX_AGE
    {
        return Some(text.clone());
    }
    let registry = state.dataplane.clone();
    let text = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        encode_registry(&mut text, &registry).map(|()| Bytes::from(text))
    })
    .await
    .ok()?
    .ok()?;
    *page = Some((Instant::now(), text.clone()));
    Some(text)
}

/// The whole page: the agent's own metrics as they are now, then the
/// dataplane's part.
async fn page(state: &AppState) -> Option<String> {
    let dataplane = dataplane_page(state).await?;
    let mut text = String::new();
    encode_registry(&mut text, &state.own).ok()?;
    text.push_str(std::str::from_utf8(&dataplane).ok()?);
    encode_eof(&mut text).ok()?;
    Some(text)
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    match page(&state).await {
        Some(text) => (
            StatusCode::OK,
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
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

/// Binds `addr` and serves until the returned server is dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    bpffs_dir: PathBuf,
    limits: Limits,
) -> std::io::Result<MetricsServer> {
    let state = AppState {
        own: Arc::new(registry(&metrics)),
        dataplane: Arc::new(dataplane_registry(bpffs_dir)),
        metrics,
        dataplane_page: Arc::new(Mutex::new(None)),
    };
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(state);
    server::serve(addr, app, limits).await
}
