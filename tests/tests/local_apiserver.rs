//! The local API server as kube-rs's client sees it: every verb a
//! controller uses (create, get, replace, merge/JSON/strategic patches,
//! server-side apply, delete, the status subresource, list and watch),
//! with the apiserver's answers to conflicts and missing objects, the CRD
//! versions sharing one store, namespace deletion, finalizers and garbage
//! collection. No root needed.

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Namespace, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, ResourceExt as _,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        PostParams, WatchEvent, WatchParams,
    },
};
use mcs_tests::apiserver::LocalApiServer;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(10);

fn client(server: &LocalApiServer) -> Client {
    let config = kube::Config::new(server.url().parse().expect("server URL"));
    Client::try_from(config).expect("client")
}

fn exports(client: &Client, version: &str, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("multicluster.x-k8s.io", version, "ServiceExport");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "serviceexports");
    Api::namespaced_with(client.clone(), namespace, &resource)
}

fn export(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "multicluster.x-k8s.io/v1beta1",
        "kind": "ServiceExport",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("ServiceExport")
}

fn service(name: &str, port: i32) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"ports": [{"name": "http", "port": port, "protocol": "TCP"}], "selector": {"app": name}},
    }))
    .expect("Service")
}

async fn create_namespace(client: &Client, name: &str) {
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("Namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("create namespace");
}

/// The code and reason of an API error.
fn api_error<T: std::fmt::Debug>(result: kube::Result<T>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn rv<K: kube::Resource>(object: &K) -> u64 {
    object
        .resource_version()
        .expect("resourceVersion")
        .parse()
        .expect("numeric resourceVersion")
}

#[tokio::test]
async fn create_get_replace_and_delete_with_the_apiservers_errors() {
    let server = LocalApiServer::start().expect("server");
    let client = client(&server);
    let services: Api<Service> = Api::namespaced(client.clone(), "default");

    let created = services
        .create(&PostParams::default(), &service("web", 80))
        .await
        .expect("create");
    assert!(created.uid().is_some_and(|uid| uid.len() == 36));
    assert!(created.creation_timestamp().is_some());
    assert_eq!(
        api_error(
            services
                .create(&PostParams::default(), &service("web", 80))
                .await
        ),
        (409, "AlreadyExists".into())
    );
    assert_eq!(
        api_error(services.get("nothing").await),
        (404, "NotFound".into())
    );

    let mut changed = services.get("web").await.expect("get");
    assert_eq!(changed.uid(), created.uid());
    changed
        .spec
        .as_mut()
        .expect("spec")
        .ports
        .as_mut()
        .expect("ports")[0]
        .port = 8080;
    let replaced = services
        .replace("web", &PostParams::default(), &changed)
        .await
        .expect("replace at the current resourceVersion");
    assert!(rv(&replaced) > rv(&created));
    assert_eq!(replaced.uid(), created.uid());
    // `changed` still carries the old resourceVersion.
    let (code, reason) = api_error(
        services
            .replace("web", &PostParams::default(), &changed)
            .await,
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    // An unchanged replace writes nothing.
    let same = services
        .replace("web", &PostParams::default(), &replaced)
        .await
        .expect("no-op replace");
    assert_eq!(rv(&same), rv(&replaced));
    assert_eq!(server.revision(), rv(&replaced));

    let stale = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: Some(created.resource_version().expect("rv")),
            uid: None,
        }),
        ..DeleteParams::default()
    };
    assert_eq!(api_error(services.delete("web", &stale).await).0, 409);
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(api_error(services.get("web").await).0, 404);
    assert_eq!(
        api_error(services.delete("web", &DeleteParams::default()).await).0,
        404
    );
}

#[tokio::test]
async fn patches_merge_json_and_strategic() {
    let server = LocalApiServer::start().expect("server");
    let client = client(&server);
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .create(&PostParams::default(), &service("web", 80))
        .await
        .expect("create");

    let merged = services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"a": "1"}, "labels": {"app": null}}}),
            ),
        )
        .await
        .expect("merge patch");
    assert_eq!(merged.annotations().get("a").map(String::as_str), Some("1"));
    assert!(merged.labels().is_empty());

    // Strategic: ports merge by port number, the rest is kept.
    let strategic = services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"ports": [{"name": "metrics", "port": 9090}]}})),
        )
        .await
        .expect("strategic merge patch");
    let ports: Vec<i32> = strategic
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [80, 9090]);

    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/annotations/a", "value": "1"},
        {"op": "replace", "path": "/metadata/annotations/a", "value": "2"},
    ]))
    .unwrap();
    let patched = services
        .patch("web", &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .expect("JSON patch");
    assert_eq!(
        patched.annotations().get("a").map(String::as_str),
        Some("2")
    );

    // A patch naming an old resourceVersion is a precondition.
    let stale =
        json!({"metadata": {"resourceVersion": merged.resource_version(), "labels": {"x": "y"}}});
    assert_eq!(
        api_error(
            services
                .patch("web", &PatchParams::default(), &Patch::Merge(stale))
                .await
        ),
        (409, "Conflict".into())
    );
    // Custom resources take no strategic merge patch.
    let exports = exports(&client, "v1beta1", "default");
    exports
        .create(&PostParams::default(), &export("web", json!({})))
        .await
        .expect("create export");
    let (code, _) = api_error(
        exports
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {}})),
            )
            .await,
    );
    assert_eq!(code, 415);
    assert_eq!(
        api_error(
            services
                .patch("none", &PatchParams::default(), &Patch::Merge(json!({})))
                .await
        )
        .0,
        404
    );
}

