//! A fake Kubernetes API server speaking the list/watch wire protocol, for
//! testing the agent's Kubernetes source with kube-rs's own client and
//! watcher, without a cluster and without root.
//!
//! It serves, cluster-wide and per namespace:
//! * `GET` lists (`labelSelector`, `limit`/`continue` with a consistent
//!   snapshot per paginated list, `resourceVersion` ignored: always the
//!   latest state) of ServiceImports in `multicluster.x-k8s.io/v1alpha1`,
//!   `.../v1beta1` and `net.gke.io/v1`, `discovery.k8s.io/v1`
//!   EndpointSlices and core `v1` Endpoints;
//! * `GET ...?watch=true` as a chunked stream of JSON lines
//!   `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":{...}}`:
//!   resumes from `resourceVersion` by replaying the history after it (as
//!   the apiserver's watch cache does), answers a resourceVersion older than
//!   the compacted history with an `ERROR` event carrying a `410 Expired`
//!   Status, translates label-selector transitions into ADDED/DELETED,
//!   sends BOOKMARKs when `allowWatchBookmarks=true`, ends after
//!   `timeoutSeconds`;
//! * `POST`/`PATCH` of Events (`events.k8s.io/v1` and core `v1`), recorded
//!   for assertions.
//!
//! Tests change objects at any time ([`FakeApiServer::apply`],
//! [`FakeApiServer::delete`]) and inject faults: slow lists, a resource not
//! served (404, like a CRD that is not installed), expired watches (410),
//! dropped connections, and an unavailable server (503) while objects
//! change behind the client's back.
//!
//! The server runs on a thread of its own with its own runtime, so it works
//! the same from synchronous and asynchronous tests; dropping it stops it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    convert::Infallible,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    thread,
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

type Body = BoxBody<Bytes, io::Error>;

/// A resource the server knows: `apiVersion` and plural name.
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

    /// The resource of an object, from its `apiVersion` and `kind`.
    pub fn of(object: &Value) -> Option<Self> {
        let api_version = object.get("apiVersion")?.as_str()?;
        let kind = object.get("kind")?.as_str()?;
        KINDS
            .iter()
            .find(|known| known.api_version == api_version && known.kind == kind)
            .map(|known| Self::new(known.api_version, known.plural))
    }

    fn kind(&self) -> Option<&'static KnownKind> {
        KINDS
            .iter()
            .find(|known| known.api_version == self.api_version && known.plural == self.plural)
    }
}

impl std::fmt::Display for ResourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.api_version, self.plural)
    }
}

pub struct KnownKind {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    /// Custom resources carry `apiVersion`/`kind` in list items; built-in
    /// types do not (the real apiserver omits them).
    pub custom: bool,
}

/// Every kind served.
pub const KINDS: &[KnownKind] = &[
    KnownKind {
        api_version: "multicluster.x-k8s.io/v1alpha1",
        kind: "ServiceImport",
        plural: "serviceimports",
        custom: true,
    },
    KnownKind {
        api_version: "multicluster.x-k8s.io/v1beta1",
        kind: "ServiceImport",
        plural: "serviceimports",
        custom: true,
    },
    KnownKind {
        api_version: "net.gke.io/v1",
        kind: "ServiceImport",
        plural: "serviceimports",
        custom: true,
    },
    KnownKind {
        api_version: "discovery.k8s.io/v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        custom: false,
    },
    KnownKind {
        api_version: "v1",
        kind: "Endpoints",
        plural: "endpoints",
        custom: false,
    },
    KnownKind {
        api_version: "events.k8s.io/v1",
        kind: "Event",
        plural: "events",
        custom: false,
    },
    KnownKind {
        api_version: "v1",
        kind: "Event",
        plural: "events",
        custom: false,
    },
];

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Added,
    Modified,
    Deleted,
}

struct HistoryEntry {
    revision: u64,
    resource: ResourceId,
    change: Change,
    old: Option<Value>,
    new: Value,
}

enum WatchMsg {
    Line(Bytes),
    /// End the response normally.
    End,
    /// Break the connection mid-stream.
    Abort,
}

