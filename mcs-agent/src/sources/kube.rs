//! Kubernetes source: ServiceImports (all three flavours), EndpointSlices
//! and `Endpoints` from the API server, through kube-runtime watchers and
//! reflector stores.
//!
//! * Six watchers, each feeding its own reflector store:
//!   `serviceimports` in `multicluster.x-k8s.io/v1beta1`, `.../v1alpha1` and
//!   `net.gke.io/v1`; EndpointSlices labelled
//!   `multicluster.kubernetes.io/service-name`; EndpointSlices labelled
//!   `kubernetes.io/service-name` but not the MCS label (the two selectors
//!   are disjoint, so no slice is held twice); all `Endpoints`.
//! * Every object is trimmed with `.modify()` before it is stored: only
//!   what [`convert`] reads (and the uid/resourceVersion an Event needs) is
//!   kept — no managedFields, no unrelated labels or annotations, no
//!   endpoint topology or target references.
//! * Nothing is published before every watcher has completed its first
//!   list, or has been answered `404 Not Found` (a CRD that is not
//!   installed: treated as empty, logged once, retried with the watcher
//!   backoff, picked up when it appears).
//! * The stores are read only as a whole and only when ready. A relist
//!   (after `410 Gone` or a failed resume) is buffered by the reflector and
//!   swapped in at once when complete, so no snapshot ever misses a live
//!   object; objects deleted while disconnected disappear with that swap
//!   (or with the DELETED events the server replays on resume).
//! * Changes are debounced on the leading edge: a change after a quiet
//!   period is published at once, a burst is coalesced into at most one
//!   update per debounce window; an update is published only when the
//!   converted state differs from the last one.
//! * Rejections are published as Kubernetes Events (type Warning) on the
//!   offending object, once per object, reason and message.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt::Debug,
    hash::Hash,
    path::{Path, PathBuf},
    pin::Pin,
    time::Duration,
};

use futures::{Stream, StreamExt, stream::select_all};
use k8s_openapi::{
    api::{
        core::v1::{Endpoints, ObjectReference},
        discovery::v1::EndpointSlice as K8sEndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Config, Resource,
    api::{ApiResource, DynamicObject, TypeMeta},
    config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError},
    runtime::{
        WatchStreamExt,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::{debug, info, instrument, warn};

use super::SourceUpdate;
use crate::{
    desired,
    model::{
        Flavour, ObjectKey, Rejection, Snapshot,
        convert::{
            self, ANNOTATION_DERIVED_SERVICE, ANNOTATION_GKE_DERIVED_SERVICE, LABEL_MANAGED_BY,
            LABEL_MC_SERVICE_NAME, LABEL_SERVICE_NAME, LABEL_SOURCE_CLUSTER, Object,
        },
        manifest,
    },
    telemetry::chain,
};

/// `reportingController` of the Events the agent publishes.
pub const EVENT_CONTROLLER: &str = "mcs-agent";
/// `action` of the Events the agent publishes.
const EVENT_ACTION: &str = "Validate";
/// Events API limit for `note`.
const EVENT_NOTE_MAX: usize = 1024;
/// Events waiting to be posted; beyond this they are retried on the next
/// update instead of queued (an API server that does not keep up must not
/// make the agent grow).
const EVENT_QUEUE: usize = 256;

/// Failed to start the Kubernetes source.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("cannot load kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error(
        "no in-cluster Kubernetes configuration (pass --kubeconfig when running outside a pod)"
    )]
    InCluster(#[source] InClusterError),
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
    /// Publish rejections as Kubernetes Events.
    pub events: bool,
    /// `reportingInstance` of Events (the agent's pod or node name).
    pub reporting_instance: Option<String>,
}

impl Default for KubeSourceOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(75),
            page_size: 500,
            events: true,
            // Set through the downward API in the DaemonSet, so the Events
            // of different nodes' agents can be told apart.
            reporting_instance: std::env::var("POD_NAME")
                .or_else(|_| std::env::var("NODE_NAME"))
                .ok()
                .filter(|name| !name.is_empty()),
        }
    }
}

/// What one watcher follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watched {
    Imports(Flavour),
    /// EndpointSlices of imports (`multicluster.kubernetes.io/service-name`).
    McsSlices,
    /// EndpointSlices of ordinary Services, for derived services.
    ServiceSlices,
    /// Legacy `Endpoints`, for derived services.
    Endpoints,
}

