//! One kube client per member cluster, its watchers and reflector stores,
//! and whether it answers.
//!
//! * Every member (the own cluster too): ServiceExports in the three
//!   flavours, Services, and the EndpointSlices of its Services
//!   ([`SERVICE_SLICES_SELECTOR`]: never the MCS slices controllers write).
//!   The own cluster also: ServiceImports (three flavours), the slices this
//!   controller manages, Namespaces.
//! * Objects are trimmed before they are stored (no managedFields, no
//!   endpoint target references, ...).
//! * A resource that is not served (404 before its first list: a CRD not
//!   installed) counts as empty and is retried.
//! * Stores keep their last contents while a member does not answer: the
//!   reflector swaps a relist in only once complete, so nothing disappears
//!   because of an outage. Whether a member answers is probed (`/version`)
//!   every few seconds; watch retries back off to at most 5 s, so a member
//!   that comes back is read again within seconds.

use std::{
    fmt::Debug,
    hash::Hash,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource,
    api::{DynamicObject, TypeMeta},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        utils::Backoff,
        watcher,
    },
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::{sync::Notify, task::JoinHandle, time::Instant};
use tracing::{debug, info, warn};

use super::{
    CONTROLLER_NAME,
    exports::{ClusterModel, FLAVOURS, SERVICE_SLICES_SELECTOR, export_resource, import_resource},
    observed::Observed,
};
use crate::{
    model::{Flavour, convert::LABEL_MANAGED_BY},
    telemetry::chain,
};

/// How often a member's API server is probed.
const PROBE_PERIOD: Duration = Duration::from_secs(3);

/// Set by every watcher on a change; the run loop waits on it.
#[derive(Debug, Default)]
pub struct Dirty {
    notify: Notify,
    since: Mutex<Option<Instant>>,
}

impl Dirty {
    pub fn mark(&self) {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        since.get_or_insert_with(Instant::now);
        drop(since);
        self.notify.notify_one();
    }

    /// When the oldest unhandled change arrived; clears it.
    pub fn take(&self) -> Option<Instant> {
        self.since.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Puts back a change taken by a reconcile that could not handle it.
    pub fn restore(&self, at: Instant) {
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        *since = Some(since.map_or(at, |s| s.min(at)));
    }

    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

/// Readiness of one watcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListState {
    Pending,
    Listed,
    NotServed,
}

#[derive(Debug)]
struct Health {
    lists: Vec<ListState>,
    unreachable_since: Option<Timestamp>,
    last_error: Option<String>,
}

/// Watch retries: 0.5 s doubling to 5 s, with jitter (kube-runtime's
/// default grows to 30 s plus as much jitter, too slow to follow a member
/// that comes back).
struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(500),
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        Some(delay.mul_f64(0.75 + fastrand::f64() * 0.5))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        *self = Self::default();
    }
}

/// A cluster's watchers.
pub struct Cluster {
    pub id: String,
    pub client: Client,
    exports: Vec<(Flavour, Store<DynamicObject>)>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    own: Option<OwnStores>,
    health: Arc<Mutex<Health>>,
    tasks: Vec<JoinHandle<()>>,
}

struct OwnStores {
    /// With the index of their watcher's list state.
    imports: Vec<(Flavour, Store<DynamicObject>, usize)>,
    managed_slices: Store<EndpointSlice>,
    namespaces: Store<Namespace>,
    namespaces_index: usize,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Spawns a watcher with backoff whose trimmed objects go into `writer`.
#[expect(clippy::too_many_arguments, reason = "one watcher's wiring")]
fn spawn<K>(
    cluster: &str,
    what: String,
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    trim: impl FnMut(&mut K) + Send + 'static,
    index: usize,
    health: &Arc<Mutex<Health>>,
    dirty: &Arc<Dirty>,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let (health, dirty, cluster) = (health.clone(), dirty.clone(), cluster.to_owned());
    tokio::spawn(async move {
        let mut stream = watcher(api, config)
            .modify(trim)
            .reflect(writer)
            .filter(|event| std::future::ready(!matches!(event, Ok(watcher::Event::Init))))
            .backoff(WatchBackoff::default())
            .boxed();
        let mut last_error: Option<String> = None;
        while let Some(event) = stream.next().await {
            let mut health = health.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                Ok(watcher::Event::InitApply(_) | watcher::Event::Init) => {}
                Ok(watcher::Event::InitDone) => {
                    health.lists[index] = ListState::Listed;
                    dirty.mark();
                }
                Ok(_) => dirty.mark(),
                Err(error) => {
                    let not_found = matches!(
                        &error,
                        watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 404
                    );
                    if not_found && health.lists[index] != ListState::Listed {
                        if health.lists[index] == ListState::Pending {
                            info!(cluster, resource = %what, "not served (CRD not installed?); treated as empty, retrying");
                            health.lists[index] = ListState::NotServed;
                            dirty.mark();
                        }
                        continue;
                    }
                    if matches!(&error, watcher::Error::WatchError(status) if status.code == 410) {
                        continue;
                    }
                    let message = chain(&error);
                    if last_error.as_deref() != Some(&message) {
                        warn!(cluster, resource = %what, error = %message, "watch failed; keeping the last known objects, retrying");
                        last_error = Some(message);
                    }
                    continue;
                }
            }
            if last_error.take().is_some() {
                info!(cluster, resource = %what, "watch recovered");
            }
            // An answered watch is as good as a probe.
            if health.unreachable_since.take().is_some() {
                info!(cluster, "member API server answers again");
                health.last_error = None;
                dirty.mark();
            }
        }
    })
}