struct OpenWatch {
    resource: ResourceId,
    namespace: Option<String>,
    selector: Selector,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

type ObjectKey = (ResourceId, String, String);

#[derive(Default)]
struct State {
    revision: u64,
    objects: BTreeMap<ObjectKey, Value>,
    history: Vec<HistoryEntry>,
    /// Watches from a resourceVersion below this are answered 410.
    compacted: u64,
    not_served: HashSet<ResourceId>,
    list_delay: HashMap<ResourceId, Duration>,
    unavailable: bool,
    watches: Vec<OpenWatch>,
    posted_events: Vec<Value>,
    event_patches: Vec<Value>,
    requests: Vec<RequestRecord>,
    /// Remaining pages of paginated lists, by continue token.
    pages: HashMap<String, (u64, Vec<Value>)>,
    next_page: u64,
    watch_timeout_cap: Option<Duration>,
}

impl State {
    fn bump(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn record(&mut self, entry: HistoryEntry) {
        let mut keep = Vec::with_capacity(self.watches.len());
        for watch in self.watches.drain(..) {
            let delivered = match watch_line(&watch, &entry) {
                Some(line) => watch.tx.send(WatchMsg::Line(line)).is_ok(),
                None => !watch.tx.is_closed(),
            };
            if delivered {
                keep.push(watch);
            }
        }
        self.watches = keep;
        self.history.push(entry);
    }
}

/// The event a watch sees for a change, honouring its namespace and label
/// selector: an object entering the selection is ADDED, one leaving it is
/// DELETED, as the apiserver does.
fn watch_line(watch: &OpenWatch, entry: &HistoryEntry) -> Option<Bytes> {
    if watch.resource != entry.resource {
        return None;
    }
    let selected = |object: &Value| {
        watch
            .namespace
            .as_deref()
            .is_none_or(|ns| namespace_of(object) == ns)
            && watch.selector.matches(object)
    };
    let was = entry.old.as_ref().is_some_and(selected);
    let is = entry.change != Change::Deleted && selected(&entry.new);
    let kind = match (was, is) {
        (false, true) => "ADDED",
        (true, true) => "MODIFIED",
        (true, false) => "DELETED",
        (false, false) => return None,
    };
    Some(event_line(kind, &entry.new))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object}))
        .expect("JSON values serialise");
    line.push(b'\n');
    Bytes::from(line)
}

