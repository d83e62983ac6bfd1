//! `mcs-agent controller`: the export side of the cluster set.
//!
//! One controller runs in **each** cluster (pull model, as Cilium's
//! ClusterMesh: no hub, no single point of failure). It reads the
//! ServiceExports, Services and EndpointSlices of every member cluster and
//! writes only into its own cluster: the ServiceImports, one EndpointSlice
//! per exporting cluster and source slice, and the status of its own
//! cluster's ServiceExports. Every controller computes the same imports
//! from the same exports (KEP-1645's conflict rules are a pure function of
//! them), so the clusters agree without talking to each other; only the
//! ClusterSetIPs are per cluster.
//!
//! Data flow: [`members`] (watchers and stores per cluster) → [`exports`]
//! and [`observed`] (models) → [`desired`] (pure plan: [`merge`],
//! [`allocate`]) → [`writer`] (server-side apply, deletes of what it
//! manages) — one reconcile of everything per batch of changes, by the
//! Lease holder only ([`leader`]); [`events`] and [`metrics`] report.

pub mod allocate;
pub mod args;
pub mod desired;
pub mod events;
pub mod exports;
pub mod leader;
pub mod members;
pub mod merge;
pub mod metrics;
pub mod observed;
pub mod render;
pub mod writer;

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use kube::{
    Api, Client,
    api::{DynamicObject, ListParams},
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
    time::Instant,
};
use tracing::{error, info, instrument, warn};

use self::{
    allocate::{Allocator, RangeError},
    args::{ControllerArgs, ImportApi},
    desired::{Input, Member},
    events::Events,
    exports::{FLAVOURS, import_resource},
    leader::{Elector, Leadership, LeaseConfig},
    members::{Cluster, Dirty},
    merge::IpFamily,
    metrics::{ClusterLabels, ExportLabels, FamilyLabels, Metrics},
    observed::Observed,
    writer::{WriteError, Writer},
};
use crate::{
    kube_config::{self, KubeConfigError},
    model::Flavour,
    telemetry::chain,
};

/// `endpointslice.kubernetes.io/managed-by` of the slices this controller
/// writes, and the value of [`LABEL_IMPORT_MANAGED_BY`] on its imports.
pub const CONTROLLER_NAME: &str = "mcs-controller.dataplane.mcs.dev";
/// Label marking the ServiceImports this controller writes (and may
/// therefore update and delete).
pub const LABEL_IMPORT_MANAGED_BY: &str = "dataplane.mcs.dev/managed-by";
/// Hash of what the controller last applied to an object.
pub const ANNOTATION_APPLIED: &str = "dataplane.mcs.dev/applied";
/// On the slices of a member whose API server does not answer: since when.
pub const ANNOTATION_UNREACHABLE_SINCE: &str = "dataplane.mcs.dev/source-unreachable-since";
/// Field manager of every write.
pub const FIELD_MANAGER: &str = "mcs-controller";

