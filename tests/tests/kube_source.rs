//! The agent's Kubernetes source against the fake API server: kube-rs's own
//! client and watcher over real HTTP, with real object JSON (fixtures of
//! all three ServiceImport flavours, multi-slice and multi-cluster
//! EndpointSlices, an `Endpoints` object of a GKE derived service).
//!
//! The reference for "correct" is the file source: for the same objects the
//! Kubernetes source must publish the same snapshot and the same rejections,
//! and the reconciler must program the same maps. Events are posted by the
//! events module from what the source publishes, as the agent's run loop
//! does. No root needed.

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use mcs_agent::{
    desired,
    events::{Events, Publisher, event_reason},
    model::{Flavour, SliceOwner, Snapshot},
    reconcile::{Reconciler, memory::MemoryMaps},
    sources::{
        SourceUpdate,
        file::FileSource,
        kube::{KubeSource, KubeSourceError, KubeSourceOptions},
    },
};
use mcs_tests::fake_apiserver::{FakeApiServer, ResourceId};
use serde_json::{Value, json};
use tokio::{sync::watch, task::JoinHandle};

const TIMEOUT: Duration = Duration::from_secs(20);

fn fixture(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/kube")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match value.get("items") {
        Some(Value::Array(items)) => items.clone(),
        _ => vec![value],
    }
}

/// Every MCS fixture (what the file source is given too).
fn mcs_objects() -> Vec<Value> {
    [
        "serviceimports-v1alpha1.json",
        "serviceimports-v1beta1.json",
        "serviceimports-gke.json",
        "endpointslices-mcs.json",
        "endpointslices-derived.json",
        "endpoints-derived.json",
    ]
    .iter()
    .flat_map(|name| fixture(name))
    .collect()
}

fn resource(api_version: &str, plural: &str) -> ResourceId {
    ResourceId::new(api_version, plural)
}

fn slices() -> ResourceId {
    resource("discovery.k8s.io/v1", "endpointslices")
}

fn gke_imports() -> ResourceId {
    resource("net.gke.io/v1", "serviceimports")
}

/// A server holding the MCS fixtures and objects of ordinary Services
/// (which the source must ignore).
fn server_with_fixtures() -> FakeApiServer {
    let server = FakeApiServer::start().expect("start the fake API server");
    server.apply_all(mcs_objects()).expect("fixtures apply");
    server
        .apply_all(fixture("unrelated.json"))
        .expect("fixtures apply");
    server
}

fn options() -> KubeSourceOptions {
    if std::env::var_os("MCS_TEST_LOG").is_some() {
        mcs_agent::telemetry::init(mcs_agent::telemetry::LogFormat::Text, "debug");
    }
    KubeSourceOptions {
        debounce: Duration::from_millis(50),
        // Small pages, so lists are paginated (limit/continue).
        page_size: 2,
    }
}

struct Running {
    updates: watch::Receiver<Option<SourceUpdate>>,
    task: JoinHandle<Result<(), KubeSourceError>>,
    /// Posts Events for every update (see [`start_with_events`]).
    reporter: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(reporter) = &self.reporter {
            reporter.abort();
        }
    }
}

/// Starts the source with a kubeconfig file pointing at `server`.
async fn start(server: &FakeApiServer) -> Running {
    let kubeconfig = server.kubeconfig_file().expect("write kubeconfig");
    let source = KubeSource::connect(Some(&kubeconfig), options())
        .await
        .expect("connect to the fake API server");
    start_source(source)
}

fn start_source(source: KubeSource) -> Running {
    let (tx, updates) = watch::channel(None);
    Running {
        updates,
        task: tokio::spawn(source.run(tx)),
        reporter: None,
    }
}

/// Starts the source and reports as the agent's run loop does: for every
/// update, its rejections and those the desired state derives under
/// `policy`, through the events module with the source's client and the
/// references it published.
async fn start_with_events(server: &FakeApiServer, policy: desired::Policy) -> Running {
    let kubeconfig = server.kubeconfig_file().expect("write kubeconfig");
    let source = KubeSource::connect(Some(&kubeconfig), options())
        .await
        .expect("connect to the fake API server");
    let mut events = Events::start(source.client().clone(), publisher(0));
    let mut running = start_source(source);
    let mut updates = running.updates.clone();
    running.reporter = Some(tokio::spawn(async move {
        loop {
            let update = updates.borrow_and_update().clone();
            if let Some(update) = update {
                let (_, derived) = desired::compute_with(&update.snapshot, &policy);
                events.report(update.rejections.iter().chain(&derived), &update.references);
            }
            if updates.changed().await.is_err() {
                return;
            }
        }
    }));
    running
}

