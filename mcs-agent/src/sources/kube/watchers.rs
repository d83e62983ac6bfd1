//! The six watchers: what each follows, their reflector stores, and what
//! their events mean for readiness (first list done, or not served).

use std::{fmt::Debug, hash::Hash, pin::Pin};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{core::v1::Endpoints, discovery::v1::EndpointSlice as K8sEndpointSlice};
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DynamicObject, TypeMeta},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use super::trim::{trim_endpoints, trim_import, trim_slice};
use crate::{
    model::{Flavour, convert::LABEL_MC_SERVICE_NAME},
    telemetry::chain,
};

/// What one watcher follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Watched {
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
pub(super) const WATCHED: [Watched; 6] = [
    Watched::Imports(Flavour::McsV1beta1),
    Watched::Imports(Flavour::McsV1alpha1),
    Watched::Imports(Flavour::Gke),
    Watched::McsSlices,
    Watched::ServiceSlices,
    Watched::Endpoints,
];

impl Watched {
    pub(super) fn index(self) -> usize {
        WATCHED.iter().position(|w| *w == self).unwrap_or(0)
    }

    /// Whether the resource may legitimately not be served: a ServiceImport
    /// flavour whose CRD is not installed. EndpointSlices and Endpoints are
    /// core APIs: a 404 for them is a broken server or proxy, never "none".
    pub(super) fn optional(self) -> bool {
        matches!(self, Self::Imports(_))
    }

    /// `resource.version.group` and the selector, for logs.
    pub(super) fn describe(self) -> &'static str {
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
pub(super) struct Stores {
    pub(super) imports: Vec<(Watched, ApiResource, Store<DynamicObject>)>,
    pub(super) mcs_slices: Store<K8sEndpointSlice>,
    pub(super) service_slices: Store<K8sEndpointSlice>,
    pub(super) endpoints: Store<Endpoints>,
}

/// What a watcher event means for readiness and publishing.
pub(super) enum Progress {
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

pub(super) type ProgressStream = Pin<Box<dyn Stream<Item = (Watched, Progress)> + Send>>;

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
pub(super) enum ListState {
    /// First list not complete yet: blocks publishing.
    Pending,
    /// First list complete; the store is authoritative from now on.
    Listed,
    /// An optional resource ([`Watched::optional`]) that is not served (404
    /// on list: a CRD that is not installed) and has never been listed:
    /// counts as empty, retried.
    NotServed,
}

pub(super) struct WatchState {
    pub(super) list: ListState,
    /// Last error logged, so a persisting failure is logged once.
    last_error: Option<String>,
    /// The last list failure, until a list succeeds: what the source
    /// reports as failing. (A watch that breaks resumes from its last
    /// version without telling when it is back, so only lists, which end
    /// in a definite success, make the source unhealthy.)
    pub(super) failing_list: Option<String>,
}

impl WatchState {
    pub(super) fn new() -> Self {
        Self {
            list: ListState::Pending,
            last_error: None,
            failing_list: None,
        }
    }
}

/// Starts every watcher; returns the stores and the event streams.
pub(super) fn watch_all(client: &Client, page_size: u32) -> (Stores, Vec<ProgressStream>) {
    let config = watcher::Config::default().page_size(page_size);
    let mut streams = Vec::with_capacity(WATCHED.len());
    let mut imports = Vec::new();
    for watched in WATCHED {
        let Watched::Imports(flavour) = watched else {
            continue;
        };
        let resource = import_resource(flavour);
        let writer = reflector::store::Writer::new(resource.clone());
        imports.push((watched, resource.clone(), writer.as_reader()));
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
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
        Api::all(client.clone()),
        config.clone().labels(MCS_SLICES_SELECTOR),
        writer,
        trim_slice,
    ));
    let (service_slices, writer) = reflector::store();
    streams.push(reflect(
        Watched::ServiceSlices,
        Api::all(client.clone()),
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
        Api::all(client.clone()),
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

/// Updates a watcher's state; returns whether a snapshot must be built.
pub(super) fn observe(watched: Watched, state: &mut WatchState, progress: Progress) -> bool {
    let resource = watched.describe();
    match progress {
        Progress::Listing => false,
        Progress::Changed | Progress::Listed => {
            if state.last_error.take().is_some() {
                info!(resource, "watch recovered");
            }
            if matches!(progress, Progress::Listed) {
                state.failing_list = None;
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
            if not_found && watched.optional() && state.list != ListState::Listed {
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
                } else if not_found {
                    warn!(resource, error = %message, "not served by the API server (a core API: nothing is published, and an adopted dataplane is kept, until it lists); retrying with backoff");
                } else {
                    warn!(resource, error = %message, "watch failed; keeping the last known objects, retrying with backoff");
                }
                state.last_error = Some(message.clone());
            } else {
                debug!(resource, error = %message, "watch still failing");
            }
            let list_failed = matches!(&error, watcher::Error::InitialListFailed(_));
            if list_failed && state.failing_list.as_deref() != Some(message.as_str()) {
                // A new list failure: the source publishes it (metrics, logs).
                state.failing_list = Some(message);
                return true;
            }
            false
        }
    }
}