/// Objects per list page.
const PAGE_SIZE: u32 = 500;
/// First retry after failed writes; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Failed to start the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("cluster {cluster}")]
    Config {
        cluster: String,
        #[source]
        source: KubeConfigError,
    },
    #[error("cannot build the Kubernetes client of cluster {cluster}")]
    Client {
        cluster: String,
        #[source]
        source: kube::Error,
    },
    #[error("invalid --clusterset-ip-cidr")]
    Range(#[from] RangeError),
    #[error("cannot serve metrics")]
    Metrics(#[source] std::io::Error),
    #[error("cannot install the signal handlers")]
    Signals(#[source] std::io::Error),
}

async fn connect(cluster: &str, kubeconfig: Option<&Path>) -> Result<Client, ControllerError> {
    let mut config =
        kube_config::load(kubeconfig)
            .await
            .map_err(|source| ControllerError::Config {
                cluster: cluster.to_owned(),
                source,
            })?;
    // kube's client retries 429/503 answers itself, with a backoff growing
    // to minutes: a request sent while a member is down would then wait
    // that long after it is back. Watchers have their own backoff and
    // failed writes are retried by the next reconcile.
    config.default_retry = false;
    info!(cluster, server = %config.cluster_url, "member API server");
    Client::try_from(config).map_err(|source| ControllerError::Client {
        cluster: cluster.to_owned(),
        source,
    })
}

/// State shared by reconciles.
struct Context {
    args: ControllerArgs,
    own: Cluster,
    others: Vec<Cluster>,
    allocator: Allocator,
    writer: Writer,
    leadership: Leadership,
    events: Events,
    metrics: Arc<Metrics>,
    started: Instant,
    /// The ServiceImport flavour and allocation of this term as leader
    /// (`None`: to be read back at the next reconcile).
    term: Option<Flavour>,
}

/// What a reconcile asks of the run loop.
enum Outcome {
    /// Done; nothing pending.
    Done,
    /// Not ready (members not read yet, import API not served): look again.
    Later(Duration),
    /// Some writes failed: retry.
    Failed,
}

impl Context {
    /// Every member read, or given up on after the member-sync timeout.
    fn members_ready(&self) -> (bool, BTreeSet<String>) {
        let unknown: BTreeSet<String> = self
            .others
            .iter()
            .filter(|c| !c.listed())
            .map(|c| c.id.clone())
            .collect();
        let ready = self.own.listed()
            && (unknown.is_empty() || self.started.elapsed() >= self.args.member_sync_timeout);
        (ready, unknown)
    }

    /// The flavour to write: the forced one, or the first served.
    fn flavour(&self) -> Option<Flavour> {
        match self.args.import_api {
            ImportApi::V1beta1 => Some(Flavour::McsV1beta1),
            ImportApi::V1alpha1 => Some(Flavour::McsV1alpha1),
            ImportApi::Gke => Some(Flavour::Gke),
            ImportApi::Auto => FLAVOURS.into_iter().find(|f| self.own.serves_imports(*f)),
        }
    }

    /// Reads the allocation back from the cluster itself (a fresh list, not
    /// the watch cache: a previous leader's last writes must be seen).
    async fn start_term(&mut self) -> Result<Flavour, Duration> {
        let Some(flavour) = self.flavour() else {
            warn!("no ServiceImport API is served (install the CRDs in deploy/crds/); retrying");
            return Err(Duration::from_secs(5));
        };
        let mut lists = Vec::new();
        for f in FLAVOURS
            .into_iter()
            .filter(|f| self.own.serves_imports(*f) || *f == flavour)
        {
            let api = Api::<DynamicObject>::all_with(self.own.client.clone(), &import_resource(f));
            match api.list(&ListParams::default()).await {
                Ok(list) => lists.push((f, list.items.into_iter().map(Arc::new).collect())),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => {
                    warn!(error = %chain(&error), "cannot list ServiceImports to read the ClusterSetIPs back; retrying");
                    return Err(Duration::from_secs(2));
                }
            }
        }
        let observed = Observed::build(&lists, &[], None);
        self.allocator.clear();
        self.allocator.set_reserved(observed.foreign_ips());
        for import in observed.imports.values().filter(|i| i.managed) {
            for ip in self.allocator.adopt(&import.key, &import.ips) {
                warn!(import = %import.key, %ip, "ClusterSetIP not kept (outside the ranges or held twice); a new one is allocated if its family has a range");
            }
        }
        info!(flavour = ?flavour, imports = observed.imports.len(), "leading: ClusterSetIPs read back");
        Ok(flavour)
    }

    #[instrument(skip_all)]
    async fn reconcile(&mut self, changed_at: Option<Instant>) -> Outcome {
        let (ready, unknown) = self.members_ready();
        if !ready {
            return Outcome::Later(Duration::from_millis(500));
        }
        if !self.metrics.ready.swap(true, Ordering::Relaxed) && !unknown.is_empty() {
            warn!(members = ?unknown, "members not read within --member-sync-timeout; what they contributed is kept until they answer");
        }
        let leader = self.leadership.is_leader();
        self.metrics.leader.set(i64::from(leader));
        if !leader {
            self.term = None;
            return Outcome::Done;
        }
        let started = Instant::now();
        let flavour = match self.term {
            Some(flavour) => flavour,
            None => match self.start_term().await {
                Ok(flavour) => {
                    self.term = Some(flavour);
                    flavour
                }
                Err(delay) => return Outcome::Later(delay),
            },
        };
        let Some(observed) = self.own.observed() else {
            return Outcome::Done;
        };
        let own_model = self.own.model();
        let models: Vec<_> = self
            .others
            .iter()
            .filter(|c| !unknown.contains(&c.id))
            .map(|c| (c, c.model()))
            .collect();
        let mut members = vec![Member {
            id: &self.args.cluster_id,
            model: &own_model,
            unreachable_since: None,
        }];
        for (cluster, model) in &models {
            let since = cluster.unreachable_since();
            self.metrics
                .member_up
                .get_or_create(&ClusterLabels {
                    cluster: cluster.id.clone(),
                })
                .set(i64::from(since.is_none()));
            members.push(Member {
                id: &cluster.id,
                model,
                unreachable_since: since,
            });
        }
        let input = Input {
            cluster_id: &self.args.cluster_id,
            members: &members,
            unknown: &unknown,
            observed: &observed,
            flavour,
        };
        let plan = desired::plan(&input, &mut self.allocator);
        let own_exports: Vec<_> = own_model
            .exports
            .values()
            .map(|e| (e.key.clone(), e.conditions.clone()))
            .collect();
        let report = self.writer.apply(&plan, &observed, &own_exports).await;
        self.events.report(&plan.notices, &plan.exports);

        let summary = plan.summary;
        for (state, count) in [
            ("valid", summary.exports_valid),
            ("invalid", summary.exports_invalid),
        ] {
            self.metrics
                .exports
                .get_or_create(&ExportLabels {
                    state: state.to_owned(),
                })
                .set(count as i64);
        }
        self.metrics.imports.set(summary.imports as i64);
        self.metrics.slices.set(summary.slices as i64);
        self.metrics.conflicts.set(summary.conflicts as i64);
        for (family, used, capacity) in self.allocator.usage() {
            let labels = FamilyLabels {
                family: family_label(family),
            };
            self.metrics
                .clusterset_ips
                .get_or_create(&labels)
                .set(used as i64);
            self.metrics
                .clusterset_ip_capacity
                .get_or_create(&labels)
                .set(i64::try_from(capacity).unwrap_or(i64::MAX));
        }
        self.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        if report.changed() {
            if let Some(at) = changed_at {
                self.metrics
                    .export_to_import
                    .observe(at.elapsed().as_secs_f64());
            }
            info!(
                applied = report.applied,
                deleted = report.deleted,
                imports = summary.imports,
                slices = summary.slices,
                "wrote changes"
            );
        }
        if report.errors.is_empty() {
            return Outcome::Done;
        }
        for error in &report.errors {
            match error {
                WriteError::NotLeader { .. } => {
                    self.term = None;
                    warn!(error = %error, "stopped writing");
                }
                WriteError::Api { .. } => error!(error = %chain(error), "write failed; retrying"),
            }
        }
        Outcome::Failed
    }
}

fn family_label(family: IpFamily) -> String {
    family.as_str().to_owned()
}

async fn shutdown_signal() -> Result<&'static str, ControllerError> {
    let mut terminate = signal(SignalKind::terminate()).map_err(ControllerError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ControllerError::Signals)?;
    Ok(tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    })
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    let allocator = Allocator::new(&args.clusterset_ip_cidrs)?;
    let own_client = connect(&args.cluster_id, args.kubeconfig.as_deref()).await?;
    let mut member_clients = Vec::new();
    for member in args.members.iter().filter(|m| m.id != args.cluster_id) {
        member_clients.push((
            member.id.clone(),
            connect(&member.id, Some(&member.kubeconfig)).await?,
        ));
    }
    let metrics = Arc::new(Metrics::default());
    let _server = match args.metrics_addr {
        Some(addr) => Some(
            metrics::serve(addr, metrics.clone())
                .await
                .map_err(ControllerError::Metrics)?,
        ),
        None => None,
    };
    let signals = shutdown_signal();
    tokio::pin!(signals);

    let dirty = Arc::new(Dirty::default());
    let own = Cluster::start(
        &args.cluster_id,
        own_client.clone(),
        true,
        PAGE_SIZE,
        &dirty,
    );
    let others: Vec<Cluster> = member_clients
        .into_iter()
        .map(|(id, client)| Cluster::start(&id, client, false, PAGE_SIZE, &dirty))
        .collect();

    let identity = args.identity();
    let (stop, stopped) = watch::channel(false);
    let (leadership, mut leader_changes, elector) = if args.no_leader_election {
        let (sender, receiver) = watch::channel(true);
        drop(sender);
        (Leadership::always(), receiver, None)
    } else {
        let (elector, leadership, changes) = Elector::new(
            own_client.clone(),
            LeaseConfig {
                namespace: args.lease_namespace.clone(),
                name: args.lease_name.clone(),
                identity: identity.clone(),
                lease_duration: args.lease_duration,
                renew_deadline: args.renew_deadline,
                retry_period: args.retry_period,
            },
        );
        (
            leadership,
            changes,
            Some(tokio::spawn(elector.run(stopped))),
        )
    };
    info!(cluster = %args.cluster_id, members = others.len(), %identity, "controller started");

    let mut ctx = Context {
        writer: Writer::new(own_client.clone(), leadership.clone(), metrics.clone()),
        events: Events::start(Some(own_client), identity),
        own,
        others,
        allocator,
        leadership,
        metrics,
        started: Instant::now(),
        term: None,
        args,
    };
    let mut due: Option<Instant> = Some(Instant::now());
    let mut retry = RETRY_MIN;
    let mut resync = Instant::now() + ctx.args.resync_interval;
    let mut leader_open = true;
    let reason = loop {
        tokio::select! {
            () = dirty.wait() => {
                let at = Instant::now() + ctx.args.debounce;
                due = Some(due.map_or(at, |d| d.min(at)));
            }
            changed = leader_changes.changed(), if leader_open => {
                if changed.is_err() {
                    leader_open = false;
                } else {
                    ctx.term = None;
                    due = Some(Instant::now());
                }
            }
            () = tokio::time::sleep_until(resync) => {
                resync = Instant::now() + ctx.args.resync_interval;
                due = Some(due.map_or_else(Instant::now, |d| d.min(Instant::now())));
            }
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                due = None;
                let changed_at = dirty.take();
                match ctx.reconcile(changed_at).await {
                    Outcome::Done => retry = RETRY_MIN,
                    Outcome::Later(delay) => {
                        if let Some(at) = changed_at {
                            dirty.restore(at);
                        }
                        due = Some(Instant::now() + delay);
                    }
                    Outcome::Failed => {
                        due = Some(Instant::now() + retry);
                        retry = (retry * 2).min(RETRY_MAX);
                    }
                }
            }
            signal = &mut signals => break signal?,
        }
    };
    info!(signal = reason, "shutting down");
    let _ = stop.send(true);
    if let Some(elector) = elector {
        // Releases the Lease so a successor need not wait for it to expire.
        let _ = tokio::time::timeout(Duration::from_secs(5), elector).await;
    }
    Ok(())
}