/// The agent of pod `mcs-agent-N` on node `node-N`.
fn publisher(n: usize) -> Publisher {
    Publisher {
        pod: Some(format!("mcs-agent-{n}")),
        node: Some(format!("node-{n}")),
    }
}

/// What the file source publishes for `objects` (written as YAML), as the
/// API server serves them: one CRD stores both mcs-api versions, so an
/// object written in v1alpha1 is listed in v1beta1 too, and the source
/// takes it from v1beta1.
fn file_update(objects: &[Value]) -> SourceUpdate {
    let dir = tempfile::tempdir().expect("temp dir");
    let yaml: Vec<String> = objects
        .iter()
        .map(|object| {
            let mut object = object.clone();
            if object["apiVersion"] == "multicluster.x-k8s.io/v1alpha1" {
                object["apiVersion"] = json!("multicluster.x-k8s.io/v1beta1");
            }
            serde_yaml_ng::to_string(&object).expect("YAML")
        })
        .collect();
    std::fs::write(dir.path().join("objects.yaml"), yaml.join("---\n")).expect("write YAML");
    let mut source = FileSource::new(dir.path().to_path_buf());
    assert!(source.reload().expect("readable").is_empty());
    source.update()
}

/// Snapshot and rejections in a canonical order (sources list objects in
/// different orders).
fn canonical(update: &SourceUpdate) -> (Snapshot, Vec<String>) {
    let mut rejections: Vec<String> = update.rejections.iter().map(ToString::to_string).collect();
    rejections.sort();
    (Snapshot::clone(&update.snapshot), rejections)
}

/// Waits until the source publishes what the file source publishes for
/// `objects`.
async fn wait_matching(running: &mut Running, objects: &[Value], what: &str) -> SourceUpdate {
    let expected = canonical(&file_update(objects));
    let mut updates = running.updates.clone();
    let wait = updates.wait_for(|update| update.as_ref().is_some_and(|u| canonical(u) == expected));
    if tokio::time::timeout(TIMEOUT, wait).await.is_err() {
        let actual = running.updates.borrow().as_ref().map(canonical);
        panic!(
            "timed out waiting for {what}: {}",
            difference(&expected, actual.as_ref())
        );
    }
    let update = running
        .updates
        .borrow_and_update()
        .clone()
        .expect("waited for it");
    // Nothing else follows once the state is reached.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        canonical(running.updates.borrow().as_ref().unwrap()),
        expected,
        "{what}: settled"
    );
    update
}

/// What differs between two canonical updates, for failure messages.
fn difference(
    expected: &(Snapshot, Vec<String>),
    actual: Option<&(Snapshot, Vec<String>)>,
) -> String {
    let Some(actual) = actual else {
        return "nothing was published".into();
    };
    let mut lines = Vec::new();
    let keys: BTreeSet<_> = expected
        .0
        .imports
        .keys()
        .chain(actual.0.imports.keys())
        .collect();
    for key in keys {
        let (e, a) = (expected.0.imports.get(key), actual.0.imports.get(key));
        if e != a {
            lines.push(format!("import {key}:\n  expected {e:?}\n  actual   {a:?}"));
        }
    }
    let keys: BTreeSet<_> = expected
        .0
        .slices()
        .keys()
        .chain(actual.0.slices().keys())
        .collect();
    for key in keys {
        let (e, a) = (expected.0.slices().get(key), actual.0.slices().get(key));
        if e != a {
            lines.push(format!("slice {key}:\n  expected {e:?}\n  actual   {a:?}"));
        }
    }
    for rejection in &expected.1 {
        if !actual.1.contains(rejection) {
            lines.push(format!("missing rejection: {rejection}"));
        }
    }
    for rejection in &actual.1 {
        if !expected.1.contains(rejection) {
            lines.push(format!("unexpected rejection: {rejection}"));
        }
    }
    lines.join("\n")
}