#[tokio::test]
async fn server_side_apply_creates_then_merges_per_field_manager() {
    let server = LocalApiServer::start().expect("server");
    let client = client(&server);
    let exports = exports(&client, "v1beta1", "default");
    let apply = |manager: &str| PatchParams::apply(manager).force();

    let first = json!({
        "apiVersion": "multicluster.x-k8s.io/v1beta1",
        "kind": "ServiceExport",
        "metadata": {"name": "web", "labels": {"a": "1", "b": "2"}},
        "spec": {"exportedLabels": {"tier": "web", "team": "x"}},
    });
    let created = exports
        .patch("web", &apply("controller"), &Patch::Apply(&first))
        .await
        .expect("apply creates");
    assert_eq!(created.metadata.generation, Some(1));
    // Another manager owns a label of its own.
    let other = json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceExport",
        "metadata": {"name": "web", "labels": {"c": "3"}}});
    exports
        .patch("web", &apply("someone-else"), &Patch::Apply(&other))
        .await
        .expect("second manager");
    // The controller stops applying label `b` and `team`: they go; `c` stays.
    let second = json!({
        "apiVersion": "multicluster.x-k8s.io/v1beta1",
        "kind": "ServiceExport",
        "metadata": {"name": "web", "labels": {"a": "1"}},
        "spec": {"exportedLabels": {"tier": "api"}},
    });
    let merged = exports
        .patch("web", &apply("controller"), &Patch::Apply(&second))
        .await
        .expect("apply merges");
    let labels: Vec<(&str, &str)> = merged
        .labels()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(labels, [("a", "1"), ("c", "3")]);
    assert_eq!(
        merged.data["spec"],
        json!({"exportedLabels": {"tier": "api"}})
    );
    assert_eq!(merged.metadata.generation, Some(2));
    // The same apply again writes nothing.
    let again = exports
        .patch("web", &apply("controller"), &Patch::Apply(&second))
        .await
        .expect("idempotent apply");
    assert_eq!(again.resource_version(), merged.resource_version());
    // Apply needs a field manager.
    let (code, reason) = api_error(
        exports
            .patch("web", &PatchParams::default(), &Patch::Apply(&second))
            .await,
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
}

