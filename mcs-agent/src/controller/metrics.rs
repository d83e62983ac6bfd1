//! Prometheus metrics and health endpoints of the controller
//! (`--metrics-addr`): `/metrics`, `/healthz`, `/readyz` (ready once every
//! member has been read or the member-sync timeout has passed).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
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
use tracing::{info, warn};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExportLabels {
    /// `valid` or `invalid`.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// `ServiceImport`, `EndpointSlice`, `ServiceExport` (status).
    pub kind: String,
    /// `apply` or `delete`.
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabels {
    pub family: String,
}

/// The controller's metrics.
#[derive(Debug)]
pub struct Metrics {
    pub exports: Family<ExportLabels, Gauge>,
    pub imports: Gauge,
    pub slices: Gauge,
    pub conflicts: Gauge,
    pub member_up: Family<ClusterLabels, Gauge>,
    pub leader: Gauge,
    pub writes: Family<WriteLabels, Counter>,
    pub write_errors: Family<WriteLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub export_to_import: Histogram,
    pub clusterset_ips: Family<FamilyLabels, Gauge>,
    pub clusterset_ip_capacity: Family<FamilyLabels, Gauge>,
    pub ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            exports: Family::default(),
            imports: Gauge::default(),
            slices: Gauge::default(),
            conflicts: Gauge::default(),
            member_up: Family::default(),
            leader: Gauge::default(),
            writes: Family::default(),
            write_errors: Family::default(),
            // 100 µs … ~13 s.
            reconcile_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            // 1 ms … ~65 s.
            export_to_import: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            clusterset_ips: Family::default(),
            clusterset_ip_capacity: Family::default(),
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    pub fn write(&self, kind: &str, operation: &str, ok: bool) {
        let labels = WriteLabels {
            kind: kind.to_owned(),
            operation: operation.to_owned(),
        };
        if ok {
            self.writes.get_or_create(&labels).inc();
        } else {
            self.write_errors.get_or_create(&labels).inc();
        }
    }

    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut registry = Registry::with_prefix("mcs_controller");
        let metrics = self.clone();
        registry.register(
            "exports",
            "ServiceExports in the cluster set, by state",
            metrics.exports.clone(),
        );
        registry.register(
            "imports",
            "ServiceImports written here",
            metrics.imports.clone(),
        );
        registry.register(
            "slices",
            "EndpointSlices written here",
            metrics.slices.clone(),
        );
        registry.register(
            "conflicts",
            "Services whose exports conflict (KEP-1645 conflict resolution applied)",
            metrics.conflicts.clone(),
        );
        registry.register(
            "member_up",
            "1 while a member cluster's API server answers, 0 while its last state is used",
            metrics.member_up.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the Lease and writes",
            metrics.leader.clone(),
        );
        registry.register("writes", "Successful writes", metrics.writes.clone());
        registry.register(
            "write_errors",
            "Failed writes (retried)",
            metrics.write_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time to compute and write one reconcile",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "export_to_import_seconds",
            "Time from a change seen in a member cluster to the imports and slices written here",
            metrics.export_to_import.clone(),
        );
        registry.register(
            "clusterset_ips",
            "ClusterSetIPs allocated, per IP family",
            metrics.clusterset_ips.clone(),
        );
        registry.register(
            "clusterset_ip_capacity",
            "Addresses in the --clusterset-ip-cidr range, per IP family",
            metrics.clusterset_ip_capacity.clone(),
        );
        registry
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = String::new();
    match encode(&mut text, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn ready_handler(State(state): State<AppState>) -> impl IntoResponse {
    if state.metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the member clusters\n",
        )
    }
}

/// Binds `addr` and serves until the task is aborted.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let state = AppState {
        registry: Arc::new(metrics.registry()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_its_prefix() {
        let metrics = Arc::new(Metrics::default());
        metrics.write("ServiceImport", "apply", true);
        metrics.write("EndpointSlice", "delete", false);
        metrics.export_to_import.observe(0.02);
        metrics
            .member_up
            .get_or_create(&ClusterLabels {
                cluster: "b".into(),
            })
            .set(1);
        let mut text = String::new();
        encode(&mut text, &metrics.registry()).unwrap();
        for name in [
            "mcs_controller_imports",
            "mcs_controller_conflicts",
            "mcs_controller_leader",
            "mcs_controller_writes_total{kind=\"ServiceImport\",operation=\"apply\"} 1",
            "mcs_controller_write_errors_total{kind=\"EndpointSlice\",operation=\"delete\"} 1",
            "mcs_controller_export_to_import_seconds_count 1",
            "mcs_controller_member_up{cluster=\"b\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