/// Drops what no reconcile reads: managed fields and owner references
/// always, labels and annotations unless `keep` (exports and imports carry
/// the applied hash and exported annotations; Services are read for their
/// spec only).
fn trim_meta(meta: &mut ObjectMeta, keep: bool) {
    meta.managed_fields = None;
    meta.owner_references = None;
    if !keep {
        meta.labels = None;
        meta.annotations = None;
    }
}

impl Cluster {
    /// Starts watching a member; `own` adds what only the own cluster needs.
    pub fn start(id: &str, client: Client, own: bool, page_size: u32, dirty: &Arc<Dirty>) -> Self {
        let config = watcher::Config::default().page_size(page_size);
        let watchers = FLAVOURS.len() + 2 + if own { FLAVOURS.len() + 2 } else { 0 };
        let health = Arc::new(Mutex::new(Health {
            lists: vec![ListState::Pending; watchers],
            unreachable_since: None,
            last_error: None,
        }));
        let mut tasks = Vec::new();
        let mut index = 0;
        let mut next = || {
            index += 1;
            index - 1
        };
        let dynamic =
            |resource: kube::api::ApiResource, tasks: &mut Vec<JoinHandle<()>>, index: usize| {
                let writer = reflector::store::Writer::new(resource.clone());
                let store = writer.as_reader();
                let types = TypeMeta {
                    api_version: resource.api_version.clone(),
                    kind: resource.kind.clone(),
                };
                let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
                tasks.push(spawn(
                    id,
                    format!("{}.{}", resource.plural, resource.api_version),
                    api,
                    config.clone(),
                    writer,
                    move |object: &mut DynamicObject| {
                        object.types = Some(types.clone());
                        trim_meta(&mut object.metadata, true);
                        if let Value::Object(data) = &mut object.data {
                            data.retain(|key, _| key == "spec" || key == "status");
                        }
                    },
                    index,
                    &health,
                    dirty,
                ));
                store
            };
        let exports = FLAVOURS
            .iter()
            .map(|f| (*f, dynamic(export_resource(*f), &mut tasks, next())))
            .collect();
        let (services, writer) = reflector::store();
        tasks.push(spawn(
            id,
            "services.v1".to_owned(),
            Api::all(client.clone()),
            config.clone(),
            writer,
            |service: &mut Service| trim_meta(&mut service.metadata, false),
            next(),
            &health,
            dirty,
        ));
        let (slices, writer) = reflector::store();
        tasks.push(spawn(
            id,
            "endpointslices.v1.discovery.k8s.io (of Services)".to_owned(),
            Api::all(client.clone()),
            config.clone().labels(SERVICE_SLICES_SELECTOR),
            writer,
            trim_slice,
            next(),
            &health,
            dirty,
        ));
        let own = own.then(|| {
            let imports = FLAVOURS
                .iter()
                .map(|f| {
                    let index = next();
                    (*f, dynamic(import_resource(*f), &mut tasks, index), index)
                })
                .collect();
            let (managed_slices, writer) = reflector::store();
            tasks.push(spawn(
                id,
                "endpointslices.v1.discovery.k8s.io (managed)".to_owned(),
                Api::all(client.clone()),
                config
                    .clone()
                    .labels(&format!("{LABEL_MANAGED_BY}={CONTROLLER_NAME}")),
                writer,
                |slice: &mut EndpointSlice| slice.metadata.managed_fields = None,
                next(),
                &health,
                dirty,
            ));
            let (namespaces, writer) = reflector::store();
            let namespaces_index = next();
            tasks.push(spawn(
                id,
                "namespaces.v1".to_owned(),
                Api::all(client.clone()),
                config.clone(),
                writer,
                |namespace: &mut Namespace| {
                    trim_meta(&mut namespace.metadata, false);
                    namespace.spec = None;
                    namespace.status = None;
                },
                namespaces_index,
                &health,
                dirty,
            ));
            OwnStores {
                imports,
                managed_slices,
                namespaces,
                namespaces_index,
            }
        });
        tasks.push(tokio::spawn(probe(
            id.to_owned(),
            client.clone(),
            health.clone(),
            dirty.clone(),
        )));
        Self {
            id: id.to_owned(),
            client,
            exports,
            services,
            slices,
            own,
            health,
            tasks,
        }
    }