#[tokio::test]
async fn the_status_subresource_and_the_object_ignore_each_others_part() {
    let server = LocalApiServer::start().expect("server");
    let client = client(&server);
    let exports = exports(&client, "v1beta1", "default");
    let mut object = export("web", json!({"exportedLabels": {"a": "1"}}));
    object.data["status"] = json!({"conditions": [{"type": "Valid", "status": "True"}]});
    let created = exports
        .create(&PostParams::default(), &object)
        .await
        .expect("create");
    assert!(
        created.data.get("status").is_none(),
        "status is dropped on create"
    );

    let condition = |type_: &str, status: &str| {
        json!({"type": type_, "status": status, "reason": "Test", "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z"})
    };
    let status_patch = json!({
        "apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceExport",
        "spec": {"exportedLabels": {"ignored": "yes"}},
        "status": {"conditions": [condition("Valid", "True"), condition("Ready", "False")]},
    });
    let with_status = exports
        .patch_status(
            "web",
            &PatchParams::apply("controller").force(),
            &Patch::Apply(&status_patch),
        )
        .await
        .expect("apply status");
    assert_eq!(
        with_status.data["spec"],
        json!({"exportedLabels": {"a": "1"}})
    );
    assert_eq!(
        with_status.data["status"]["conditions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        with_status.metadata.generation,
        Some(1),
        "status writes keep the generation"
    );

    // Conditions are a map list keyed by type: a merge of one keeps the other.
    let ready = json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceExport",
        "status": {"conditions": [condition("Ready", "True")]}});
    let merged = exports
        .patch_status(
            "web",
            &PatchParams::apply("other").force(),
            &Patch::Apply(&ready),
        )
        .await
        .expect("apply another condition");
    let conditions: Vec<(&str, &str)> = merged.data["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(conditions, [("Valid", "True"), ("Ready", "True")]);

    // A write to the object keeps the status it did not mean to change.
    let mut spec_write = merged.clone();
    spec_write.data["spec"] = json!({"exportedLabels": {"b": "2"}});
    spec_write.data["status"] = json!({});
    let replaced = exports
        .replace("web", &PostParams::default(), &spec_write)
        .await
        .expect("replace");
    assert_eq!(replaced.data["status"], merged.data["status"]);
    assert_eq!(replaced.metadata.generation, Some(2));

    // replace_status with a stale resourceVersion conflicts.
    let (code, reason) = api_error(
        exports
            .replace_status("web", &PostParams::default(), &merged)
            .await,
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    let mut current = exports.get_status("web").await.expect("get status");
    current.data["status"] = json!({"conditions": []});
    current.data["spec"] = json!({});
    let cleared = exports
        .replace_status("web", &PostParams::default(), &current)
        .await
        .expect("replace status");
    assert_eq!(cleared.data["status"], json!({"conditions": []}));
    assert_eq!(cleared.data["spec"], json!({"exportedLabels": {"b": "2"}}));
}

/// The next non-bookmark event of a watch.
async fn next_event<S>(stream: &mut S) -> WatchEvent<DynamicObject>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<DynamicObject>>> + Unpin,
{
    loop {
        let event = tokio::time::timeout(TIMEOUT, stream.try_next())
            .await
            .expect("an event in time")
            .expect("no watch error")
            .expect("the watch goes on");
        if !matches!(event, WatchEvent::Bookmark(_)) {
            return event;
        }
    }
}

#[tokio::test]
async fn a_watch_sees_each_write_with_its_resource_version_in_any_version() {
    let server = LocalApiServer::start().expect("server");
    let client = client(&server);
    let beta = exports(&client, "v1beta1", "default");
    let alpha = exports(&client, "v1alpha1", "default");
    let mut watch = alpha
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch v1alpha1")
        .boxed();

    let created = beta
        .create(&PostParams::default(), &export("web", json!({})))
        .await
        .unwrap();
    let WatchEvent::Added(added) = next_event(&mut watch).await else {
        panic!("ADDED expected");
    };
    assert_eq!(added.resource_version(), created.resource_version());
    assert_eq!(
        added.types.as_ref().map(|t| t.api_version.as_str()),
        Some("multicluster.x-k8s.io/v1alpha1"),
        "served in the watched version"
    );
    let patched = beta
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await
        .unwrap();
    let WatchEvent::Modified(modified) = next_event(&mut watch).await else {
        panic!("MODIFIED expected");
    };
    assert_eq!(modified.resource_version(), patched.resource_version());
    assert_eq!(modified.labels().get("x").map(String::as_str), Some("1"));
    beta.delete("web", &DeleteParams::default()).await.unwrap();
    let WatchEvent::Deleted(deleted) = next_event(&mut watch).await else {
        panic!("DELETED expected");
    };
    assert!(rv(&deleted) > rv(&modified));

    // A watch resumed from a resourceVersion replays what came after it.
    let mut resumed = alpha
        .watch(
            &WatchParams::default(),
            &created.resource_version().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        next_event(&mut resumed).await,
        WatchEvent::Modified(_)
    ));
    assert!(matches!(
        next_event(&mut resumed).await,
        WatchEvent::Deleted(_)
    ));
}