fn named<'a>(objects: &'a mut [Value], kind: &str, name: &str) -> &'a mut Value {
    objects
        .iter_mut()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in fixtures"))
}

fn remove(objects: &mut Vec<Value>, kind: &str, name: &str) -> Value {
    let index = objects
        .iter()
        .position(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in fixtures"));
    objects.remove(index)
}

/// Records every update the source publishes.
fn record_updates(running: &Running) -> (Arc<Mutex<Vec<SourceUpdate>>>, JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut updates = running.updates.clone();
    updates.mark_unchanged();
    let sink = seen.clone();
    let task = tokio::spawn(async move {
        while updates.changed().await.is_ok() {
            if let Some(update) = updates.borrow_and_update().clone() {
                sink.lock().unwrap().push(update);
            }
        }
    });
    (seen, task)
}

/// Waits until the server has seen `count` list requests (not watches) of
/// `resource` in total.
async fn wait_for_lists(server: &FakeApiServer, resource: &ResourceId, count: usize) {
    let group = if resource.api_version.contains('/') {
        "apis"
    } else {
        "api"
    };
    let path = format!("/{group}/{}/{}", resource.api_version, resource.plural);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let lists = server
            .requests()
            .iter()
            .filter(|r| {
                r.path == path
                    && !r.is_watch()
                    && r.status == 200
                    && !r.query.contains_key("continue")
            })
            .count();
        if lists >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {count} lists of {resource}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_watches(server: &FakeApiServer, count: usize) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while server.open_watches(None) < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {count} open watches"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Six watchers: three ServiceImport versions, two slice selectors, Endpoints.
const WATCHERS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_list_equals_the_file_source() {
    let server = server_with_fixtures();
    let mut running = start(&server).await;
    let objects = mcs_objects();
    let update = wait_matching(&mut running, &objects, "the initial snapshot").await;

    // The fixtures exercise every flavour, merging and validation (the
    // v1alpha1 fixture is served as v1beta1 too, and taken from there).
    let flavours: BTreeSet<String> = update
        .snapshot
        .imports
        .values()
        .map(|import| format!("{:?}", import.flavour))
        .collect();
    assert_eq!(
        flavours,
        BTreeSet::from(["Gke".to_owned(), "McsV1beta1".to_owned()])
    );
    assert_eq!(update.snapshot.imports.len(), 6);
    let reasons: BTreeSet<&str> = update.rejections.iter().map(|r| r.reason()).collect();
    assert_eq!(
        reasons,
        BTreeSet::from([
            "address_type_mismatch",
            "duplicate_port_name",
            "forbidden_ip",
            "unknown_protocol"
        ])
    );
    // Objects of ordinary Services were watched but neither converted nor
    // rejected.
    assert!(
        update
            .snapshot
            .slices()
            .keys()
            .all(|key| key.namespace != "default")
    );

    // Watches and lists used the selectors and pagination.
    let requests = server.requests();
    let selectors: BTreeSet<&str> = requests
        .iter()
        .filter(|r| r.path == "/apis/discovery.k8s.io/v1/endpointslices")
        .filter_map(|r| r.query.get("labelSelector").map(String::as_str))
        .collect();
    assert_eq!(
        selectors,
        BTreeSet::from([
            "multicluster.kubernetes.io/service-name",
            "kubernetes.io/service-name,!multicluster.kubernetes.io/service-name"
        ])
    );
    assert!(
        requests.iter().any(|r| r.query.contains_key("continue")),
        "lists were paginated"
    );
    assert!(
        requests.iter().filter(|r| r.is_watch()).all(|r| r
            .query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true")),
        "watches ask for bookmarks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_propagate() {
    let server = server_with_fixtures();
    let mut running = start(&server).await;
    let mut objects = mcs_objects();
    wait_matching(&mut running, &objects, "the initial snapshot").await;

    // ADDED: a second slice of `db`, from another cluster.
    let added = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "db-cluster-a-1", "namespace": "demo", "labels": {
            "multicluster.kubernetes.io/service-name": "db",
            "multicluster.kubernetes.io/source-cluster": "cluster-a"}},
        "addressType": "IPv4",
        "ports": [{"name": "postgres", "protocol": "TCP", "port": 5432}],
        "endpoints": [{"addresses": ["10.101.4.10"], "hostname": "db-1"}],
    });
    server.apply(added.clone()).unwrap();
    objects.push(added);
    wait_matching(&mut running, &objects, "an added slice").await;

    // MODIFIED: an endpoint becomes ready, an import gains a port.
    let slice = named(&mut objects, "EndpointSlice", "web-cluster-a-1");
    slice["endpoints"][1]["conditions"] =
        json!({"ready": true, "serving": true, "terminating": false});
    server.apply(slice.clone()).unwrap();
    let import = named(&mut objects, "ServiceImport", "api");
    import["spec"]["ports"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "admin", "protocol": "TCP", "port": 9001}));
    server.apply(import.clone()).unwrap();
    wait_matching(&mut running, &objects, "modified objects").await;

    // DELETED: a slice, the Endpoints of a derived service, an import.
    for (kind, name) in [
        ("EndpointSlice", "web-cluster-a-2"),
        ("Endpoints", "gke-mcs-cart-9q8w"),
        ("ServiceImport", "db"),
    ] {
        let gone = remove(&mut objects, kind, name);
        assert!(server.delete_object(&gone), "{kind} {name} existed");
    }
    wait_matching(&mut running, &objects, "deleted objects").await;

    // A label change moves a slice out of the selection: the server sends
    // DELETED for it.
    let slice = named(&mut objects, "EndpointSlice", "web-cluster-b-1");
    slice["metadata"]["labels"] = json!({"app": "not-mcs"});
    server.apply(slice.clone()).unwrap();
    remove(&mut objects, "EndpointSlice", "web-cluster-b-1");
    wait_matching(
        &mut running,
        &objects,
        "a slice whose labels no longer match",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_are_harmless() {
    let server = server_with_fixtures();
    let mut running = start(&server).await;
    let mut objects = mcs_objects();
    wait_matching(&mut running, &objects, "the initial snapshot").await;
    wait_for_watches(&server, WATCHERS).await;

    // Unrelated writes move the revision on; bookmarks carry it.
    server
        .apply(json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "other", "namespace": "default"}}))
        .unwrap();
    let revision = server.revision();
    for _ in 0..3 {
        assert_eq!(server.send_bookmarks(), WATCHERS);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !running.updates.has_changed().unwrap(),
        "bookmarks published nothing"
    );

    // Watches resume from the bookmarked revision after a dropped
    // connection, and changes still flow.
    let before = server.requests().len();
    server.drop_watches();
    wait_for_watches(&server, WATCHERS).await;
    let resumed: Vec<_> = server.requests()[before..]
        .iter()
        .filter(|r| r.is_watch())
        .cloned()
        .collect();
    assert!(!resumed.is_empty());
    for request in &resumed {
        assert_eq!(
            request.query.get("resourceVersion"),
            Some(&revision.to_string()),
            "{request:?}"
        );
    }
    assert!(
        server.requests()[before..]
            .iter()
            .all(|r| r.is_watch() || r.path.contains("events")),
        "no relist after bookmarks"
    );
    let import = named(&mut objects, "ServiceImport", "web");
    import["spec"]["ips"] = json!(["10.96.100.11"]);
    server.apply(import.clone()).unwrap();
    wait_matching(&mut running, &objects, "a change after bookmarks").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_relists_without_losing_live_objects() {
    let server = server_with_fixtures();
    let mut running = start(&server).await;
    let mut objects = mcs_objects();
    let initial = wait_matching(&mut running, &objects, "the initial snapshot").await;
    wait_for_watches(&server, WATCHERS).await;
    let (seen, recorder) = record_updates(&running);

    // 410 on every watch; the relist of slices is slow and paginated, so a
    // source reading a half-filled store would publish a partial snapshot.
    server.set_list_delay(&slices(), Duration::from_millis(300));
    server.expire_watches();
    wait_for_lists(&server, &slices(), 4).await; // 2 initial + 2 relists
    wait_for_lists(&server, &resource("v1", "endpoints"), 2).await;
    wait_for_watches(&server, WATCHERS).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "a relist of unchanged objects publishes nothing"
    );
    assert_eq!(running.updates.borrow().as_ref(), Some(&initial));

    // Changes made while expired (history compacted) arrive through the
    // relist: every update published holds every live object.
    server.drop_watches();
    let gone = remove(&mut objects, "EndpointSlice", "api-cluster-b-1");
    server.delete_object(&gone);
    let slice = named(&mut objects, "EndpointSlice", "web-cluster-a-2");
    slice["endpoints"][0]["addresses"] = json!(["10.101.2.99"]);
    server.apply(slice.clone()).unwrap();
    server.expire_watches();
    let last = wait_matching(&mut running, &objects, "the relisted state").await;
    recorder.abort();
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty());
    for update in seen.iter() {
        for key in last.snapshot.imports.keys() {
            assert!(
                update.snapshot.imports.contains_key(key),
                "{key} missing from an intermediate update"
            );
        }
        let web = update
            .snapshot
            .slices()
            .values()
            .filter(|s| s.owner == SliceOwner::Import("web".into()))
            .count();
        assert_eq!(
            web, 3,
            "a live web slice was missing from an intermediate update"
        );
    }
}