fn namespace_of(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().unwrap_or_default()
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// A running fake API server; stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl FakeApiServer {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub fn start() -> io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts on `addr` (e.g. an address inside a test topology).
    pub fn start_on(addr: SocketAddr) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (shutdown, stop) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread_state = state.clone();
        let thread = thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                runtime.block_on(serve(listener, thread_state, stop));
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
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user:\n    token: fake-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n",
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
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates or replaces an object (ADDED or MODIFIED for watchers).
    /// Sets `metadata.resourceVersion` and, for new objects, `uid` and
    /// `creationTimestamp`. Returns the new resourceVersion.
    pub fn apply(&self, mut object: Value) -> Result<u64, FakeError> {
        let resource = ResourceId::of(&object).ok_or_else(|| {
            FakeError::UnknownKind(object.to_string().chars().take(120).collect())
        })?;
        let name = name_of(&object).to_owned();
        if name.is_empty() {
            return Err(FakeError::NoName);
        }
        let namespace = namespace_of(&object).to_owned();
        let mut state = self.lock();
        let revision = state.bump();
        let key = (resource.clone(), namespace, name);
        let old = state.objects.get(&key).cloned();
        let metadata = object["metadata"]
            .as_object_mut()
            .ok_or(FakeError::NoName)?;
        metadata.insert("resourceVersion".into(), json!(revision.to_string()));
        match &old {
            Some(old) => {
                metadata.insert("uid".into(), old["metadata"]["uid"].clone());
                metadata.insert(
                    "creationTimestamp".into(),
                    old["metadata"]["creationTimestamp"].clone(),
                );
            }
            None => {
                metadata
                    .entry("uid")
                    .or_insert_with(|| json!(format!("00000000-0000-4000-8000-{revision:012}")));
                metadata
                    .entry("creationTimestamp")
                    .or_insert_with(|| json!("2026-01-01T00:00:00Z"));
            }
        }
        state.objects.insert(key, object.clone());
        let change = if old.is_some() {
            Change::Modified
        } else {
            Change::Added
        };
        state.record(HistoryEntry {
            revision,
            resource,
            change,
            old,
            new: object,
        });
        Ok(revision)
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

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, resource: &ResourceId, namespace: &str, name: &str) -> bool {
        let mut state = self.lock();
        let key = (resource.clone(), namespace.to_owned(), name.to_owned());
        let Some(old) = state.objects.remove(&key) else {
            return false;
        };
        let revision = state.bump();
        let mut new = old.clone();
        new["metadata"]["resourceVersion"] = json!(revision.to_string());
        state.record(HistoryEntry {
            revision,
            resource: resource.clone(),
            change: Change::Deleted,
            old: Some(old),
            new,
        });
        true
    }

    /// Deletes the object with the `apiVersion`, `kind` and name of `object`.
    pub fn delete_object(&self, object: &Value) -> bool {
        ResourceId::of(object)
            .is_some_and(|resource| self.delete(&resource, namespace_of(object), name_of(object)))
    }

    /// The stored object, if any.
    pub fn get(&self, resource: &ResourceId, namespace: &str, name: &str) -> Option<Value> {
        let key = (resource.clone(), namespace.to_owned(), name.to_owned());
        self.lock().objects.get(&key).cloned()
    }

    /// The current resourceVersion (a global revision, like etcd's).
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// Makes lists of `resource` wait `delay` before answering (per page).
    pub fn set_list_delay(&self, resource: &ResourceId, delay: Duration) {
        self.lock().list_delay.insert(resource.clone(), delay);
    }

    /// Serves `resource`, or answers 404 for it as the apiserver does for
    /// a CRD that is not installed (plain `404 page not found`); open
    /// watches of it are dropped.
    pub fn set_served(&self, resource: &ResourceId, served: bool) {
        let mut state = self.lock();
        if served {
            state.not_served.remove(resource);
        } else {
            state.not_served.insert(resource.clone());
            drop_matching(&mut state, |watch| watch.resource == *resource);
        }
    }

    /// Answers every request with 503 while `false`, and drops every open
    /// watch when it becomes `false` (the client is cut off; objects changed
    /// meanwhile are seen only after it reconnects).
    pub fn set_available(&self, available: bool) {
        let mut state = self.lock();
        state.unavailable = !available;
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
        let mut state = self.lock();
        state.compacted = state.revision;
        let revision = state.revision;
        state.history.retain(|entry| entry.revision > revision);
    }

    /// Sends an `ERROR` event with a `410 Expired` Status on every open
    /// watch and closes it, after compacting the history: the clients must
    /// relist.
    pub fn expire_watches(&self) {
        self.compact();
        let mut state = self.lock();
        let revision = state.revision;
        for watch in state.watches.drain(..) {
            let line = event_line(
                "ERROR",
                &status(
                    410,
                    "Expired",
                    &format!("too old resource version: 1 ({revision})"),
                ),
            );
            let _ = watch.tx.send(WatchMsg::Line(line));
            let _ = watch.tx.send(WatchMsg::End);
        }
    }

    /// Sends a BOOKMARK at the current revision on every open watch that
    /// asked for bookmarks; returns how many were sent.
    pub fn send_bookmarks(&self) -> usize {
        let mut state = self.lock();
        let revision = state.revision.to_string();
        let mut sent = 0;
        state.watches.retain(|watch| {
            if !watch.bookmarks {
                return true;
            }
            let (api_version, kind) = watch
                .resource
                .kind()
                .map_or(("v1", "Unknown"), |known| (known.api_version, known.kind));
            let object = json!({
                "apiVersion": api_version,
                "kind": kind,
                "metadata": {"resourceVersion": revision},
            });
            let ok = watch
                .tx
                .send(WatchMsg::Line(event_line("BOOKMARK", &object)))
                .is_ok();
            sent += usize::from(ok);
            ok
        });
        sent
    }

    /// Ends every watch normally after at most `cap` (as if the client had
    /// asked for a shorter `timeoutSeconds`).
    pub fn set_watch_timeout_cap(&self, cap: Option<Duration>) {
        self.lock().watch_timeout_cap = cap;
    }

    /// Open watches of `resource` (or of every resource).
    pub fn open_watches(&self, resource: Option<&ResourceId>) -> usize {
        let mut state = self.lock();
        state.watches.retain(|watch| !watch.tx.is_closed());
        state
            .watches
            .iter()
            .filter(|watch| resource.is_none_or(|r| watch.resource == *r))
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

fn drop_matching(state: &mut State, mut matches: impl FnMut(&OpenWatch) -> bool) {
    state.watches.retain(|watch| {
        if matches(watch) {
            let _ = watch.tx.send(WatchMsg::Abort);
            false
        } else {
            true
        }
    });
}

impl Drop for FakeApiServer {
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

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<Mutex<State>>,
    mut stop: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stop => return,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, request).await) }
            });
            // Connection errors (clients going away, aborted watches) are
            // part of the tests.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(
            Full::new(body.into())
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("static response parts are valid")
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    full(status, "application/json", value.to_string())
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status(code.as_u16(), reason, message))
}

