//! `mcs-agent run`: load and attach the dataplane, follow the source,
//! reconcile every change, shut down cleanly on SIGTERM/SIGINT.

use std::{collections::BTreeSet, time::Duration};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{error, info, instrument, warn};

use crate::{
    cli::{RunArgs, SourceSpec},
    dataplane::{Dataplane, MapHandles},
    desired,
    dns::{self, DnsConfig},
    model::Rejection,
    reconcile::Reconciler,
    sources::{SourceUpdate, file::FileSource},
    telemetry::chain,
};

/// Retry delay after a failed map write.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// State shared by reconciles.
struct Context {
    maps: MapHandles,
    reconciler: Reconciler,
    /// Rejections already logged, so an unchanged bad object is reported
    /// once, not on every change of something else.
    reported: BTreeSet<String>,
}

impl Context {
    #[instrument(skip_all, fields(imports = update.snapshot.imports.len(), slices = update.snapshot.slices.len()))]
    fn reconcile(&mut self, update: &SourceUpdate) -> bool {
        let (desired, derived) = desired::compute(&update.snapshot);
        self.report_rejections(update.rejections.iter().chain(&derived));
        let report = self.reconciler.apply(&desired, &mut self.maps);
        for (frontend, error) in &report.errors {
            error!(%frontend, error = %chain(error), "map update failed; will retry");
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

    fn report_rejections<'a>(&mut self, rejections: impl Iterator<Item = &'a Rejection>) {
        let mut current = BTreeSet::new();
        for rejection in rejections {
            let line = rejection.to_string();
            if !self.reported.contains(&line) {
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
    let SourceSpec::File(path) = args.source.clone();
    // Read the source before touching the kernel: a wrong path fails fast.
    let source = FileSource::new(path.clone());
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

    let mut dataplane = Dataplane::load(&args.bpffs_dir).context("load the dataplane")?;
    let result = serve(&args, &mut dataplane, &mut updates, &mut source_task).await;
    source_task.abort();
    drop(dns); // stops answering
    dataplane.shutdown();
    info!("stopped");
    result
}

async fn serve(
    args: &RunArgs,
    dataplane: &mut Dataplane,
    updates: &mut watch::Receiver<Option<SourceUpdate>>,
    source_task: &mut tokio::task::JoinHandle<Result<(), crate::sources::file::FileSourceError>>,
) -> anyhow::Result<()> {
    let mut ctx = Context {
        maps: dataplane.maps().context("open the dataplane maps")?,
        reconciler: Reconciler::new(),
        reported: BTreeSet::new(),
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
    let mut healthy = ctx.reconcile(&first);
    info!("initial sync done");
    for interface in &args.interfaces {
        dataplane.attach(interface, args.xdp_mode)?;
    }

    loop {
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
                let update = updates.borrow_and_update().clone();
                if let Some(update) = update {
                    healthy = ctx.reconcile(&update);
                }
            }
            () = tokio::time::sleep(RETRY_DELAY), if !healthy => {
                let update = updates.borrow().clone();
                if let Some(update) = update {
                    healthy = ctx.reconcile(&update);
                }
            }
            result = &mut *source_task => return source_failed(result),
            signal = &mut shutdown => {
                info!(signal = signal?, "shutting down: detaching and removing pinned maps");
                return Ok(());
            }
        }
    }
    Ok(())
}

fn source_failed(
    result: Result<Result<(), crate::sources::file::FileSourceError>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match result {
        Ok(Ok(())) => anyhow::bail!("source stopped"),
        Ok(Err(error)) => Err(error).context("source failed"),
        Err(error) => Err(error).context("source task failed"),
    }
}