/// Watch order; also the order objects are converted in (v1beta1, the
/// storage version, before v1alpha1, so the same object served in both
/// versions is taken from v1beta1).
const WATCHED: [Watched; 6] = [
    Watched::Imports(Flavour::McsV1beta1),
    Watched::Imports(Flavour::McsV1alpha1),
    Watched::Imports(Flavour::Gke),
    Watched::McsSlices,
    Watched::ServiceSlices,
    Watched::Endpoints,
];

impl Watched {
    fn index(self) -> usize {
        WATCHED.iter().position(|w| *w == self).unwrap_or(0)
    }

    /// `resource.version.group` and the selector, for logs.
    fn describe(self) -> &'static str {
        match self {
            Self::Imports(Flavour::McsV1beta1) => "serviceimports.v1beta1.multicluster.x-k8s.io",
            Self::Imports(Flavour::McsV1alpha1) => "serviceimports.v1alpha1.multicluster.x-k8s.io",
            Self::Imports(Flavour::Gke) => "serviceimports.v1.net.gke.io",
            Self::McsSlices => {
                "endpointslices.v1.discovery.k8s.io (multicluster.kubernetes.io/service-name)"
            }
            Self::ServiceSlices => {
                "endpointslices.v1.discovery.k8s.io (kubernetes.io/service-name)"
            }
            Self::Endpoints => "endpoints.v1",
        }
    }
}

/// The `ApiResource` of a ServiceImport flavour.
pub fn import_resource(flavour: Flavour) -> ApiResource {
    let (group, version) = match flavour {
        Flavour::McsV1alpha1 => ("multicluster.x-k8s.io", "v1alpha1"),
        Flavour::McsV1beta1 => ("multicluster.x-k8s.io", "v1beta1"),
        Flavour::Gke => ("net.gke.io", "v1"),
    };
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: format!("{group}/{version}"),
        kind: "ServiceImport".to_owned(),
        plural: "serviceimports".to_owned(),
    }
}

/// Label selector of the MCS slices watcher.
pub const MCS_SLICES_SELECTOR: &str = LABEL_MC_SERVICE_NAME;
/// Label selector of the derived-service slices watcher: disjoint from
/// [`MCS_SLICES_SELECTOR`], so a slice carrying both labels is held once.
pub const SERVICE_SLICES_SELECTOR: &str =
    "kubernetes.io/service-name,!multicluster.kubernetes.io/service-name";

/// Reader side of every watcher.
#[derive(Clone)]
struct Stores {
    imports: Vec<(Watched, ApiResource, Store<DynamicObject>)>,
    mcs_slices: Store<K8sEndpointSlice>,
    service_slices: Store<K8sEndpointSlice>,
    endpoints: Store<Endpoints>,
}

/// What a watcher event means for readiness and publishing.
enum Progress {
    /// The store changed (watch event).
    Changed,
    /// A relist is buffering; the store is unchanged.
    Listing,
    /// A list completed and was swapped into the store.
    Listed,
    Failed(watcher::Error),
}