/// A parsed API path.
struct ApiPath {
    resource: ResourceId,
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<ApiPath> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ((*version).to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        [plural] => (None, *plural, None),
        ["namespaces", namespace, plural] => (Some(*namespace), *plural, None),
        ["namespaces", namespace, plural, name] => (Some(*namespace), *plural, Some(*name)),
        _ => return None,
    };
    let resource = ResourceId::new(&api_version, plural);
    resource.kind()?;
    Some(ApiPath {
        resource,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    })
}

async fn handle(state: &Arc<Mutex<State>>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query: BTreeMap<String, String> = request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let response = route(state, &method, &path, &query, request).await;
    let mut guard = state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    guard.requests.push(RequestRecord {
        method: method.to_string(),
        path,
        query,
        status: response.status().as_u16(),
    });
    response
}

async fn route(
    state: &Arc<Mutex<State>>,
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    request: Request<Incoming>,
) -> Response<Body> {
    let lock = || {
        state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    {
        let state = lock();
        if state.unavailable {
            return status_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            );
        }
    }
    let Some(api) = parse_path(path) else {
        return full(StatusCode::NOT_FOUND, "text/plain", "404 page not found");
    };
    if lock().not_served.contains(&api.resource) {
        return full(StatusCode::NOT_FOUND, "text/plain", "404 page not found");
    }
    let selector = match Selector::parse(query.get("labelSelector").map_or("", String::as_str)) {
        Ok(selector) => selector,
        Err(message) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &message),
    };
    let is_event = api.resource.plural == "events";
    match (method, &api.name) {
        (&Method::GET, None) if query.get("watch").is_some_and(|v| v == "true" || v == "1") => {
            watch(state, &api, selector, query)
        }
        (&Method::GET, None) => list(state, &api, &selector, query).await,
        (&Method::GET, Some(name)) => {
            let key = (
                api.resource.clone(),
                api.namespace.clone().unwrap_or_default(),
                name.clone(),
            );
            match lock().objects.get(&key) {
                Some(object) => json_response(StatusCode::OK, object),
                None => status_response(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{name} not found"),
                ),
            }
        }
        (&Method::POST, None) if is_event => {
            let Some(mut event) = read_json(request).await else {
                return status_response(StatusCode::BAD_REQUEST, "BadRequest", "invalid JSON");
            };
            let mut state = lock();
            let revision = state.bump();
            if let Some(metadata) = event["metadata"].as_object_mut() {
                metadata.insert("resourceVersion".into(), json!(revision.to_string()));
                metadata.insert("uid".into(), json!(format!("event-{revision}")));
            }
            let key = (
                api.resource.clone(),
                api.namespace.clone().unwrap_or_default(),
                name_of(&event).to_owned(),
            );
            state.objects.insert(key, event.clone());
            state.posted_events.push(event.clone());
            json_response(StatusCode::CREATED, &event)
        }
        (&Method::PATCH, Some(name)) if is_event => {
            let Some(patch) = read_json(request).await else {
                return status_response(StatusCode::BAD_REQUEST, "BadRequest", "invalid JSON");
            };
            let key = (
                api.resource.clone(),
                api.namespace.clone().unwrap_or_default(),
                name.clone(),
            );
            let mut state = lock();
            state.event_patches.push(patch.clone());
            let Some(stored) = state.objects.get_mut(&key) else {
                return status_response(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{name} not found"),
                );
            };
            merge_patch(stored, &patch);
            let stored = stored.clone();
            json_response(StatusCode::OK, &stored)
        }
        _ => status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{method} is not supported on {path}"),
        ),
    }
}