#[tokio::test]
async fn a_crds_versions_share_one_store() {
    let server = LocalApiServer::start().expect("server");
    let client = client(&server);
    let alpha = exports(&client, "v1alpha1", "default");
    let beta = exports(&client, "v1beta1", "default");
    let mut written = export("web", json!({"exportedAnnotations": {"a": "b"}}));
    written.types.as_mut().unwrap().api_version = "multicluster.x-k8s.io/v1alpha1".into();
    alpha
        .create(&PostParams::default(), &written)
        .await
        .expect("create in v1alpha1");

    let read = beta.get("web").await.expect("read in v1beta1");
    assert_eq!(
        read.types.unwrap().api_version,
        "multicluster.x-k8s.io/v1beta1"
    );
    assert_eq!(
        read.data["spec"],
        json!({"exportedAnnotations": {"a": "b"}})
    );
    assert_eq!(
        beta.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    // A v1alpha1 object in a v1beta1 body is refused, as the apiserver does.
    let (code, _) = api_error(beta.create(&PostParams::default(), &written).await);
    assert_eq!(code, 400);
    beta.delete("web", &DeleteParams::default())
        .await
        .expect("delete in v1beta1");
    assert_eq!(api_error(alpha.get("web").await).0, 404);
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_objects() {
    let server = LocalApiServer::start().expect("server");
    let client = client(&server);
    create_namespace(&client, "demo").await;
    let services: Api<Service> = Api::namespaced(client.clone(), "demo");
    services
        .create(&PostParams::default(), &service("web", 80))
        .await
        .unwrap();
    let exports = exports(&client, "v1beta1", "demo");
    exports
        .create(&PostParams::default(), &export("web", json!({})))
        .await
        .unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "demo");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.1.0.1"]}],
        "ports": [{"port": 80}],
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();
    let mut watch = exports
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    // A watch from "0" starts with what exists.
    let WatchEvent::Added(existing) = next_event(&mut watch).await else {
        panic!("the existing export as ADDED first");
    };
    assert_eq!(existing.name_any(), "web");

    Api::<Namespace>::all(client.clone())
        .delete("demo", &DeleteParams::default())
        .await
        .expect("delete namespace");
    assert!(matches!(
        next_event(&mut watch).await,
        WatchEvent::Deleted(_)
    ));
    assert_eq!(api_error(services.get("web").await).0, 404);
    assert_eq!(api_error(slices.get("web-1").await).0, 404);
    assert_eq!(
        api_error(Api::<Namespace>::all(client.clone()).get("demo").await).0,
        404
    );
    // Nothing can be created in a namespace that does not exist.
    let (code, reason) = api_error(
        services
            .create(&PostParams::default(), &service("web", 80))
            .await,
    );
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
}

#[tokio::test]
async fn finalizers_hold_a_deletion_and_owners_take_their_dependents() {
    let server = LocalApiServer::start().expect("server");
    let client = client(&server);
    let exports = exports(&client, "v1beta1", "default");
    let mut held = export("held", json!({}));
    held.metadata.finalizers = Some(vec!["mcs.dev/cleanup".into()]);
    exports.create(&PostParams::default(), &held).await.unwrap();
    exports
        .delete("held", &DeleteParams::default())
        .await
        .unwrap();
    let marked = exports.get("held").await.expect("still there");
    assert!(marked.metadata.deletion_timestamp.is_some());
    exports
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("remove the finalizer");
    assert_eq!(api_error(exports.get("held").await).0, 404);

    let owner = exports
        .create(&PostParams::default(), &export("owner", json!({})))
        .await
        .unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "owned", "ownerReferences": [{"apiVersion": "multicluster.x-k8s.io/v1beta1",
            "kind": "ServiceExport", "name": "owner", "uid": owner.uid().unwrap()}]},
        "addressType": "IPv4", "endpoints": [],
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();
    exports
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(api_error(slices.get("owned").await).0, 404);
}

#[tokio::test]
async fn leases_and_unknown_fields() {
    let server = LocalApiServer::start().expect("server");
    let client = client(&server);
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "leader"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut taken = created.clone();
    taken.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("leader", &PostParams::default(), &taken)
        .await
        .expect("take over");
    // The loser of the race still holds the old resourceVersion.
    assert_eq!(
        api_error(
            leases
                .replace("leader", &PostParams::default(), &taken)
                .await
        )
        .0,
        409
    );

    // Fields a CRD does not declare are pruned, or refused when strict.
    let exports = exports(&client, "v1beta1", "default");
    let created = exports
        .create(
            &PostParams::default(),
            &export("web", json!({"bogus": true, "exportedLabels": {}})),
        )
        .await
        .unwrap();
    assert_eq!(created.data["spec"], json!({"exportedLabels": {}}));
    let strict = PatchParams {
        field_validation: Some(kube::api::ValidationDirective::Strict),
        ..PatchParams::default()
    };
    let (code, _) = api_error(
        exports
            .patch("web", &strict, &Patch::Merge(json!({"spec": {"bogus": 1}})))
            .await,
    );
    assert_eq!(code, 400);
}

#[tokio::test]
async fn discovery_finds_every_kind() {
    let server = LocalApiServer::start().expect("server");
    let client = client(&server);
    let discovery = kube::discovery::Discovery::new(client)
        .run()
        .await
        .expect("discovery");
    let mut found: Vec<String> = discovery
        .groups()
        .flat_map(|group| {
            group
                .versions()
                .flat_map(|version| {
                    group
                        .versioned_resources(version)
                        .into_iter()
                        .map(|(resource, _)| {
                            format!("{}/{}", resource.api_version, resource.plural)
                        })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    found.sort();
    for expected in [
        "v1/namespaces",
        "v1/services",
        "v1/endpoints",
        "discovery.k8s.io/v1/endpointslices",
        "coordination.k8s.io/v1/leases",
        "multicluster.x-k8s.io/v1alpha1/serviceexports",
        "multicluster.x-k8s.io/v1beta1/serviceexports",
        "multicluster.x-k8s.io/v1beta1/serviceimports",
        "net.gke.io/v1/serviceexports",
        "net.gke.io/v1/serviceimports",
    ] {
        assert!(
            found.iter().any(|f| f == expected),
            "{expected} in {found:?}"
        );
    }
}