fn progress<K>(result: Result<watcher::Event<K>, watcher::Error>) -> Progress {
    match result {
        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Progress::Changed,
        Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => Progress::Listing,
        Ok(watcher::Event::InitDone) => Progress::Listed,
        Err(error) => Progress::Failed(error),
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = (Watched, Progress)> + Send>>;

/// A watcher with backoff whose trimmed objects are reflected into
/// `writer`'s store.
fn reflect<K>(
    watched: Watched,
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> ProgressStream
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    watcher(api, config)
        .modify(trim)
        .reflect(writer)
        // `Init` starts every list attempt, and the backoff resets on every
        // item that is not an error: with it, a list that keeps failing (a
        // CRD that is not installed) would be retried at the first backoff
        // step (about a second) forever. The store has already seen it.
        .filter(|event| std::future::ready(!matches!(event, Ok(watcher::Event::Init))))
        .default_backoff()
        .map(move |result| (watched, progress(result)))
        .boxed()
}

/// Readiness of one watcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListState {
    /// First list not complete yet: blocks publishing.
    Pending,
    /// First list complete; the store is authoritative from now on.
    Listed,
    /// The resource is not served (404 on list, e.g. a CRD that is not
    /// installed) and has never been listed: counts as empty, retried.
    NotServed,
}

struct WatchState {
    list: ListState,
    /// Last error logged, so a persisting failure is logged once.
    last_error: Option<String>,
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
        let config = match kubeconfig {
            Some(path) => {
                let kubeconfig_error = |source| KubeSourceError::Kubeconfig {
                    path: path.to_owned(),
                    source,
                };
                let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
                Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(kubeconfig_error)?
            }
            None => Config::incluster().map_err(KubeSourceError::InCluster)?,
        };
        info!(server = %config.cluster_url, "Kubernetes API server");
        let client = Client::try_from(config).map_err(KubeSourceError::Client)?;
        Ok(Self::new(client, options))
    }

    /// Starts every watcher; returns the stores and the merged event stream.
    fn watch_all(&self) -> (Stores, Vec<ProgressStream>) {
        let config = watcher::Config::default().page_size(self.options.page_size);
        let mut streams = Vec::with_capacity(WATCHED.len());
        let mut imports = Vec::new();
        for watched in WATCHED {
            let Watched::Imports(flavour) = watched else {
                continue;
            };
            let resource = import_resource(flavour);
            let writer = reflector::store::Writer::new(resource.clone());
            imports.push((watched, resource.clone(), writer.as_reader()));
            let api = Api::<DynamicObject>::all_with(self.client.clone(), &resource);
            let types = TypeMeta {
                api_version: resource.api_version.clone(),
                kind: resource.kind.clone(),
            };
            streams.push(reflect(
                watched,
                api,
                config.clone(),
                writer,
                move |import| {
                    trim_import(import, &types);
                },
            ));
        }

        let (mcs_slices, writer) = reflector::store();
        streams.push(reflect(
            Watched::McsSlices,
            Api::all(self.client.clone()),
            config.clone().labels(MCS_SLICES_SELECTOR),
            writer,
            trim_slice,
        ));
        let (service_slices, writer) = reflector::store();
        streams.push(reflect(
            Watched::ServiceSlices,
            Api::all(self.client.clone()),
            config.clone().labels(SERVICE_SLICES_SELECTOR),
            writer,
            trim_slice,
        ));
        // `Endpoints` carry no label naming their Service, so all are
        // watched (trimmed to addresses and ports) and only those named by
        // an import's derived-service annotation are converted.
        let (endpoints, writer) = reflector::store();
        streams.push(reflect(
            Watched::Endpoints,
            Api::all(self.client.clone()),
            config,
            writer,
            trim_endpoints,
        ));
        let stores = Stores {
            imports,
            mcs_slices,
            service_slices,
            endpoints,
        };
        (stores, streams)
    }

    /// Watches until the receiver of `updates` is dropped.
    #[instrument(name = "kube_source", skip_all)]
    pub async fn run(
        self,
        updates: watch::Sender<Option<SourceUpdate>>,
    ) -> Result<(), KubeSourceError> {
        let (stores, streams) = self.watch_all();
        let mut streams = select_all(streams);
        let mut states: Vec<WatchState> = WATCHED
            .iter()
            .map(|_| WatchState {
                list: ListState::Pending,
                last_error: None,
            })
            .collect();
        let mut events = self.options.events.then(|| {
            let reporter = Reporter {
                controller: EVENT_CONTROLLER.to_owned(),
                instance: self.options.reporting_instance.clone(),
            };
            EventSink::start(Recorder::new(self.client.clone(), reporter))
        });
        let mut builder = SnapshotBuilder::default();
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
                    let built = builder.build(&stores);
                    if let Some(events) = &mut events {
                        events.report(&built);
                    }
                    let update = built.update;
                    let (imports, slices) = (update.snapshot.imports.len(), update.snapshot.slices().len());
                    let changed = updates.send_if_modified(|current| {
                        if current.as_ref() == Some(&update) {
                            false
                        } else {
                            *current = Some(update);
                            true
                        }
                    });
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

/// Updates a watcher's state; returns whether a snapshot must be built.
fn observe(watched: Watched, state: &mut WatchState, progress: Progress) -> bool {
    let resource = watched.describe();
    match progress {
        Progress::Listing => false,
        Progress::Changed | Progress::Listed => {
            if state.last_error.take().is_some() {
                info!(resource, "watch recovered");
            }
            if matches!(progress, Progress::Listed) {
                if state.list == ListState::NotServed {
                    info!(resource, "now served; its objects are included");
                }
                state.list = ListState::Listed;
            }
            true
        }
        Progress::Failed(error) => {
            // By code: a path that is not served at all answers a plain
            // "404 page not found", which has no `NotFound` reason.
            let not_found = matches!(
                &error,
                watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 404
            );
            if not_found && state.list != ListState::Listed {
                // Never listed and not served: most likely a CRD that is not
                // installed (GKE's on an upstream cluster, or one mcs-api
                // version). Waiting for it would block every other flavour
                // forever, so it counts as empty; the watcher keeps retrying
                // with backoff and its objects appear once it is served.
                let first = state.list == ListState::Pending;
                state.list = ListState::NotServed;
                if first {
                    info!(
                        resource,
                        "not served by the API server (CRD not installed?); treated as empty, retrying with backoff"
                    );
                }
                return first;
            }
            let message = chain(&error);
            let expired =
                matches!(&error, watcher::Error::WatchError(status) if status.code == 410);
            if expired {
                // The normal way a watch ends when the server's history is
                // compacted: the watcher relists.
                debug!(resource, "watch expired (410 Gone); relisting");
            } else if state.last_error.as_deref() != Some(message.as_str()) {
                let forbidden = matches!(
                    &error,
                    watcher::Error::InitialListFailed(kube::Error::Api(status))
                    | watcher::Error::WatchStartFailed(kube::Error::Api(status)) if status.code == 403
                );
                if forbidden {
                    warn!(resource, error = %message, "access denied; check the agent's RBAC (deploy/rbac.yaml); retrying with backoff");
                } else {
                    warn!(resource, error = %message, "watch failed; keeping the last known objects, retrying with backoff");
                }
                state.last_error = Some(message);
            } else {
                debug!(resource, error = %message, "watch still failing");
            }
            false
        }
    }
}

/// Keeps only the metadata conversion and Events need.
fn trimmed_meta(
    meta: &mut ObjectMeta,
    keep_labels: &[&str],
    keep_annotations: &[&str],
) -> ObjectMeta {
    let keep = |map: Option<BTreeMap<String, String>>, keys: &[&str]| {
        map.map(|mut map| {
            map.retain(|key, _| keys.contains(&key.as_str()));
            map
        })
        .filter(|map| !map.is_empty())
    };
    ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        labels: keep(meta.labels.take(), keep_labels),
        annotations: keep(meta.annotations.take(), keep_annotations),
        ..ObjectMeta::default()
    }
}

/// Trims a ServiceImport to metadata, `spec` and `status` (without
/// conditions) and gives it its type: list items need not carry
/// `apiVersion`/`kind`, and conversion dispatches on them.
fn trim_import(import: &mut DynamicObject, types: &TypeMeta) {
    import.types = Some(types.clone());
    import.metadata = trimmed_meta(
        &mut import.metadata,
        &[],
        &[ANNOTATION_DERIVED_SERVICE, ANNOTATION_GKE_DERIVED_SERVICE],
    );
    if let Value::Object(data) = &mut import.data {
        data.retain(|key, _| key == "spec" || key == "status");
        if let Some(Value::Object(status)) = data.get_mut("status") {
            status.remove("conditions");
        }
    }
}

fn trim_slice(slice: &mut K8sEndpointSlice) {
    slice.metadata = trimmed_meta(
        &mut slice.metadata,
        &[
            LABEL_MC_SERVICE_NAME,
            LABEL_SOURCE_CLUSTER,
            LABEL_SERVICE_NAME,
            LABEL_MANAGED_BY,
        ],
        &[],
    );
    for endpoint in &mut slice.endpoints {
        endpoint.target_ref = None;
        endpoint.node_name = None;
        endpoint.zone = None;
        endpoint.hints = None;
        endpoint.deprecated_topology = None;
    }
}

fn trim_endpoints(endpoints: &mut Endpoints) {
    endpoints.metadata = trimmed_meta(&mut endpoints.metadata, &[], &[]);
    for subset in endpoints.subsets.iter_mut().flatten() {
        for address in subset
            .addresses
            .iter_mut()
            .chain(subset.not_ready_addresses.iter_mut())
            .flatten()
        {
            address.target_ref = None;
            address.node_name = None;
        }
    }
}

fn key_of(meta: &ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Whether a slice is converted: every slice with the MCS label (conversion
/// itself skips those of the ordinary controller, as for files), and a
/// slice of an ordinary Service only when an import's derived-service
/// annotation names that Service. The slices of every other Service are
/// not converted, so they cannot cause rejections or Events.
fn slice_is_relevant(slice: &K8sEndpointSlice, derived: &BTreeSet<ObjectKey>) -> bool {
    let labels = slice.metadata.labels.as_ref();
    let label = |key: &str| {
        labels
            .and_then(|labels| labels.get(key))
            .map(String::as_str)
    };
    let namespace = slice.metadata.namespace.as_deref().unwrap_or_default();
    if label(LABEL_MC_SERVICE_NAME).is_some() {
        return true;
    }
    label(LABEL_SERVICE_NAME)
        .is_some_and(|service| derived.contains(&ObjectKey::new(namespace, service)))
}

/// One object's conversion, kept while its resourceVersion is unchanged.
struct Cached {
    resource_version: String,
    objects: Vec<Object>,
    rejections: Vec<Rejection>,
}

/// A converted snapshot and, for Events, a reference to every object a
/// rejection may name.
struct Built {
    update: SourceUpdate,
    /// Rejections computed from the snapshot (conflicts, unsupported
    /// features), which run.rs derives itself but Events must cover too.
    derived: Vec<Rejection>,
    references: HashMap<(String, ObjectKey), ObjectReference>,
}

/// Converts store contents, reusing conversions of unchanged objects.
#[derive(Default)]
struct SnapshotBuilder {
    cache: HashMap<(usize, ObjectKey), Cached>,
    /// Desired state of the last build (for its derived rejections), kept
    /// up to date import by import rather than recomputed whole.
    desired: Option<(desired::Incremental, Snapshot)>,
}

/// Objects, rejections and references gathered during one build.
#[derive(Default)]
struct Gathered {
    objects: Vec<Object>,
    rejections: Vec<Rejection>,
    references: HashMap<(String, ObjectKey), ObjectReference>,
}

impl SnapshotBuilder {
    /// Converts one stored object (or takes its cached conversion).
    fn convert(
        &mut self,
        next: &mut HashMap<(usize, ObjectKey), Cached>,
        gathered: &mut Gathered,
        source: Watched,
        key: ObjectKey,
        reference: ObjectReference,
        raw: impl FnOnce() -> Value,
    ) {
        let resource_version = reference.resource_version.clone().unwrap_or_default();
        let cache_key = (source.index(), key.clone());
        let cached = match self.cache.remove(&cache_key) {
            Some(cached)
                if !resource_version.is_empty() && cached.resource_version == resource_version =>
            {
                cached
            }
            _ => {
                let converted = convert::convert(&raw());
                Cached {
                    resource_version,
                    objects: converted.objects,
                    rejections: converted.rejections,
                }
            }
        };
        gathered.objects.extend(cached.objects.iter().cloned());
        gathered
            .rejections
            .extend(cached.rejections.iter().cloned());
        let kind = reference.kind.clone().unwrap_or_default();
        gathered.references.entry((kind, key)).or_insert(reference);
        next.insert(cache_key, cached);
    }

    #[instrument(level = "debug", skip_all)]
    fn build(&mut self, stores: &Stores) -> Built {
        let mut next = HashMap::new();
        let mut gathered = Gathered::default();

        let mut mcs_api_keys = HashSet::new();
        for (watched, resource, store) in &stores.imports {
            for import in sorted(store.state(), |import| key_of(&import.metadata)) {
                let key = key_of(&import.metadata);
                // v1alpha1 and v1beta1 are two views of one CRD: an object
                // listed in both is the same object, taken once (v1beta1).
                if *watched != Watched::Imports(Flavour::Gke) && !mcs_api_keys.insert(key.clone()) {
                    continue;
                }
                let reference = import.object_ref(resource);
                self.convert(&mut next, &mut gathered, *watched, key, reference, || {
                    serde_json::to_value(&*import).unwrap_or(Value::Null)
                });
            }
        }

        let derived: BTreeSet<ObjectKey> = gathered
            .objects
            .iter()
            .filter_map(|object| match object {
                Object::Import(import) => import
                    .derived_service
                    .as_ref()
                    .map(|service| ObjectKey::new(import.key.namespace.clone(), service.clone())),
                Object::Slice(_) => None,
            })
            .collect();

        for (watched, store) in [
            (Watched::McsSlices, &stores.mcs_slices),
            (Watched::ServiceSlices, &stores.service_slices),
        ] {
            for slice in sorted(store.state(), |slice| key_of(&slice.metadata)) {
                if !slice_is_relevant(&slice, &derived) {
                    continue;
                }
                let key = key_of(&slice.metadata);
                let reference = slice.object_ref(&());
                self.convert(&mut next, &mut gathered, watched, key, reference, || {
                    serde_json::to_value(&*slice).unwrap_or(Value::Null)
                });
            }
        }

        for endpoints in sorted(stores.endpoints.state(), |e| key_of(&e.metadata)) {
            let key = key_of(&endpoints.metadata);
            if !derived.contains(&key) {
                continue;
            }
            let reference = endpoints.object_ref(&());
            self.convert(
                &mut next,
                &mut gathered,
                Watched::Endpoints,
                key,
                reference,
                || serde_json::to_value(&*endpoints).unwrap_or(Value::Null),
            );
        }

        self.cache = next;
        // A GKE and an mcs-api import of the same name are distinct objects:
        // the first (mcs-api) wins and the other is rejected, as in files.
        let (snapshot, duplicates) = manifest::snapshot(gathered.objects);
        let mut rejections = gathered.rejections;
        rejections.extend(duplicates);
        let engine = match self.desired.take() {
            Some((mut engine, previous)) => {
                let changes = desired::Changes::between(&previous, &snapshot);
                let affected = engine.affected(&changes);
                engine.update(&snapshot, &affected);
                engine
            }
            None => desired::Incremental::new(&snapshot, desired::Policy::default()),
        };
        let derived = engine.rejections();
        // Snapshots share their objects: keeping one is cheap.
        self.desired = Some((engine, snapshot.clone()));
        Built {
            update: SourceUpdate {
                snapshot,
                rejections,
            },
            derived,
            references: gathered.references,
        }
    }
}

fn sorted<K>(
    mut items: Vec<std::sync::Arc<K>>,
    key: impl Fn(&K) -> ObjectKey,
) -> Vec<std::sync::Arc<K>> {
    items.sort_by_cached_key(|item| key(item));
    items
}

/// `snake_case` → `CamelCase` (Event reasons are CamelCase).
pub fn event_reason(reason: &str) -> String {
    reason
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

fn truncate_note(mut note: String) -> String {
    if note.len() > EVENT_NOTE_MAX {
        let mut end = EVENT_NOTE_MAX - '…'.len_utf8();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    note
}

/// Identity of a published Event: an unchanged bad object keeps the same
/// key from update to update and is therefore reported once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EventKey {
    kind: String,
    object: ObjectKey,
    uid: Option<String>,
    reason: String,
    note: String,
}

/// Publishes rejections as Events from a task of its own, so a slow or
/// failing API server never delays map updates.
struct EventSink {
    queue: mpsc::Sender<(ObjectReference, Event)>,
    reported: HashSet<EventKey>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EventSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EventSink {
    fn start(recorder: Recorder) -> Self {
        let (queue, mut pending) = mpsc::channel::<(ObjectReference, Event)>(EVENT_QUEUE);
        let task = tokio::spawn(async move {
            let mut failing = false;
            while let Some((reference, event)) = pending.recv().await {
                match recorder.publish(&event, &reference).await {
                    Ok(()) => failing = false,
                    Err(error) if !failing => {
                        failing = true;
                        warn!(error = %chain(&error), "cannot publish Kubernetes Event (rejections are still logged)");
                    }
                    Err(error) => debug!(error = %chain(&error), "cannot publish Kubernetes Event"),
                }
            }
        });
        Self {
            queue,
            reported: HashSet::new(),
            task,
        }
    }

    /// Queues an Event for every rejection not reported before; one Event
    /// per object and reason, its note listing every message.
    fn report(&mut self, built: &Built) {
        let mut grouped: BTreeMap<(String, ObjectKey, &'static str), Vec<String>> = BTreeMap::new();
        for rejection in built.update.rejections.iter().chain(&built.derived) {
            grouped
                .entry((
                    rejection.kind.clone(),
                    rejection.object.clone(),
                    rejection.reason(),
                ))
                .or_default()
                .push(rejection.to_string());
        }
        let mut current = HashSet::new();
        for ((kind, object, reason), mut messages) in grouped {
            let Some(reference) = built.references.get(&(kind.clone(), object.clone())) else {
                continue; // not an object of the API server
            };
            messages.dedup();
            let note = truncate_note(messages.join("; "));
            let key = EventKey {
                kind,
                object,
                uid: reference.uid.clone(),
                reason: event_reason(reason),
                note,
            };
            if !self.reported.contains(&key) {
                let event = Event {
                    type_: EventType::Warning,
                    reason: key.reason.clone(),
                    note: Some(key.note.clone()),
                    action: EVENT_ACTION.to_owned(),
                    secondary: None,
                };
                if self.queue.try_send((reference.clone(), event)).is_err() {
                    // Queue full: not recorded as reported, so it is tried
                    // again on the next update.
                    debug!(object = %key.object, "Event queue full");
                    continue;
                }
            }
            current.insert(key);
        }
        // Forget what is fixed, so it is reported again if it comes back.
        self.reported = current;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::convert::MANAGED_BY_ENDPOINTSLICE_CONTROLLER;

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
        assert!(matches!(missing, Err(KubeSourceError::Kubeconfig { .. })));
    }

    #[test]
    fn reasons_are_camel_case() {
        assert_eq!(event_reason("forbidden_ip"), "ForbiddenIp");
        assert_eq!(event_reason("duplicate_port_name"), "DuplicatePortName");
        assert_eq!(event_reason("conflict"), "Conflict");
    }

    #[test]
    fn notes_are_cut_at_the_events_limit() {
        let note = truncate_note("é".repeat(EVENT_NOTE_MAX));
        assert!(note.len() <= EVENT_NOTE_MAX);
        assert!(note.ends_with('…'));
        assert_eq!(truncate_note("short".into()), "short");
    }

    #[test]
    fn trimming_keeps_what_conversion_reads() {
        let raw = json!({
            "apiVersion": "net.gke.io/v1",
            "kind": "ServiceImport",
            "metadata": {
                "name": "web", "namespace": "demo", "uid": "u1", "resourceVersion": "7",
                "labels": {"app": "web"},
                "annotations": {"net.gke.io/derived-service": "gke-mcs-x", "other": "y"},
                "managedFields": [{"manager": "importer", "operation": "Update"}],
            },
            "spec": {"ips": ["10.96.0.1"], "ports": [{"port": 80}]},
            "status": {"clusters": [{"cluster": "a"}], "conditions": [{"type": "Ready"}]},
            "extra": {"big": true},
        });
        let mut object: DynamicObject = serde_json::from_value(raw.clone()).unwrap();
        object.types = None; // as list items may come
        trim_import(
            &mut object,
            &TypeMeta {
                api_version: "net.gke.io/v1".into(),
                kind: "ServiceImport".into(),
            },
        );
        let trimmed = serde_json::to_value(&object).unwrap();
        assert_eq!(
            trimmed["metadata"]["annotations"],
            json!({"net.gke.io/derived-service": "gke-mcs-x"})
        );
        assert!(trimmed["metadata"].get("managedFields").is_none());
        assert!(trimmed["metadata"].get("labels").is_none());
        assert!(trimmed.get("extra").is_none());
        assert!(trimmed["status"].get("conditions").is_none());
        let (full, small) = (convert::convert(&raw), convert::convert(&trimmed));
        assert_eq!(full.objects, small.objects);
        assert_eq!(full.rejections, small.rejections);
    }

    #[test]
    fn slices_of_ordinary_services_are_relevant_only_when_derived() {
        let slice = |labels: Value| -> K8sEndpointSlice {
            serde_json::from_value(json!({
                "metadata": {"name": "s", "namespace": "demo", "labels": labels},
                "addressType": "IPv4",
                "endpoints": [],
            }))
            .unwrap()
        };
        let derived = BTreeSet::from([ObjectKey::new("demo", "gke-mcs-x")]);
        assert!(slice_is_relevant(
            &slice(json!({LABEL_MC_SERVICE_NAME: "web"})),
            &derived
        ));
        assert!(slice_is_relevant(
            &slice(
                json!({LABEL_MC_SERVICE_NAME: "web", LABEL_MANAGED_BY: MANAGED_BY_ENDPOINTSLICE_CONTROLLER})
            ),
            &derived
        ));
        assert!(slice_is_relevant(
            &slice(json!({LABEL_SERVICE_NAME: "gke-mcs-x"})),
            &derived
        ));
        assert!(!slice_is_relevant(
            &slice(json!({LABEL_SERVICE_NAME: "kubernetes"})),
            &derived
        ));
    }
}
