//! A local Kubernetes API server for tests and the demo: kube-rs's client
//! and watcher, and kubectl (1.32), work against it as against a real one,
//! without a cluster and without root.
//!
//! It serves core `v1` Namespaces, Services, Endpoints and Events,
//! `discovery.k8s.io/v1` EndpointSlices, `events.k8s.io/v1` Events,
//! `coordination.k8s.io/v1` Leases, `apiextensions.k8s.io/v1`
//! CustomResourceDefinitions, and the resources of every CRD it is given
//! (by default the repository's `deploy/crds/` and the GKE shapes in
//! `tests/fixtures/crds/`; all versions of a CRD share one store, as with
//! conversion strategy `None`). Verbs: get, list and watch ([`reads`],
//! [`watch`]), create, update, patch (merge, JSON, strategic merge,
//! server-side apply) and delete ([`writes`], [`patch`], [`apply`],
//! [`deletes`]), the
//! `status` subresource, discovery and the OpenAPI index kubectl needs
//! ([`discovery`]), and Tables for `kubectl get` ([`table`]). Deleting a
//! namespace deletes its objects within the same request (the namespace
//! controller's work, done at once); objects whose owners are all gone are
//! collected likewise; finalizers hold a deletion until they are removed.
//!
//! Not modelled: authentication and authorization (any credentials
//! pass), admission, validation beyond names and a CRD's structural
//! pruning, `resourceVersion` semantics of lists (always the latest
//! state), field ownership beyond each manager's last apply (see
//! [`apply`]), protobuf and CBOR bodies (except the Namespace `kubectl
//! create namespace` sends, see [`protobuf`]).
//!
//! Tests also change objects directly ([`LocalApiServer::apply`],
//! [`LocalApiServer::delete`]) and inject faults: slow lists, a resource
//! not served (404, like a CRD that is not installed), expired watches
//! (410), dropped connections, and an unavailable server (503) while
//! objects change behind the client's back.
//!
//! The server runs on a thread of its own with its own runtime, so it works
//! the same from synchronous and asynchronous tests; dropping it stops it.

mod apply;
mod checks;
mod crds;
mod defaults;
mod deletes;
mod discovery;
mod http;
mod patch;
mod protobuf;
mod reads;
mod registry;
mod schema;
mod selector;
mod state;
mod status;
mod store;
mod table;
mod watch;
mod writes;

use std::{
    collections::{BTreeMap, HashSet},
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    thread,
    time::Duration,
};

use serde_json::Value;
use tokio::sync::oneshot;

pub use self::{
    crds::CrdError,
    selector::{FieldSelector, Selector},
};
use self::{
    registry::{GroupResource, split_api_version},
    state::{State, crd_resource, name_of, namespace_of, view},
    store::Key,
};

/// The name existing tests know the server by.
pub type FakeApiServer = LocalApiServer;

/// A resource in one version: `apiVersion` and plural name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId {
    pub api_version: String,
    pub plural: String,
}

impl ResourceId {
    pub fn new(api_version: &str, plural: &str) -> Self {
        Self {
            api_version: api_version.to_owned(),
            plural: plural.to_owned(),
        }
    }

    fn group_resource(&self) -> GroupResource {
        GroupResource::new(split_api_version(&self.api_version).0, &self.plural)
    }
}

impl std::fmt::Display for ResourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.api_version, self.plural)
    }
}

/// A request the server answered.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub status: u16,
}

impl RequestRecord {
    pub fn is_watch(&self) -> bool {
        self.query
            .get("watch")
            .is_some_and(|v| v == "true" || v == "1")
    }
}

/// Problems with what a test asked the server to do.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("object has no known apiVersion/kind: {0}")]
    UnknownKind(String),
    #[error("object has no metadata.name")]
    NoName,
    #[error("invalid CustomResourceDefinition: {0}")]
    InvalidCrd(String),
}

/// How to start a server.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    /// Directories whose CRD files (`.yaml`, `.yml`, `.json`) are served.
    pub crd_dirs: Vec<PathBuf>,
    /// Keep every request and Event for [`LocalApiServer::requests`],
    /// [`LocalApiServer::events`] and [`LocalApiServer::event_patches`]
    /// (tests); off, memory stays bounded (a long-running server).
    pub record: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            crd_dirs: default_crd_dirs(),
            record: true,
        }
    }
}

/// The repository's `deploy/crds/` (what mcs ships) and
/// `tests/fixtures/crds/` (GKE's `net.gke.io` kinds, which GKE installs
/// itself).
pub fn default_crd_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    vec![root.join("../deploy/crds"), root.join("fixtures/crds")]
}

/// A running local API server; stops when dropped.
pub struct LocalApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl LocalApiServer {
    /// Starts on an ephemeral port of 127.0.0.1 with the default CRDs.
    pub fn start() -> io::Result<Self> {
        Self::start_with(Options::default())
    }

    /// Starts on `addr` (e.g. an address inside a test topology).
    pub fn start_on(addr: SocketAddr) -> io::Result<Self> {
        Self::start_with(Options {
            listen: addr,
            ..Options::default()
        })
    }

