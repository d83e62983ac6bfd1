//! The reconcile context: the one desired-state engine (under the agent's
//! policy), the reconciler and its maps, and the one place rejections are
//! reported — logged and counted once each ([`RejectionLog`]), and handed to
//! the Events module when the source is the API server.

use std::{collections::BTreeSet, sync::Arc, time::Instant};

use tracing::{info, instrument, warn};

use super::failures::Failures;
use crate::{
    conntrack::{Janitor, JanitorReport},
    dataplane::MapHandles,
    desired,
    events::Events,
    metrics::{Metrics, RejectionLabels, SourceLabels},
    model::Rejection,
    reconcile::Reconciler,
    rejection_log::RejectionLog,
    sources::{References, SourceUpdate},
    telemetry::chain,
};

/// State shared by reconciles.
pub(super) struct Context {
    maps: MapHandles,
    metrics: Arc<Metrics>,
    policy: desired::Policy,
    reconciler: Reconciler,
    /// Desired state kept up to date import by import, following the
    /// source's updates (None until the first sync).
    desired: Option<desired::Follower>,
    /// Rejections logged and counted, each once while it persists.
    rejections: RejectionLog,
    /// Kubernetes Events for rejections (API-server source only).
    events: Option<Events>,
    /// Map writes failing in the last reconcile.
    failures: Failures,
    /// Conntrack scans for retired backends, off the reconcile path.
    pub(super) janitor: Janitor,
    /// The source's name in metrics (`file`, `kube`).
    source: &'static str,
    /// What the source reported failing in its last update.
    source_failures: BTreeSet<String>,
}

impl Context {
    pub(super) fn new(
        maps: MapHandles,
        metrics: Arc<Metrics>,
        policy: desired::Policy,
        reconciler: Reconciler,
        janitor: Janitor,
        (source, events): (&'static str, Option<Events>),
    ) -> Self {
        Self {
            maps,
            metrics,
            policy,
            reconciler,
            desired: None,
            rejections: RejectionLog::default(),
            events,
            failures: Failures::default(),
            janitor,
            source,
            source_failures: BTreeSet::new(),
        }
    }

    /// Counts what the source reports failing (each failure once, when it
    /// appears; the source logs it) and sets its health gauge. The source
    /// keeps its last good state meanwhile.
    pub(super) fn source_health(&mut self, update: &SourceUpdate) {
        let labels = SourceLabels {
            source: self.source.to_owned(),
        };
        let failures: BTreeSet<String> = update.failures.iter().cloned().collect();
        let new = failures.difference(&self.source_failures).count();
        self.metrics
            .source_errors
            .get_or_create(&labels)
            .inc_by(new as u64);
        self.metrics
            .source_healthy
            .get_or_create(&labels)
            .set(i64::from(failures.is_empty()));
        if let Ok(mut shown) = self.metrics.source_failures.lock() {
            shown.clone_from(&update.failures);
        }
        self.source_failures = failures;
    }

    #[instrument(skip_all, fields(imports = update.snapshot.imports.len(), slices = update.snapshot.slices().len()))]
    pub(super) fn reconcile(&mut self, update: SourceUpdate, received: Instant) -> bool {
        let started = Instant::now();
        // A failed apply may have left frontends out (a full map refuses new
        // ids): retry everything until all writes succeed again.
        let full_apply = self.failures.any();
        let report = match &mut self.desired {
            Some(follower) if follower.policy() == &self.policy => {
                let (touched, _) = follower.advance(update.snapshot.clone(), &update.journal);
                if full_apply {
                    self.reconciler
                        .apply(follower.engine().state(), &mut self.maps)
                } else {
                    self.reconciler.apply_changed(
                        follower.engine().state(),
                        &touched,
                        &mut self.maps,
                    )
                }
            }
            _ => {
                let follower = self.desired.insert(desired::Follower::new(
                    update.snapshot.clone(),
                    update.journal.version(),
                    self.policy.clone(),
                ));
                self.reconciler
                    .apply(follower.engine().state(), &mut self.maps)
            }
        };
        if let Some(follower) = &self.desired {
            let derived = follower.engine().rejections();
            self.report_rejections(&update.rejections, &derived, &update.references);
        }
        self.metrics
            .sync_duration
            .observe(started.elapsed().as_secs_f64());
        if report.changed() {
            self.metrics
                .event_to_map
                .observe(received.elapsed().as_secs_f64());
        }
        self.metrics
            .frontends
            .set(self.reconciler.frontend_count() as i64);
        self.metrics
            .map_write_errors
            .inc_by(report.errors.len() as u64);
        self.failures.report(&report.errors, &self.metrics);
        if !report.retired.is_empty() {
            let sweep = self.maps.prefilter.sweep_due(Instant::now());
            self.janitor.submit(report.retired.clone(), sweep);
        }
        if report.changed() {
            info!(
                added = report.added,
                updated = report.updated,
                removed = report.removed,
                map_writes = report.map_writes,
                frontends = self.reconciler.frontend_count(),
                "dataplane updated"
            );
        }
        report.errors.is_empty()
    }

    /// A conntrack scan finished (see [`Janitor`]).
    pub(super) fn scanned(&mut self, report: JanitorReport) {
        match report.scan {
            Ok(scan) => {
                if let Some((live, scan_started)) = &scan.live {
                    self.maps.prefilter.sweep(live, *scan_started);
                }
                if scan.removed > 0 {
                    info!(
                        removed = scan.removed,
                        retired_backends = report.retired_backends,
                        "removed UDP conntrack entries of backends that stopped serving"
                    );
                }
            }
            Err(error) => warn!(error = %chain(&error), "conntrack scan failed"),
        }
    }

    /// Every rejection of the current state: the source's (conversion)
    /// and those the engine derives under the agent's policy (conflicts,
    /// unsupported features, endpoints outside the cluster CIDRs).
    fn report_rejections(
        &mut self,
        source: &[Rejection],
        derived: &[Rejection],
        references: &References,
    ) {
        for rejection in self.rejections.log(source.iter().chain(derived)) {
            self.metrics
                .rejected
                .get_or_create(&RejectionLabels {
                    kind: rejection.kind.clone(),
                    reason: rejection.reason().to_owned(),
                })
                .inc();
        }
        if let Some(events) = &mut self.events {
            events.report(source.iter().chain(derived), references);
        }
    }
}