async fn read_json(request: Request<Incoming>) -> Option<Value> {
    let body = request.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

async fn list(
    state: &Arc<Mutex<State>>,
    api: &ApiPath,
    selector: &Selector,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let delay = {
        let state = state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.list_delay.get(&api.resource).copied()
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut state = state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let (revision, mut items) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match state.pages.remove(token) {
            Some(page) => page,
            None => {
                return status_response(
                    StatusCode::GONE,
                    "Expired",
                    "the provided continue parameter is too old",
                );
            }
        },
        None => {
            let custom = api.resource.kind().is_some_and(|k| k.custom);
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|((resource, namespace, _), object)| {
                    *resource == api.resource
                        && api.namespace.as_ref().is_none_or(|ns| ns == namespace)
                        && selector.matches(object)
                })
                .map(|(_, object)| {
                    let mut item = object.clone();
                    if !custom && let Value::Object(map) = &mut item {
                        map.remove("apiVersion");
                        map.remove("kind");
                    }
                    item
                })
                .collect();
            (state.revision, items)
        }
    };
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(limit) = limit
        && items.len() > limit
    {
        let rest = items.split_off(limit);
        state.next_page += 1;
        let token = format!("page-{}", state.next_page);
        metadata["remainingItemCount"] = json!(rest.len());
        metadata["continue"] = json!(token);
        state.pages.insert(token, (revision, rest));
    }
    let kind = api.resource.kind().map_or("Unknown", |k| k.kind);
    json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": api.resource.api_version,
            "kind": format!("{kind}List"),
            "metadata": metadata,
            "items": items,
        }),
    )
}

