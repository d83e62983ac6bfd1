//! `mcs-agent run`: load the dataplane, follow the source, reconcile every
//! change (`context.rs`; failed writes logged and counted once each,
//! `failures.rs`), attach the hooks and follow pod interfaces as they come
//! and go (`attach.rs`), shut down cleanly on SIGTERM/SIGINT.
//!
//! Nothing is lost across restarts and faults:
//! * one agent per bpffs directory (`dataplane/lock.rs`), locked before
//!   anything is touched;
//! * after adopting an earlier agent's dataplane, the first apply waits for
//!   a complete snapshot from the source ([`SourceUpdate::complete`]):
//!   until then the adopted maps keep serving as they are and `/readyz`
//!   says why;
//! * a start that ends before its program is attached leaves the pins as
//!   it found them (`Dataplane::abandon`).

mod attach;
mod context;
mod failures;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
    task::block_in_place,
};
use tracing::{info, warn};

use self::{attach::PodLinks, context::Context};
use crate::{
    cli::RunArgs,
    conntrack::{GcSetup, Janitor},
    dataplane::{AdoptionReport, Dataplane, LoadOptions, cgroup, lock},
    desired, dns,
    events::{self, Events},
    metrics::Metrics,
    reconcile::Reconciler,
    sources::{Source, SourceError, SourceUpdate},
};

/// Retry delay after a failed map write.
const RETRY_DELAY: Duration = Duration::from_secs(1);

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
    // Before anything else: a second agent on the directory must not touch
    // the first one's pins (nor bind its ports, nor read its source).
    let _lock = lock::acquire(&args.bpffs_dir)?;
    // Open and start the source before touching the kernel: a wrong path
    // or kubeconfig fails fast.
    let source = Source::open(&args.source, args.kubeconfig.as_deref())
        .await
        .context("open the source")?;
    // Events are posted with the source's client: the run loop reports
    // every rejection, under the agent's real policy.
    let events = source
        .kube_client()
        .map(|client| Events::start(client, events::Publisher::from_env()));
    let (updates_tx, mut updates) = watch::channel(None);
    let source_kind = source.kind();
    let mut source_task = tokio::spawn(source.run(updates_tx));
    // DNS answers from the same updates as the dataplane (its own receiver),
    // bound before the kernel is touched so a taken port fails fast.
    let dns = match args.dns_config() {
        Some(config) => {
            if let Some(link) = &args.dns_link {
                crate::interfaces::dns_link::ensure(link, config.addr.ip())
                    .await
                    .with_context(|| format!("put the DNS address on link {link}"))?;
            }
            let server = dns::serve(&config, updates.clone()).await;
            Some(server.context("start the DNS server")?)
        }
        None => None,
    };

    let options = LoadOptions {
        socket_lb_netns: if args.socket_lb_host_only {
            Some(cgroup::own_netns_cookie().context("read the node's network namespace cookie")?)
        } else {
            None
        },
    };
    let (mut dataplane, adoption) = Dataplane::load(&args.bpffs_dir, &args.map_sizes(), options)
        .context("load the dataplane")?;
    let result = serve(
        &args,
        &mut dataplane,
        &adoption,
        &mut updates,
        &mut source_task,
        (source_kind, events),
    )
    .await;
    source_task.abort();
    drop(dns); // stops answering
    if args.detach_on_exit {
        dataplane.shutdown(true);
    } else if !dataplane.attached_any() {
        // Never attached (failed or stopped before the first sync): the
        // pins are left as they were found, an earlier agent's dataplane
        // serving untouched.
        dataplane.abandon();
    } else if result.is_err() && adoption.found_nothing() {
        // A failed start on an empty directory: everything is its own.
        dataplane.shutdown(true);
    } else {
        dataplane.shutdown(false);
    }
    info!("stopped");
    result
}