    /// Every watcher has listed (or found its resource not served).
    pub fn listed(&self) -> bool {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.lists.iter().all(|s| *s != ListState::Pending)
    }

    /// Whether the own cluster serves this ServiceImport flavour (its
    /// watcher has listed it).
    pub fn serves_imports(&self, flavour: Flavour) -> bool {
        let Some(own) = &self.own else {
            return false;
        };
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        own.imports
            .iter()
            .any(|(f, _, index)| *f == flavour && health.lists[*index] == ListState::Listed)
    }

    /// Since when the API server does not answer.
    pub fn unreachable_since(&self) -> Option<Timestamp> {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unreachable_since
    }

    /// What the member exports, from the stores.
    pub fn model(&self) -> ClusterModel {
        let exports: Vec<(Flavour, Vec<Arc<DynamicObject>>)> =
            self.exports.iter().map(|(f, s)| (*f, s.state())).collect();
        ClusterModel::build(&exports, &self.services.state(), &self.slices.state())
    }

    /// What the own cluster holds (`None` for another member).
    pub fn observed(&self) -> Option<Observed> {
        let own = self.own.as_ref()?;
        let imports: Vec<(Flavour, Vec<Arc<DynamicObject>>)> = own
            .imports
            .iter()
            .map(|(f, s, _)| (*f, s.state()))
            .collect();
        let namespaces = own.namespaces.state();
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        // Namespaces not served: assume every namespace exists.
        let namespaces_served = health.lists[own.namespaces_index] != ListState::NotServed;
        drop(health);
        Some(Observed::build(
            &imports,
            &own.managed_slices.state(),
            namespaces_served.then_some(namespaces.as_slice()),
        ))
    }
}

fn trim_slice(slice: &mut EndpointSlice) {
    trim_meta(&mut slice.metadata, true);
    slice.metadata.annotations = None;
    for endpoint in &mut slice.endpoints {
        endpoint.target_ref = None;
        endpoint.node_name = None;
        endpoint.hints = None;
        endpoint.deprecated_topology = None;
    }
}

/// Probes the API server; an answer of any HTTP status below 500 counts as
/// reachable.
async fn probe(cluster: String, client: Client, health: Arc<Mutex<Health>>, dirty: Arc<Dirty>) {
    loop {
        let answer = tokio::time::timeout(PROBE_PERIOD, client.apiserver_version()).await;
        let failure = match answer {
            Ok(Ok(_)) => None,
            Ok(Err(kube::Error::Api(status))) if status.code < 500 => None,
            Ok(Err(error)) => Some(chain(&error)),
            Err(_) => Some(format!("no answer within {} s", PROBE_PERIOD.as_secs())),
        };
        {
            let mut health = health.lock().unwrap_or_else(|e| e.into_inner());
            match (failure, health.unreachable_since) {
                (Some(error), None) => {
                    warn!(cluster, %error, "member API server unreachable; its last known exports stay imported");
                    health.unreachable_since = Some(Timestamp::now());
                    health.last_error = Some(error);
                    dirty.mark();
                }
                (Some(error), Some(_)) => {
                    debug!(cluster, %error, "member API server still unreachable");
                    health.last_error = Some(error);
                }
                (None, Some(_)) => {
                    info!(cluster, "member API server answers again");
                    health.unreachable_since = None;
                    health.last_error = None;
                    dirty.mark();
                }
                (None, None) => {}
            }
        }
        tokio::time::sleep(PROBE_PERIOD).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_retries_stay_within_seconds() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<Duration> = (0..8).filter_map(|_| backoff.next()).collect();
        assert!(delays[0] <= Duration::from_millis(625));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(6_250)));
        assert!(delays[7] >= Duration::from_millis(3_750));
        backoff.reset();
        assert!(backoff.next().unwrap() <= Duration::from_millis(625));
    }

    #[tokio::test]
    async fn dirty_remembers_the_oldest_change() {
        let dirty = Dirty::default();
        assert!(dirty.take().is_none());
        dirty.mark();
        let first = dirty.take().unwrap();
        dirty.mark();
        dirty.mark();
        let second = dirty.take().unwrap();
        assert!(second >= first);
        assert!(dirty.take().is_none());
        // A mark before waiting is not lost.
        dirty.mark();
        tokio::time::timeout(Duration::from_secs(1), dirty.wait())
            .await
            .unwrap();
    }
}