/// Cuts the client off, changes objects, and reconnects: with the history
/// kept (the watch resumes and the server replays what was missed) and
/// with it compacted (410, then a relist).
async fn reconnect_after_changes(compact: bool) {
    let server = server_with_fixtures();
    let mut running = start(&server).await;
    let mut objects = mcs_objects();
    let initial = wait_matching(&mut running, &objects, "the initial snapshot").await;
    wait_for_watches(&server, WATCHERS).await;
    let (seen, recorder) = record_updates(&running);

    server.set_available(false);
    let gone = remove(&mut objects, "EndpointSlice", "web-cluster-b-1");
    server.delete_object(&gone);
    let gone = remove(&mut objects, "ServiceImport", "db");
    server.delete_object(&gone);
    let import = named(&mut objects, "ServiceImport", "shop");
    import["spec"]["ports"][0]["port"] = json!(8081);
    server.apply(import.clone()).unwrap();
    let added = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "gke-mcs-shop-7x2k-zz9x1", "namespace": "store", "labels": {
            "kubernetes.io/service-name": "gke-mcs-shop-7x2k",
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8443}],
        "endpoints": [{"addresses": ["10.101.5.11"]}],
    });
    server.apply(added.clone()).unwrap();
    objects.push(added);
    if compact {
        server.compact();
    }
    // While cut off, the last state is kept.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(running.updates.borrow().as_ref(), Some(&initial));

    let lists = |server: &FakeApiServer| {
        server
            .requests()
            .iter()
            .filter(|r| !r.is_watch() && r.method == "GET")
            .count()
    };
    let lists_before = lists(&server);
    server.set_available(true);
    wait_matching(&mut running, &objects, "the state after reconnecting").await;
    recorder.abort();
    if compact {
        assert!(
            lists(&server) > lists_before,
            "410 on resume made the watchers relist"
        );
    } else {
        assert_eq!(
            lists(&server),
            lists_before,
            "watches resumed and were replayed what they missed; no relist"
        );
    }
    // The live objects never went missing in between.
    for update in seen.lock().unwrap().iter() {
        for key in [
            "web-cluster-a-1",
            "web-cluster-a-2",
            "api-cluster-a-1",
            "api-cluster-b-1",
        ] {
            assert!(
                update.snapshot.slices().keys().any(|k| k.name == key),
                "{key} missing from an update"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_replays_changes_made_while_disconnected() {
    reconnect_after_changes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_relists_after_compaction() {
    reconnect_after_changes(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_published_before_every_kind_is_listed() {
    let server = server_with_fixtures();
    let endpoints = resource("v1", "endpoints");
    server.set_list_delay(&endpoints, Duration::from_millis(2500));
    let mut running = start(&server).await;
    // The other five kinds get listed and watched meanwhile...
    wait_for_watches(&server, WATCHERS - 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...and still nothing is published while Endpoints are being listed.
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| r.path == "/api/v1/endpoints")
            .count(),
        0,
        "the Endpoints list is still in progress (test too slow?)"
    );
    assert!(
        running.updates.borrow().is_none(),
        "published before Endpoints were listed"
    );
    wait_for_lists(&server, &endpoints, 1).await;
    let update = wait_matching(&mut running, &mcs_objects(), "the first update").await;
    assert!(
        update
            .snapshot
            .slices()
            .keys()
            .any(|k| k.name.starts_with("gke-mcs-cart-9q8w"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_that_is_not_installed_does_not_block_the_others() {
    let server = server_with_fixtures();
    server.set_served(&gke_imports(), false);
    // This test builds the client from a `kube::Config` rather than a file.
    let config = kube::Config::new(server.url().parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let mut running = start_source(KubeSource::new(client, options()));
    // Without its imports, the derived services' objects (namespace
    // `store`) back nothing and are not converted either.
    let without_gke: Vec<Value> = mcs_objects()
        .into_iter()
        .filter(|o| o["metadata"]["namespace"] != "store")
        .collect();
    let update = wait_matching(&mut running, &without_gke, "the update without GKE imports").await;
    assert!(
        update
            .snapshot
            .imports
            .values()
            .all(|i| i.flavour != Flavour::Gke)
    );

    // Installed later: picked up by the watcher's retries.
    server.set_served(&gke_imports(), true);
    wait_matching(&mut running, &mcs_objects(), "GKE imports once served").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_served_in_both_mcs_api_versions_is_taken_once() {
    let server = server_with_fixtures();
    // The v1alpha1 `web` served again through v1beta1 (one CRD, two
    // versions), with a v1beta1-only change.
    let mut web = fixture("serviceimports-v1alpha1.json").remove(0);
    web["apiVersion"] = json!("multicluster.x-k8s.io/v1beta1");
    web["spec"]["ips"] = json!(["10.96.100.12"]);
    server.apply(web.clone()).unwrap();
    let mut running = start(&server).await;
    let mut expected: Vec<Value> = mcs_objects();
    remove(&mut expected, "ServiceImport", "web");
    expected.push(web);
    let update = wait_matching(&mut running, &expected, "one web import").await;
    let web = update
        .snapshot
        .imports
        .values()
        .find(|i| i.key.name == "web")
        .unwrap();
    assert_eq!(web.flavour, Flavour::McsV1beta1);
}

/// `(regarding kind, regarding name, reason)` of every Event posted.
fn posted(server: &FakeApiServer) -> Vec<(String, String, String)> {
    let mut events: Vec<_> = server
        .events()
        .iter()
        .map(|e| {
            (
                e["regarding"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["regarding"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    events.sort();
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_become_events_once_per_object_and_reason() {
    let server = server_with_fixtures();
    let mut running = start_with_events(&server, desired::Policy::default()).await;
    let mut objects = mcs_objects();
    let update = wait_matching(&mut running, &objects, "the initial snapshot").await;

    let (_, derived) = desired::compute(&update.snapshot);
    let expected: BTreeSet<(String, String, String)> = update
        .rejections
        .iter()
        .chain(&derived)
        .map(|r| {
            (
                r.kind.clone(),
                r.object.name.clone(),
                event_reason(r.reason()),
            )
        })
        .collect();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while posted(&server).len() < expected.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events: {:?}",
            posted(&server)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        posted(&server),
        expected.iter().cloned().collect::<Vec<_>>()
    );
    assert!(expected.contains(&("ServiceImport".into(), "bad".into(), "ForbiddenIp".into())));
    assert!(expected.contains(&(
        "EndpointSlice".into(),
        "api-cluster-b-1".into(),
        "AddressTypeMismatch".into()
    )));

    let event = server
        .events()
        .into_iter()
        .find(|e| e["reason"] == "DuplicatePortName")
        .expect("a DuplicatePortName event");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reportingController"], "mcs-agent");
    assert_eq!(event["reportingInstance"], "mcs-agent-0");
    assert_eq!(event["deprecatedSource"]["host"], "node-0");
    assert_eq!(event["metadata"]["namespace"], "demo");
    assert_eq!(
        event["regarding"]["apiVersion"],
        "multicluster.x-k8s.io/v1beta1"
    );
    assert!(
        event["regarding"]["uid"]
            .as_str()
            .is_some_and(|uid| !uid.is_empty())
    );
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("duplicate port name \"a\""),
        "{event}"
    );
    // Two forbidden addresses in one slice: one Event, both messages.
    let forbidden = server
        .events()
        .into_iter()
        .find(|e| e["reason"] == "ForbiddenIp" && e["regarding"]["name"] == "api-cluster-b-1")
        .expect("a ForbiddenIp event for the slice");
    let note = forbidden["note"].as_str().unwrap();
    assert!(note.contains("::1") && note.contains("127.0.0.1"), "{note}");

    // Other objects change; the bad ones do not: no new Event.
    for port in [8090, 8091, 8092] {
        let slice = named(&mut objects, "EndpointSlice", "web-cluster-b-1");
        slice["ports"][0]["port"] = json!(port);
        server.apply(slice.clone()).unwrap();
        wait_matching(&mut running, &objects, "a changed good slice").await;
    }
    server.expire_watches();
    wait_for_watches(&server, WATCHERS).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        posted(&server).len(),
        expected.len(),
        "{:?}",
        posted(&server)
    );
    assert!(server.event_patches().is_empty());

    // A newly broken object gets its Event.
    let slice = named(&mut objects, "EndpointSlice", "db-cluster-b-1");
    slice["endpoints"][0]["addresses"] = json!(["224.0.0.1"]);
    server.apply(slice.clone()).unwrap();
    wait_matching(&mut running, &objects, "a broken slice").await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while posted(&server).len() == expected.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event for the broken slice"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(posted(&server).contains(&(
        "EndpointSlice".into(),
        "db-cluster-b-1".into(),
        "ForbiddenIp".into()
    )));
}

/// Every node's agent sees the same bad objects: the cluster gets one Event
/// per object and reason, naming the agent that reported it (pod and
/// node), not one per agent; a restarted agent adds none either. A report
/// long after the Event (the object fixed and broken again) counts as a new
/// occurrence of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_many_nodes_publish_one_event_per_object_and_reason() {
    const AGENTS: usize = 3;
    let server = server_with_fixtures();
    let mut running = start(&server).await;
    let objects = mcs_objects();
    let update = wait_matching(&mut running, &objects, "the initial snapshot").await;
    let (_, derived) = desired::compute(&update.snapshot);
    let rejections: Vec<_> = update.rejections.iter().chain(&derived).cloned().collect();
    let expected: BTreeSet<(String, String, String)> = rejections
        .iter()
        .map(|r| {
            (
                r.kind.clone(),
                r.object.name.clone(),
                event_reason(r.reason()),
            )
        })
        .collect();
    assert!(expected.len() > 3, "{expected:?}");
    let client =
        || kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    let wait_posted = |count: usize| {
        let server = &server;
        async move {
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            while posted(server).len() < count {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "events: {:?}",
                    posted(server)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    let mut agents = Vec::new();
    for n in 0..AGENTS {
        let mut events = Events::start(client(), publisher(n));
        events.report(&rejections, &update.references);
        agents.push(events);
    }
    wait_posted(expected.len()).await;
    // The other agents' posts are done too (each finds the Event).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        posted(&server),
        expected.iter().cloned().collect::<Vec<_>>(),
        "one Event per object and reason, not one per agent"
    );
    for event in server.events() {
        let instance = event["reportingInstance"].as_str().unwrap_or_default();
        let n: usize = instance
            .strip_prefix("mcs-agent-")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("reportingInstance {instance:?}"));
        assert!(n < AGENTS, "{event}");
        assert_eq!(
            event["deprecatedSource"]["host"],
            format!("node-{n}"),
            "{event}"
        );
        assert_eq!(event["reportingController"], "mcs-agent");
    }

    // A restarted agent reports everything again: nothing new.
    drop(agents);
    let mut restarted = Events::start(client(), publisher(AGENTS));
    restarted.report(&rejections, &update.references);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(posted(&server).len(), expected.len());
    assert!(server.event_patches().is_empty());

    // Long after (here: a window of zero), the same report is a repeat.
    let mut later = Events::start_with(client(), publisher(0), Duration::ZERO);
    later.report(&rejections, &update.references);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while server.event_patches().len() < expected.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "patches: {:?}",
            server.event_patches()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(posted(&server).len(), expected.len(), "no new Event");
    assert!(
        server
            .event_patches()
            .iter()
            .all(|patch| patch["series"]["count"] == 2),
        "{:?}",
        server.event_patches()
    );
}

/// The maps the reconciler programs for a sequence of updates.
struct Programmed {
    reconciler: Reconciler,
    maps: MemoryMaps,
}

impl Programmed {
    fn new() -> Self {
        Self {
            reconciler: Reconciler::new(),
            maps: MemoryMaps::default(),
        }
    }

    fn apply(&mut self, update: &SourceUpdate) {
        let (state, _) = desired::compute(&update.snapshot);
        let report = self.reconciler.apply(&state, &mut self.maps);
        assert!(report.errors.is_empty());
    }

    /// Map contents (not write counts, which depend on history).
    fn contents(&self) -> impl PartialEq + std::fmt::Debug {
        (
            self.maps.services.clone(),
            self.maps.backends.clone(),
            self.maps.names.clone(),
            self.maps
                .clusters
                .values()
                .cloned()
                .collect::<BTreeSet<_>>(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciled_maps_equal_those_of_the_file_source() {
    let server = server_with_fixtures();
    let mut running = start(&server).await;
    let mut objects = mcs_objects();
    let (mut from_kube, mut from_file) = (Programmed::new(), Programmed::new());

    let update = wait_matching(&mut running, &objects, "the initial snapshot").await;
    from_kube.apply(&update);
    from_file.apply(&file_update(&objects));
    assert_eq!(from_kube.contents(), from_file.contents());
    // Every non-headless import with a VIP is programmed, backends merged
    // across slices and clusters.
    let names: BTreeSet<String> = from_kube.maps.names.values().cloned().collect();
    for name in [
        "demo/web:http",
        "demo/web:metrics",
        "demo/api:grpc",
        "demo/api:dns",
        "store/shop:http",
        "store/cart:7000",
    ] {
        assert!(names.contains(name), "{name} not programmed: {names:?}");
    }
    let backends_of = |programmed: &Programmed, name: &str| {
        let id = programmed
            .maps
            .names
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(id, _)| *id)
            .unwrap();
        let service = programmed
            .maps
            .services
            .values()
            .find(|s| s.frontend_id == id)
            .unwrap();
        service.backend_count
    };
    // web:http: 10.101.1.10 and 10.101.2.10 (a, both slices, deduplicated)
    // and 10.102.1.10, 10.102.1.11 (b); 10.101.1.11 is terminating.
    assert_eq!(backends_of(&from_kube, "demo/web:http"), 4);
    assert_eq!(
        backends_of(&from_kube, "demo/web:metrics"),
        2,
        "only cluster a exposes metrics"
    );
    assert_eq!(
        backends_of(&from_kube, "store/shop:http"),
        2,
        "derived-service slices"
    );
    assert_eq!(
        backends_of(&from_kube, "store/cart:7000"),
        2,
        "derived-service Endpoints"
    );

    // The same sequence of changes gives the same maps.
    let slice = named(&mut objects, "EndpointSlice", "web-cluster-b-1");
    slice["endpoints"][1]["conditions"] = json!({"ready": false});
    server.apply(slice.clone()).unwrap();
    let gone = remove(&mut objects, "Endpoints", "gke-mcs-cart-9q8w");
    server.delete_object(&gone);
    let update = wait_matching(&mut running, &objects, "the changed snapshot").await;
    from_kube.apply(&update);
    from_file.apply(&file_update(&objects));
    assert_eq!(from_kube.contents(), from_file.contents());
    assert_eq!(backends_of(&from_kube, "demo/web:http"), 3);
    assert_eq!(backends_of(&from_kube, "store/cart:7000"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_kubeconfig_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let error = KubeSource::connect(Some(&missing), options())
        .await
        .err()
        .expect("fails");
    assert!(
        matches!(
            error,
            KubeSourceError::Config(mcs_agent::kube_config::KubeConfigError::Kubeconfig { .. })
        ),
        "{error:?}"
    );
}