async fn serve(
    args: &RunArgs,
    dataplane: &mut Dataplane,
    adoption: &AdoptionReport,
    updates: &mut watch::Receiver<Option<SourceUpdate>>,
    source_task: &mut tokio::task::JoinHandle<Result<(), SourceError>>,
    (source_kind, events): (&'static str, Option<Events>),
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
    let capacities = args.map_sizes().capacities();
    let reconciler = if let Some(state) = adopted {
        let reconciler =
            Reconciler::adopt_with(&state, capacities).context("adopt the pinned maps")?;
        info!(
            frontends = reconciler.frontend_count(),
            "adopted the pinned dataplane; the first sync is a diff against it"
        );
        reconciler
    } else {
        // Stats maps this agent just created hold zero counters: first
        // uses of ids need no reset (most writes of a cold sync).
        let fresh = |name| !adoption.adopted.contains(&name);
        Reconciler::with_capacities(capacities).with_fresh_stats(
            fresh(mcs_common::names::FRONTEND_STATS),
            fresh(mcs_common::names::BACKEND_STATS),
        )
    };
    let metrics = Arc::new(Metrics::default());
    let _metrics_server = match args.metrics_addr {
        Some(addr) => Some(
            crate::metrics::serve(
                addr,
                metrics.clone(),
                args.bpffs_dir.clone(),
                crate::metrics::Limits::default(),
            )
            .await
            .with_context(|| format!("serve metrics on {addr}"))?,
        ),
        None => None,
    };
    let gc = GcSetup {
        config: args.gc_config(),
        sockets: &maps.sock_revnat,
        metrics: metrics.clone(),
    };
    let janitor = Janitor::start(&maps.conntrack, Some(&maps.conntrack_v6), Some(gc))
        .context("start the conntrack janitor")?;
    let policy = desired::Policy {
        local_cluster: args.cluster_id.clone(),
        locality: args.locality.clone(),
        cluster_cidrs: args.cluster_cidrs.clone(),
        clusterset_ip_cidrs: args.clusterset_ip_cidrs.clone(),
    };
    let mut ctx = Context::new(
        maps,
        metrics.clone(),
        policy,
        reconciler,
        janitor,
        (source_kind, events),
    );
    // Program the maps before attaching, so the first packet already sees
    // the complete state.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    metrics.set_not_ready("waiting for the source's first snapshot");
    let adopted = adoption.adopted_state();
    let mut waiting_for = String::new();
    let first = loop {
        let current = updates.borrow_and_update().clone();
        if let Some(update) = current {
            ctx.source_health(&update);
            // An incomplete snapshot applied over adopted maps could only
            // delete what the source failed to deliver.
            if update.complete || !adopted {
                break update;
            }
            let reason = format!(
                "keeping the adopted dataplane as it is until the source delivers a complete snapshot (failing: {})",
                update.failures.join("; ")
            );
            if reason != waiting_for {
                warn!(%reason, "first sync deferred");
                metrics.set_not_ready(reason.clone());
                waiting_for = reason;
            }
        }
        tokio::select! {
            changed = updates.changed() => if changed.is_err() {
                anyhow::bail!("source stopped before its first load");
            },
            result = &mut *source_task => return source_failed(result),
            signal = &mut shutdown => { info!(signal = signal?, "shutting down before first sync"); return Ok(()); }
        }
    };
    // Reconciles and conntrack sweeps are map writes (blocking syscalls,
    // thousands in a cold sync): they must never hold an async worker that
    // health checks, DNS and the watches need. This loop is the runtime's
    // main future (`block_on`, not a worker), and `block_in_place` keeps
    // them off the workers wherever the loop runs.
    let mut healthy = block_in_place(|| ctx.reconcile(first, Instant::now()));
    info!("initial sync done");
    let mut pods = PodLinks::new(args);
    let mut links = attach::attach_all(dataplane, args, &mut pods).await?;
    dataplane.detach_others();
    metrics.set_ready();

    loop {
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
                let received = Instant::now();
                let update = updates.borrow_and_update().clone();
                if let Some(update) = update {
                    ctx.source_health(&update);
                    healthy = block_in_place(|| ctx.reconcile(update, received));
                }
            }
            () = tokio::time::sleep(RETRY_DELAY), if !healthy => {
                let update = updates.borrow().clone();
                if let Some(update) = update {
                    healthy = block_in_place(|| ctx.reconcile(update, Instant::now()));
                }
            }
            Some(report) = ctx.janitor.report() => block_in_place(|| ctx.scanned(report)),
            event = next_link(&mut links) => match event {
                Some(event) => pods.event(dataplane, args, event),
                None => {
                    warn!("link notifications stopped: pod interfaces created from now on are not attached");
                    links = None;
                }
            },
            result = &mut *source_task => return source_failed(result),
            signal = &mut shutdown => {
                info!(signal = signal?, "shutting down");
                return Ok(());
            }
        }
    }
    Ok(())
}

async fn next_link(
    links: &mut Option<crate::interfaces::watch::LinkWatch>,
) -> Option<crate::interfaces::watch::LinkEvent> {
    match links {
        Some(links) => links.next().await,
        None => std::future::pending().await,
    }
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