    pub fn start_with(options: Options) -> io::Result<Self> {
        let mut state = State::new(options.record);
        for dir in &options.crd_dirs {
            let crds =
                crds::load_dir(dir).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            for crd in crds {
                install_crd(&mut state, crd)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
        }
        let listener = std::net::TcpListener::bind(options.listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(state));
        let (shutdown, stop) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread_state = state.clone();
        let thread = thread::Builder::new()
            .name("local-apiserver".into())
            .spawn(move || {
                runtime.block_on(http::serve(listener, thread_state, stop));
                // Streaming responses would keep a graceful shutdown waiting.
                runtime.shutdown_background();
            })?;
        Ok(Self {
            addr,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
            dir: tempfile::tempdir()?,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the server URL for a kubeconfig or `kube::Config`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig whose current context points at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\nusers:\n- name: local\n  user:\n    token: local-token\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: local\n    namespace: default\ncurrent-context: local\n",
            self.url()
        )
    }

    /// Writes [`Self::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// A kubeconfig file for this server, removed when the server is dropped.
    pub fn kubeconfig_file(&self) -> io::Result<PathBuf> {
        let path = self.dir.path().join("kubeconfig");
        self.write_kubeconfig(&path)?;
        Ok(path)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        http::lock(&self.state)
    }

    /// The resource of an object, from its `apiVersion` and `kind`.
    pub fn resource_of(&self, object: &Value) -> Option<ResourceId> {
        let api_version = object.get("apiVersion")?.as_str()?;
        let kind = object.get("kind")?.as_str()?;
        let state = self.lock();
        let resource = state.registry.by_kind(api_version, kind)?;
        Some(ResourceId::new(api_version, &resource.plural))
    }

    /// Creates or replaces an object (ADDED or MODIFIED for watchers),
    /// bypassing the API's checks, as if it had always been there: its
    /// namespace is created if missing. Sets `metadata.resourceVersion`
    /// and, for new objects, `uid` and `creationTimestamp` unless given.
    /// Returns the new resourceVersion.
    pub fn apply(&self, mut object: Value) -> Result<u64, FakeError> {
        let unknown = || FakeError::UnknownKind(object.to_string().chars().take(120).collect());
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let mut state = self.lock();
        let resource = state
            .registry
            .by_kind(api_version, kind)
            .cloned()
            .ok_or_else(unknown)?;
        let name = name_of(&object).to_owned();
        if name.is_empty() || !object["metadata"].is_object() {
            return Err(FakeError::NoName);
        }
        let mut namespace = String::new();
        if resource.namespaced {
            namespace = match namespace_of(&object) {
                "" => "default".to_owned(),
                ns => ns.to_owned(),
            };
            object["metadata"]["namespace"] = Value::String(namespace.clone());
            state.ensure_namespace(&namespace);
        }
        if resource.group_resource() == crd_resource() {
            install_crd(&mut state, object)?;
            return Ok(state.store.revision());
        }
        let key = Key::new(resource.group_resource(), &namespace, &name);
        let old = state.store.get(&key).map(|s| s.object.clone());
        state.stamp(&mut object, old.as_ref(), resource.generation);
        Ok(state.put(key, object, BTreeMap::new()).revision)
    }

    /// Applies every object (a `kind: List` is expanded).
    pub fn apply_all(&self, objects: impl IntoIterator<Item = Value>) -> Result<(), FakeError> {
        for object in objects {
            match object.get("items") {
                Some(Value::Array(items))
                    if object["kind"].as_str().is_some_and(|k| k.ends_with("List")) =>
                {
                    self.apply_all(items.clone())?;
                }
                _ => {
                    self.apply(object)?;
                }
            }
        }
        Ok(())
    }

    /// Deletes an object at once (finalizers are not waited for; a
    /// namespace's objects go with it); returns whether it existed.
    pub fn delete(&self, resource: &ResourceId, namespace: &str, name: &str) -> bool {
        let key = Key::new(resource.group_resource(), namespace, name);
        self.lock().remove(&key).is_some()
    }

    /// Deletes the object with the `apiVersion`, `kind` and name of `object`.
    pub fn delete_object(&self, object: &Value) -> bool {
        self.resource_of(object)
            .is_some_and(|resource| self.delete(&resource, namespace_of(object), name_of(object)))
    }

    /// The stored object as served in `resource`'s version, if any.
    pub fn get(&self, resource: &ResourceId, namespace: &str, name: &str) -> Option<Value> {
        let key = Key::new(resource.group_resource(), namespace, name);
        let state = self.lock();
        let kind = state.registry.get(&key.resource)?.kind.clone();
        let stored = state.store.get(&key)?;
        Some(view(&stored.object, &resource.api_version, &kind))
    }

    /// Every object of `resource` (in `namespace`, if given), as served in
    /// its version.
    pub fn list(&self, resource: &ResourceId, namespace: Option<&str>) -> Vec<Value> {
        let group_resource = resource.group_resource();
        let state = self.lock();
        let Some(kind) = state.registry.get(&group_resource).map(|r| r.kind.clone()) else {
            return Vec::new();
        };
        state
            .store
            .list(&group_resource, namespace)
            .map(|(_, stored)| view(&stored.object, &resource.api_version, &kind))
            .collect()
    }

    /// The current resourceVersion (a global revision, like etcd's).
    pub fn revision(&self) -> u64 {
        self.lock().store.revision()
    }

    /// Makes lists of `resource` wait `delay` before answering (per page).
    pub fn set_list_delay(&self, resource: &ResourceId, delay: Duration) {
        self.lock()
            .faults
            .list_delay
            .insert(resource.clone(), delay);
    }

    /// Serves `resource`, or answers 404 for it as the apiserver does for
    /// a CRD that is not installed (plain `404 page not found`, and absent
    /// from discovery); open watches of it are dropped.
    pub fn set_served(&self, resource: &ResourceId, served: bool) {
        let mut state = self.lock();
        if served {
            state.faults.not_served.remove(resource);
        } else {
            state.faults.not_served.insert(resource.clone());
            drop_matching(&mut state, |id| id == resource);
        }
    }

    /// Answers every request with 503 while `false`, and drops every open
    /// watch when it becomes `false` (the client is cut off; objects changed
    /// meanwhile are seen only after it reconnects).
    pub fn set_available(&self, available: bool) {
        let mut state = self.lock();
        state.faults.unavailable = !available;
        if !available {
            drop_matching(&mut state, |_| true);
        }
    }

    /// Breaks every open watch connection mid-stream.
    pub fn drop_watches(&self) {
        drop_matching(&mut self.lock(), |_| true);
    }

    /// Forgets the history up to now: a watch resumed from an older
    /// resourceVersion is answered `410 Expired`.
    pub fn compact(&self) {
        self.lock().store.compact();
    }

    /// Sends an `ERROR` event with a `410 Expired` Status on every open
    /// watch and closes it, after compacting the history: the clients must
    /// relist.
    pub fn expire_watches(&self) {
        let mut state = self.lock();
        state.store.compact();
        let message = format!("too old resource version: 1 ({})", state.store.revision());
        for watch in state.watches.drain(..) {
            watch.expire(&message);
        }
    }

    /// Sends a BOOKMARK at the current revision on every open watch that
    /// asked for bookmarks; returns how many were sent.
    pub fn send_bookmarks(&self) -> usize {
        let mut state = self.lock();
        let revision = state.store.revision();
        let mut sent = 0;
        state.watches.retain(|watch| {
            if !watch.bookmarks {
                return true;
            }
            let ok = watch.send_bookmark(revision, None);
            sent += usize::from(ok);
            ok
        });
        sent
    }

    /// Ends every watch normally after at most `cap` (as if the client had
    /// asked for a shorter `timeoutSeconds`).
    pub fn set_watch_timeout_cap(&self, cap: Option<Duration>) {
        self.lock().faults.watch_timeout_cap = cap;
    }

    /// Open watches of `resource` (or of every resource).
    pub fn open_watches(&self, resource: Option<&ResourceId>) -> usize {
        let mut state = self.lock();
        state.watches.retain(|watch| !watch.tx.is_closed());
        state
            .watches
            .iter()
            .filter(|watch| resource.is_none_or(|r| watch_id(watch) == *r))
            .count()
    }

    /// Events created (`POST`), in order.
    pub fn events(&self) -> Vec<Value> {
        self.lock().posted_events.clone()
    }

    /// Event patches received (`PATCH`, the Recorder's series updates).
    pub fn event_patches(&self) -> Vec<Value> {
        self.lock().event_patches.clone()
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
    }
}

/// Stores a CRD object and serves its resource.
fn install_crd(state: &mut State, mut crd: Value) -> Result<(), FakeError> {
    let resource = crds::resource_of(&crd).map_err(FakeError::InvalidCrd)?;
    let builtin: HashSet<GroupResource> = state
        .registry
        .resources()
        .iter()
        .filter(|r| !r.custom)
        .map(|r| r.group_resource())
        .collect();
    if builtin.contains(&resource.group_resource()) {
        return Err(FakeError::InvalidCrd(format!(
            "{} is a built-in resource",
            resource.group_resource()
        )));
    }
    crd["status"] = crds::established_status(&crd, &state::now());
    let key = Key::new(crd_resource(), "", name_of(&crd));
    let old = state.store.get(&key).map(|s| s.object.clone());
    state.stamp(&mut crd, old.as_ref(), true);
    state.put(key, crd, BTreeMap::new());
    Ok(())
}

fn watch_id(watch: &watch::OpenWatch) -> ResourceId {
    ResourceId::new(&watch.api_version, &watch.resource.plural)
}

fn drop_matching(state: &mut State, mut matches: impl FnMut(&ResourceId) -> bool) {
    state.watches.retain(|watch| {
        if matches(&watch_id(watch)) {
            watch.abort();
            false
        } else {
            true
        }
    });
}

impl Drop for LocalApiServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        drop_matching(&mut self.lock(), |_| true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