fn watch(
    state: &Arc<Mutex<State>>,
    api: &ApiPath,
    selector: Selector,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let (tx, rx) = mpsc::unbounded_channel();
    let timeout = {
        let mut state = state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let from = query
            .get("resourceVersion")
            .and_then(|rv| rv.parse::<u64>().ok())
            .filter(|rv| *rv > 0);
        let watch = OpenWatch {
            resource: api.resource.clone(),
            namespace: api.namespace.clone(),
            selector,
            bookmarks: query
                .get("allowWatchBookmarks")
                .is_some_and(|v| v == "true" || v == "1"),
            tx,
        };
        match from {
            Some(from) if from < state.compacted => {
                let line = event_line(
                    "ERROR",
                    &status(
                        410,
                        "Expired",
                        &format!("too old resource version: {from} ({})", state.compacted),
                    ),
                );
                let _ = watch.tx.send(WatchMsg::Line(line));
                let _ = watch.tx.send(WatchMsg::End);
            }
            from => {
                // Replay what the client missed, then follow live changes:
                // both under the lock, so nothing falls in between.
                let from = from.unwrap_or(state.revision);
                for entry in state.history.iter().filter(|e| e.revision > from) {
                    if let Some(line) = watch_line(&watch, entry) {
                        let _ = watch.tx.send(WatchMsg::Line(line));
                    }
                }
                state.watches.push(watch);
            }
        }
        let requested = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_secs);
        match (requested, state.watch_timeout_cap) {
            (Some(requested), Some(cap)) => Some(requested.min(cap)),
            (requested, cap) => requested.or(cap),
        }
    };
    let deadline = timeout.map(|timeout| tokio::time::Instant::now() + timeout);
    let stream = futures::stream::unfold((rx, deadline), |(mut rx, deadline)| async move {
        let message = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, rx.recv()).await.ok()?,
            None => rx.recv().await,
        };
        match message? {
            WatchMsg::Line(line) => Some((Ok(Frame::data(line)), (rx, deadline))),
            WatchMsg::End => None,
            WatchMsg::Abort => Some((
                Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "watch dropped by the test",
                )),
                (rx, deadline),
            )),
        }
    })
    // After an abort the error ends the response; never poll further.
    .scan(false, |failed, item| {
        let stop = *failed;
        *failed |= item.is_err();
        futures::future::ready((!stop).then_some(item))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("static response parts are valid")
}

/// A label selector: the equality- and set-based requirements of the
/// Kubernetes syntax (`k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
/// `k notin (a,b)`), all of which must match.
#[derive(Clone, Debug, Default)]
pub struct Selector(Vec<Requirement>);

#[derive(Clone, Debug)]
enum Requirement {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        let mut terms = Vec::new();
        for (index, c) in text.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    terms.push(&text[start..index]);
                    start = index + 1;
                }
                _ => {}
            }
        }
        terms.push(&text[start..]);
        for term in terms.into_iter().map(str::trim).filter(|t| !t.is_empty()) {
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| format!("bad set in {term:?}"))?;
                Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
            };
            let requirement = if let Some(key) = term.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_owned())
            } else if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotIn(key.trim().to_owned(), vec![value.trim().to_owned()])
            } else if let Some((key, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                Requirement::In(key.trim().to_owned(), vec![value.trim().to_owned()])
            } else if let Some((key, rest)) = term.split_once(" notin ") {
                Requirement::NotIn(key.trim().to_owned(), set(rest)?)
            } else if let Some((key, rest)) = term.split_once(" in ") {
                Requirement::In(key.trim().to_owned(), set(rest)?)
            } else if term.contains(' ') {
                return Err(format!("unsupported selector term {term:?}"));
            } else {
                Requirement::Exists(term.to_owned())
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = object["metadata"]["labels"].as_object();
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.0.iter().all(|requirement| match requirement {
            Requirement::Exists(key) => label(key).is_some(),
            Requirement::NotExists(key) => label(key).is_none(),
            Requirement::In(key, values) => {
                label(key).is_some_and(|v| values.iter().any(|x| x == v))
            }
            // Kubernetes: `!=`/notin also match objects without the label.
            Requirement::NotIn(key, values) => {
                label(key).is_none_or(|v| values.iter().all(|x| x != v))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let object = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        for (selector, expected) in [
            ("", true),
            ("a", true),
            ("!a", false),
            ("c,!d", false),
            ("a,!c", true),
            ("a=1", true),
            ("a==2", false),
            ("a!=2", true),
            ("c!=2", true),
            ("b in (1, 2)", true),
            ("b notin (2)", false),
            ("a=1,b in (3,2)", true),
        ] {
            assert_eq!(
                Selector::parse(selector).unwrap().matches(&object),
                expected,
                "{selector}"
            );
        }
    }

    #[test]
    fn paths() {
        let api = parse_path("/apis/discovery.k8s.io/v1/endpointslices").unwrap();
        assert_eq!(
            api.resource,
            ResourceId::new("discovery.k8s.io/v1", "endpointslices")
        );
        assert!(api.namespace.is_none());
        let api = parse_path("/api/v1/namespaces/demo/endpoints/x").unwrap();
        assert_eq!(api.namespace.as_deref(), Some("demo"));
        assert_eq!(api.name.as_deref(), Some("x"));
        assert!(parse_path("/apis/unknown.io/v1/things").is_none());
    }

    #[test]
    fn merge_patches() {
        let mut target = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut target, &json!({"b": {"c": null, "e": 4}, "f": 5}));
        assert_eq!(target, json!({"a": 1, "b": {"d": 3, "e": 4}, "f": 5}));
    }
}
