//! `mcs-agent run`: load and attach the dataplane, follow the source,
//! reconcile every change, shut down cleanly on SIGTERM/SIGINT.

use std::{
    collections::BTreeSet,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{error, info, instrument, warn};

use crate::{
    cli::RunArgs,
    conntrack::{Janitor, JanitorReport},
    dataplane::{AdoptionReport, Dataplane, MapHandles},
    desired,
    dns::{self, DnsConfig},
    metrics::{Metrics, RejectionLabels},
    model::{Rejection, Snapshot},
    reconcile::Reconciler,
    sources::{Source, SourceError, SourceUpdate},
    telemetry::chain,
};

/// Retry delay after a failed map write.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// State shared by reconciles.
struct Context {
    maps: MapHandles,
    metrics: Arc<Metrics>,
    policy: desired::Policy,
    reconciler: Reconciler,
    /// Desired state kept up to date import by import, with the snapshot
    /// it was computed from (None until the first sync).
    desired: Option<(desired::Incremental, Snapshot)>,
    /// Rejections already logged, so an unchanged bad object is reported
    /// once, not on every change of something else.
    reported: BTreeSet<String>,
    /// Map writes failing in the last reconcile.
    failing: BTreeSet<String>,
    /// Conntrack scans for retired backends, off the reconcile path.
    janitor: Janitor,
}

impl Context {
    #[instrument(skip_all, fields(imports = update.snapshot.imports.len(), slices = update.snapshot.slices().len()))]
    fn reconcile(&mut self, update: SourceUpdate, received: Instant) -> bool {
        let started = Instant::now();
        // A failed apply may have left frontends out (a full map refuses new
        // ids): retry everything until all writes succeed again.
        let full_apply = !self.failing.is_empty();
        let report = match self.desired.take() {
            Some((mut engine, previous)) if engine.policy() == &self.policy => {
                let changes = desired::Changes::between(&previous, &update.snapshot);
                let affected = engine.affected(&changes);
                let touched = engine.update(&update.snapshot, &affected);
                let report = if full_apply {
                    self.reconciler.apply(engine.state(), &mut self.maps)
                } else {
                    self.reconciler
                        .apply_changed(engine.state(), &touched, &mut self.maps)
                };
                self.desired = Some((engine, update.snapshot));
                report
            }
            _ => {
                let engine = desired::Incremental::new(&update.snapshot, self.policy.clone());
                let report = self.reconciler.apply(engine.state(), &mut self.maps);
                self.desired = Some((engine, update.snapshot));
                report
            }
        };
        if let Some((engine, _)) = &self.desired {
            let derived = engine.rejections();
            self.report_rejections(update.rejections.iter().chain(&derived));
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
        // A full map fails the same writes on every retry: log a failure
        // when it appears, not once a second.
        let failures: BTreeSet<String> = report
            .errors
            .iter()
            .map(|(frontend, error)| format!("{frontend}: {}", chain(error)))
            .collect();
        for failure in failures.difference(&self.failing) {
            error!(failure = %failure, "map update failed; retrying every second");
        }
        if failures.is_empty() && !self.failing.is_empty() {
            info!("all map updates succeeded again");
        }
        self.failing = failures;
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
    fn scanned(&mut self, report: JanitorReport) {
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

    fn report_rejections<'a>(&mut self, rejections: impl Iterator<Item = &'a Rejection>) {
        let mut current = BTreeSet::new();
        for rejection in rejections {
            let line = rejection.to_string();
            if !self.reported.contains(&line) {
                self.metrics
                    .rejected
                    .get_or_create(&RejectionLabels {
                        kind: rejection.kind.clone(),
                        reason: rejection.reason().to_owned(),
                    })
                    .inc();
                warn!(
                    kind = rejection.kind,
                    object = %rejection.object,
                    reason = rejection.reason(),
                    "rejected: {line}"
                );
            }
            current.insert(line);
        }
        self.reported = current;
    }
}

async fn shutdown_signal() -> anyhow::Result<&'static str> {
    let mut terminate = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    Ok(tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    })
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    if let Some(cluster) = &args.cluster_id {
        info!(cluster, "starting");
    }
    // Open and start the source before touching the kernel: a wrong path
    // or kubeconfig fails fast.
    let source = Source::open(&args.source, args.kubeconfig.as_deref())
        .await
        .context("open the source")?;
    let (updates_tx, mut updates) = watch::channel(None);
    let mut source_task = tokio::spawn(source.run(updates_tx));
    // DNS answers from the same updates as the dataplane (its own receiver),
    // bound before the kernel is touched so a taken port fails fast.
    let dns = match args.dns_addr {
        Some(addr) => {
            let config = DnsConfig {
                addr,
                zone: args.dns_zone.clone(),
                ttl: args.dns_ttl,
            };
            let server = dns::serve(&config, updates.clone()).await;
            Some(server.context("start the DNS server")?)
        }
        None => None,
    };

    let (mut dataplane, adoption) =
        Dataplane::load(&args.bpffs_dir, &args.map_sizes()).context("load the dataplane")?;
    let result = serve(
        &args,
        &mut dataplane,
        &adoption,
        &mut updates,
        &mut source_task,
    )
    .await;
    source_task.abort();
    drop(dns); // stops answering
    // A failed start leaves nothing behind unless an earlier agent's
    // dataplane was adopted (then it keeps serving, as before we came).
    let detach = args.detach_on_exit || (result.is_err() && adoption.adopted.is_empty());
    dataplane.shutdown(detach);
    info!("stopped");
    result
}

async fn serve(
    args: &RunArgs,
    dataplane: &mut Dataplane,
    adoption: &AdoptionReport,
    updates: &mut watch::Receiver<Option<SourceUpdate>>,
    source_task: &mut tokio::task::JoinHandle<Result<(), SourceError>>,
) -> anyhow::Result<()> {
    if args.locality == desired::Locality::LocalFirst && args.cluster_id.is_none() {
        warn!("--locality local-first without --cluster-id behaves like `none`");
    }
    let (mut maps, adopted) = if adoption.adopted_state() {
        let (maps, state) = dataplane
            .maps_with_state()
            .context("open and read the adopted maps")?;
        (maps, Some(state))
    } else {
        (dataplane.maps().context("open the dataplane maps")?, None)
    };
    match dataplane.calibrate_clock(&mut maps) {
        Ok(clock) => info!(
            ns_per_jiffy = clock.ns_per_jiffy,
            "datapath clock calibrated (entry timestamps from jiffies)"
        ),
        Err(error) => warn!(
            error = %anyhow::Error::from(error),
            "datapath clock not calibrated: entry timestamps keep calling the clock helper (slower per packet)"
        ),
    }
    let reconciler = if let Some(state) = adopted {
        let reconciler = Reconciler::adopt(&state)
            .context("adopt the pinned maps")?
            .with_max_backends(args.backends_max);
        info!(
            frontends = reconciler.frontend_count(),
            "adopted the pinned dataplane; the first sync is a diff against it"
        );
        reconciler
    } else {
        // Stats maps this agent just created hold zero counters: first
        // uses of ids need no reset (most writes of a cold sync).
        let fresh = |name| !adoption.adopted.contains(&name);
        Reconciler::new()
            .with_fresh_stats(
                fresh(mcs_common::names::FRONTEND_STATS),
                fresh(mcs_common::names::BACKEND_STATS),
            )
            .with_max_backends(args.backends_max)
    };
    let metrics = Arc::new(Metrics::default());
    let _metrics_server = match args.metrics_addr {
        Some(addr) => Some(
            crate::metrics::serve(addr, metrics.clone(), args.bpffs_dir.clone())
                .await
                .with_context(|| format!("serve metrics on {addr}"))?,
        ),
        None => None,
    };
    let janitor = Janitor::start(&maps.conntrack).context("start the conntrack janitor")?;
    let mut ctx = Context {
        janitor,
        maps,
        metrics: metrics.clone(),
        policy: desired::Policy {
            local_cluster: args.cluster_id.clone(),
            locality: args.locality.clone(),
            cluster_cidrs: args.cluster_cidrs.clone(),
        },
        reconciler,
        desired: None,
        reported: BTreeSet::new(),
        failing: BTreeSet::new(),
    };
    // Program the maps before attaching, so the first packet already sees
    // the complete state.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let first = tokio::select! {
        changed = updates.wait_for(Option::is_some) => changed.ok().and_then(|update| update.clone()),
        result = &mut *source_task => return source_failed(result),
        signal = &mut shutdown => { info!(signal = signal?, "shutting down before first sync"); return Ok(()); }
    };
    let Some(first) = first else {
        anyhow::bail!("source stopped before its first load");
    };
    let mut healthy = ctx.reconcile(first, Instant::now());
    info!("initial sync done");
    for interface in &args.interfaces {
        dataplane.attach(interface, args.xdp_mode)?;
    }
    if args.socket_lb {
        let cgroup = match &args.cgroup {
            Some(path) => path.clone(),
            None => crate::dataplane::cgroup2_root()
                .context("no cgroup v2 mount found for socket LB; give --cgroup")?,
        };
        dataplane.attach_socket_lb(&cgroup)?;
    }
    dataplane.detach_others();
    metrics.ready.store(true, Ordering::Relaxed);

    loop {
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
                let received = Instant::now();
                let update = updates.borrow_and_update().clone();
                if let Some(update) = update {
                    healthy = ctx.reconcile(update, received);
                }
            }
            () = tokio::time::sleep(RETRY_DELAY), if !healthy => {
                let update = updates.borrow().clone();
                if let Some(update) = update {
                    healthy = ctx.reconcile(update, Instant::now());
                }
            }
            Some(report) = ctx.janitor.report() => ctx.scanned(report),
            result = &mut *source_task => return source_failed(result),
            signal = &mut shutdown => {
                info!(signal = signal?, "shutting down");
                return Ok(());
            }
        }
    }
    Ok(())
}

fn source_failed(
    result: Result<Result<(), SourceError>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match result {
        Ok(Ok(())) => anyhow::bail!("source stopped"),
        Ok(Err(error)) => Err(error).context("source failed"),
        Err(error) => Err(error).context("source task failed"),
    }
}
