//! Kubernetes source: ServiceImports (all three flavours), EndpointSlices
//! and `Endpoints` from the API server, through kube-runtime watchers and
//! reflector stores.
//!
//! * Six watchers, each feeding its own reflector store (`watchers.rs`):
//!   `serviceimports` in `multicluster.x-k8s.io/v1beta1`, `.../v1alpha1` and
//!   `net.gke.io/v1`; EndpointSlices labelled
//!   `multicluster.kubernetes.io/service-name`; EndpointSlices labelled
//!   `kubernetes.io/service-name` but not the MCS label (the two selectors
//!   are disjoint, so no slice is held twice); all `Endpoints`.
//! * Every object is trimmed before it is stored (`trim.rs`).
//! * Nothing is published before every watcher has completed its first
//!   list, or — a ServiceImport flavour only — has been answered `404 Not
//!   Found` (a CRD that is not installed: treated as empty, logged once,
//!   retried with the watcher backoff, picked up when it appears). A 404
//!   for EndpointSlices or Endpoints (core APIs) is a failure like any
//!   other: nothing is published until they list, so an adopted dataplane
//!   is never emptied by a server that does not serve them. Every update
//!   is therefore complete ([`SourceUpdate::complete`]); lists failing
//!   since (a relist, or a resource that never listed) are in
//!   [`SourceUpdate::failures`] (the stores keep the last known objects).
//! * The stores are read only as a whole and only when ready (`snapshot.rs`).
//!   A relist (after `410 Gone` or a failed resume) is buffered by the
//!   reflector and swapped in at once when complete, so no snapshot ever
//!   misses a live object; objects deleted while disconnected disappear
//!   with that swap (or with the DELETED events the server replays on
//!   resume).
//! * Changes are debounced on the leading edge: a change after a quiet
//!   period is published at once, a burst is coalesced into at most one
//!   update per debounce window; an update is published only when the
//!   converted state (or an object's identity) differs from the last one,
//!   with what changed journaled ([`super::Publisher`]; conversions of
//!   unchanged objects are reused, so that diff is pointer compares).
//! * Each update carries a reference to every converted object; the run
//!   loop turns rejections into Events with them ([`crate::events`]), from
//!   the client this source hands out ([`KubeSource::client`]).

mod snapshot;
mod trim;
mod watchers;

use std::{path::Path, time::Duration};

use futures::{StreamExt, stream::select_all};
use kube::Client;
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, instrument};

pub use self::watchers::{MCS_SLICES_SELECTOR, SERVICE_SLICES_SELECTOR, import_resource};
use self::{
    snapshot::SnapshotBuilder,
    watchers::{ListState, WATCHED, WatchState, observe, watch_all},
};
use super::{Publisher, SourceUpdate};
use crate::kube_config::{self, KubeConfigError};

/// Failed to start the Kubernetes source.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error(transparent)]
    Config(#[from] KubeConfigError),
    #[error("cannot build the Kubernetes client")]
    Client(#[source] kube::Error),
    /// Watchers never end on their own; this means the runtime is shutting
    /// down underneath the source.
    #[error("every Kubernetes watcher ended")]
    WatchersEnded,
}

/// Tuning of the Kubernetes source.
#[derive(Clone, Debug)]
pub struct KubeSourceOptions {
    /// At most one update per this window: the first change after a quiet
    /// window is published at once, later ones wait for the window's end.
    pub debounce: Duration,
    /// Objects per list page (`limit`).
    pub page_size: u32,
}

impl Default for KubeSourceOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(75),
            page_size: 500,
        }
    }
}

/// Follows the API server and publishes converted snapshots.
pub struct KubeSource {
    client: Client,
    options: KubeSourceOptions,
}

impl KubeSource {
    pub fn new(client: Client, options: KubeSourceOptions) -> Self {
        Self { client, options }
    }

    /// Connects with `kubeconfig` (its current context), or with the
    /// in-cluster service account when `None`.
    #[instrument(skip(options))]
    pub async fn connect(
        kubeconfig: Option<&Path>,
        options: KubeSourceOptions,
    ) -> Result<Self, KubeSourceError> {
        let config = kube_config::load(kubeconfig).await?;
        info!(server = %config.cluster_url, "Kubernetes API server");
        let client = Client::try_from(config).map_err(KubeSourceError::Client)?;
        Ok(Self::new(client, options))
    }

    /// The API server client (Events are posted with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Watches until the receiver of `updates` is dropped.
    #[instrument(name = "kube_source", skip_all)]
    pub async fn run(
        self,
        updates: watch::Sender<Option<SourceUpdate>>,
    ) -> Result<(), KubeSourceError> {
        let (stores, streams) = watch_all(&self.client, self.options.page_size);
        let mut streams = select_all(streams);
        let mut states: Vec<WatchState> = WATCHED.iter().map(|_| WatchState::new()).collect();
        let mut builder = SnapshotBuilder::default();
        let mut publisher = Publisher::default();
        let mut publish_at: Option<Instant> = None;
        let mut last_publish: Option<Instant> = None;
        let mut published = false;

        loop {
            let ready = states.iter().all(|s| s.list != ListState::Pending);
            tokio::select! {
                item = streams.next() => {
                    let Some((watched, progress)) = item else {
                        return Err(KubeSourceError::WatchersEnded);
                    };
                    let state = &mut states[watched.index()];
                    if observe(watched, state, progress) && publish_at.is_none() {
                        // Leading edge: at once after a quiet window.
                        let now = Instant::now();
                        publish_at = Some(
                            last_publish.map_or(now, |last| (last + self.options.debounce).max(now)),
                        );
                    }
                }
                () = tokio::time::sleep_until(publish_at.unwrap_or_else(Instant::now)), if publish_at.is_some() && ready => {
                    publish_at = None;
                    last_publish = Some(Instant::now());
                    let mut update = builder.build(&stores);
                    update.complete = true;
                    update.failures = WATCHED
                        .iter()
                        .zip(&states)
                        .filter_map(|(watched, state)| {
                            state.failing_list.as_ref().map(|error| format!("{}: {error}", watched.describe()))
                        })
                        .collect();
                    let (imports, slices) = (update.snapshot.imports.len(), update.snapshot.slices().len());
                    let update = publisher.prepare(update);
                    let changed = update.is_some();
                    if let Some(update) = update {
                        updates.send_replace(Some(update));
                    }
                    if !published {
                        published = true;
                        info!(imports, slices, "initial list complete");
                    } else if changed {
                        debug!(imports, slices, "published update");
                    }
                }
                () = updates.closed() => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rustls needs a crypto provider (the `ring` feature of kube); without
    /// one, building a client for an https server panics.
    #[tokio::test]
    async fn https_kubeconfigs_build_a_client() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:6443\"}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
        )
        .unwrap();
        let source = KubeSource::connect(Some(&path), KubeSourceOptions::default()).await;
        assert!(source.is_ok(), "{:?}", source.err());
        let missing = KubeSource::connect(
            Some(&dir.path().join("missing")),
            KubeSourceOptions::default(),
        )
        .await;
        assert!(matches!(
            missing,
            Err(KubeSourceError::Config(KubeConfigError::Kubeconfig { .. }))
        ));
    }
}
