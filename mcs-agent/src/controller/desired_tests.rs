//! Tests of the desired state: the conformance cases' API objects computed
//! without a server, deletions, the unknown/unreachable member rules.

use std::{collections::BTreeSet, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Namespace, Service},
    discovery::v1::EndpointSlice,
};
use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::*;
use crate::{
    controller::{
        ANNOTATION_UNREACHABLE_SINCE, LABEL_IMPORT_MANAGED_BY, exports::ClusterModel,
        merge::IpFamily, render::slice_name,
    },
    model::convert::{LABEL_MANAGED_BY, LABEL_MC_SERVICE_NAME, LABEL_SOURCE_CLUSTER},
};
use std::net::IpAddr;

fn hello_service(extra: Value) -> Arc<Service> {
    let mut spec = json!({
        "ports": [{"name": "tcp", "port": 42, "protocol": "TCP"},
                  {"name": "udp", "port": 42, "protocol": "UDP"}],
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}},
    });
    if let (Value::Object(spec), Value::Object(extra)) = (&mut spec, extra) {
        spec.extend(extra);
    }
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": "hello", "namespace": "demo"},
            "spec": spec,
        }))
        .unwrap(),
    )
}

fn hello_export(created: &str, spec: Value) -> Arc<DynamicObject> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
            "metadata": {"name": "hello", "namespace": "demo", "uid": format!("uid-{created}"),
                         "creationTimestamp": created},
            "spec": spec,
        }))
        .unwrap(),
    )
}

fn hello_slice(name: &str, addresses: &[&str]) -> Arc<EndpointSlice> {
    let endpoints: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}, "hostname": "h", "nodeName": "n1"}))
        .collect();
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "demo",
                         "labels": {"kubernetes.io/service-name": "hello",
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "ports": [{"name": "tcp", "port": 8042, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .unwrap(),
    )
}

/// A cluster exporting `hello` (its export created at `created`).
fn exporting(created: &str, service: Arc<Service>, slices: &[Arc<EndpointSlice>]) -> ClusterModel {
    ClusterModel::build(
        &[(Flavour::McsV1alpha1, vec![hello_export(created, json!({}))])],
        &[service],
        slices,
    )
}

fn observed_with_namespaces(names: &[&str]) -> Observed {
    let namespaces: Vec<Arc<Namespace>> = names
        .iter()
        .map(|n| Arc::new(serde_json::from_value(json!({"metadata": {"name": n}})).unwrap()))
        .collect();
    Observed::build(&[], &[], Some(&namespaces))
}

fn allocator() -> Allocator {
    Allocator::new(&["10.240.0.0/16".parse().unwrap()]).unwrap()
}

fn run(
    cluster: &str,
    members: &[(&str, &ClusterModel)],
    observed: &Observed,
    allocator: &mut Allocator,
) -> Plan {
    let members: Vec<Member<'_>> = members
        .iter()
        .map(|(id, model)| Member {
            id,
            model,
            unreachable_since: None,
        })
        .collect();
    plan(
        &Input {
            cluster_id: cluster,
            members: &members,
            unknown: &BTreeSet::new(),
            observed,
            flavour: Flavour::McsV1beta1,
        },
        allocator,
    )
}

fn condition<'a>(status: &'a ExportStatus, type_: &str) -> &'a Condition {
    status.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

/// Feeds a plan's writes back as what the cluster holds.
fn observe(plan: &Plan, namespaces: &[&str]) -> Observed {
    let imports: Vec<Arc<DynamicObject>> = plan
        .imports
        .iter()
        .map(|i| {
            let mut object = i.object.clone();
            object["status"] = json!({"clusters": i.clusters.iter().map(|c| json!({"cluster": c})).collect::<Vec<_>>()});
            Arc::new(serde_json::from_value(object).unwrap())
        })
        .collect();
    let slices: Vec<Arc<EndpointSlice>> = plan
        .slices
        .iter()
        .map(|s| Arc::new(serde_json::from_value(s.object.clone()).unwrap()))
        .collect();
    let mut observed = Observed::build(&[(Flavour::McsV1beta1, imports)], &slices, None);
    observed.namespaces = Some(namespaces.iter().map(|n| (*n).to_owned()).collect());
    observed
}

#[test]
fn an_exported_cluster_ip_service_is_imported_with_an_address_and_its_slices() {
    let a = exporting(
        "2025-01-01T00:00:00Z",
        hello_service(json!({})),
        &[hello_slice("hello-x1", &["10.1.0.5"])],
    );
    let observed = observed_with_namespaces(&["demo"]);
    let plan = run("a", &[("a", &a)], &observed, &mut allocator());

    let [import] = plan.imports.as_slice() else {
        panic!("{:?}", plan.imports)
    };
    let spec = &import.object["spec"];
    assert_eq!(spec["type"], "ClusterSetIP");
    assert_eq!(
        spec["ports"],
        json!([{"name": "tcp", "port": 42, "protocol": "TCP"}, {"name": "udp", "port": 42, "protocol": "UDP"}])
    );
    assert_eq!(spec["sessionAffinity"], "ClientIP");
    assert_eq!(
        spec["sessionAffinityConfig"],
        json!({"clientIP": {"timeoutSeconds": 10}})
    );
    let ip: IpAddr = spec["ips"][0].as_str().unwrap().parse().unwrap();
    assert!(
        "10.240.0.0/16"
            .parse::<ipnet::IpNet>()
            .unwrap()
            .contains(&ip)
    );
    assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
    assert_eq!(
        import.object["metadata"]["labels"][LABEL_IMPORT_MANAGED_BY],
        CONTROLLER_NAME
    );
    assert_eq!(import.clusters, ["a"]);
    assert!(import.conditions[0].status);

    let [slice] = plan.slices.as_slice() else {
        panic!("{:?}", plan.slices)
    };
    let labels = &slice.object["metadata"]["labels"];
    assert_eq!(labels[LABEL_MC_SERVICE_NAME], "hello");
    assert_eq!(labels[LABEL_SOURCE_CLUSTER], "a");
    assert_eq!(labels[LABEL_MANAGED_BY], CONTROLLER_NAME);
    assert!(
        labels.get("kubernetes.io/service-name").is_none(),
        "kube-proxy must not take it"
    );
    assert_eq!(
        slice.object["endpoints"],
        json!([{"addresses": ["10.1.0.5"], "conditions": {"ready": true}, "hostname": "h"}])
    );
    assert_eq!(
        slice.object["ports"],
        json!([{"name": "tcp", "port": 8042, "protocol": "TCP"}])
    );

    let [status] = plan.exports.as_slice() else {
        panic!()
    };
    assert!(condition(status, "Valid").status);
    assert!(condition(status, "Ready").status);
    assert_eq!(condition(status, "Conflict").reason, "NoConflicts");
    assert!(!condition(status, "Conflict").status);
    assert_eq!(
        plan.summary,
        Summary {
            exports_valid: 1,
            exports_invalid: 0,
            imports: 1,
            slices: 1,
            conflicts: 0
        }
    );
}

#[test]
fn a_slice_lists_only_the_ports_its_cluster_exposes_as_the_import_does() {
    let a = exporting(
        "2025-01-01T00:00:00Z",
        hello_service(json!({})),
        &[hello_slice("hello-x1", &["10.1.0.5"])],
    );
    // b (newer) declares `tcp` as 43: that port loses the conflict, so
    // b's endpoints must not serve the import's tcp/42.
    let b = exporting(
        "2025-01-02T00:00:00Z",
        hello_service(
            json!({"ports": [{"name": "tcp", "port": 43, "protocol": "TCP"},
                                       {"name": "udp", "port": 42, "protocol": "UDP"}]}),
        ),
        &[hello_slice("hello-y1", &["10.2.0.5"])],
    );
    let observed = observed_with_namespaces(&["demo"]);
    let plan = run("a", &[("a", &a), ("b", &b)], &observed, &mut allocator());
    let ports_of = |cluster: &str| {
        plan.slices
            .iter()
            .find(|s| s.object["metadata"]["labels"][LABEL_SOURCE_CLUSTER] == cluster)
            .map(|s| s.object["ports"].clone())
            .unwrap()
    };
    assert_eq!(
        ports_of("a"),
        json!([{"name": "tcp", "port": 8042, "protocol": "TCP"}])
    );
    // Its endpoints stay listed (headless records, other ports), without
    // the lost port.
    assert_eq!(ports_of("b"), json!([]));
    assert_eq!(plan.summary.slices, 2);
    assert_eq!(plan.summary.conflicts, 1);
}

#[test]
fn what_is_written_is_current_when_read_back_and_the_plan_is_stable() {
    let a = exporting(
        "2025-01-01T00:00:00Z",
        hello_service(json!({})),
        &[hello_slice("hello-x1", &["10.1.0.5"])],
    );
    let mut allocator = allocator();
    let first = run(
        "a",
        &[("a", &a)],
        &observed_with_namespaces(&["demo"]),
        &mut allocator,
    );
    let observed = observe(&first, &["demo"]);
    let second = run("a", &[("a", &a)], &observed, &mut allocator);
    assert_eq!(first, second);
    for import in &second.imports {
        let held = observed
            .imports
            .get(&(import.key.clone(), ImportGroup::Mcs));
        assert!(import.is_current(held));
    }
    for slice in &second.slices {
        assert!(slice.is_current(observed.slices.get(&slice.key)));
    }
    assert!(second.delete_imports.is_empty() && second.delete_slices.is_empty());
}

#[test]
fn every_cluster_computes_the_same_import_apart_from_its_own_addresses() {
    let a = exporting(
        "2025-01-01T00:00:00Z",
        hello_service(json!({})),
        &[hello_slice("s1", &["10.1.0.5"])],
    );
    let mut b_service = hello_service(json!({}));
    Arc::make_mut(&mut b_service)
        .spec
        .as_mut()
        .unwrap()
        .ports
        .as_mut()
        .unwrap()[0]
        .port = 43;
    let b = exporting(
        "2025-01-01T00:00:01Z",
        b_service,
        &[hello_slice("s1", &["10.2.0.5"])],
    );
    let observed = observed_with_namespaces(&["demo"]);
    let from_a = run("a", &[("a", &a), ("b", &b)], &observed, &mut allocator());
    let from_b = run("b", &[("b", &b), ("a", &a)], &observed, &mut allocator());
    let strip = |plan: &Plan| {
        let mut spec = plan.imports[0].object["spec"].clone();
        spec.as_object_mut().unwrap().remove("ips");
        spec
    };
    assert_eq!(strip(&from_a), strip(&from_b));
    assert_eq!(from_a.slices, from_b.slices);
    // The conflict is reported on each cluster's own export.
    for plan in [&from_a, &from_b] {
        let conflict = condition(&plan.exports[0], "Conflict");
        assert!(conflict.status);
        assert_eq!(conflict.reason, "PortConflict");
        assert!(
            conflict.message.contains("a has the oldest export"),
            "{}",
            conflict.message
        );
        assert_eq!(plan.summary.conflicts, 1);
    }
    assert_eq!(from_a.imports[0].object["spec"]["ports"][0]["port"], 42);
    assert_eq!(from_a.slices.len(), 2);
}

#[test]
fn invalid_exports_get_valid_false_and_no_import() {
    let external = exporting(
        "2025-01-01T00:00:00Z",
        hello_service(json!({"type": "ExternalName", "externalName": "example.com"})),
        &[],
    );
    let plan = run(
        "a",
        &[("a", &external)],
        &observed_with_namespaces(&["demo"]),
        &mut allocator(),
    );
    assert!(plan.imports.is_empty());
    let valid = condition(&plan.exports[0], "Valid");
    assert!(!valid.status);
    assert_eq!(valid.reason, "InvalidServiceType");
    assert!(
        plan.exports[0]
            .conditions
            .iter()
            .all(|c| c.type_ != "Conflict")
    );

    let orphan = ClusterModel::build(
        &[(
            Flavour::McsV1alpha1,
            vec![hello_export("2025-01-01T00:00:00Z", json!({}))],
        )],
        &[],
        &[],
    );
    let plan = run(
        "a",
        &[("a", &orphan)],
        &observed_with_namespaces(&["demo"]),
        &mut allocator(),
    );
    assert!(plan.imports.is_empty());
    assert_eq!(condition(&plan.exports[0], "Valid").reason, "NoService");
    assert_eq!(plan.summary.exports_invalid, 1);
}

#[test]
fn headless_services_get_no_address() {
    let a = exporting(
        "2025-01-01T00:00:00Z",
        hello_service(json!({"clusterIP": "None"})),
        &[],
    );
    let plan = run(
        "a",
        &[("a", &a)],
        &observed_with_namespaces(&["demo"]),
        &mut allocator(),
    );
    let spec = &plan.imports[0].object["spec"];
    assert_eq!(spec["type"], "Headless");
    assert!(spec.get("ips").is_none());
}

#[test]
fn exported_labels_and_annotations_reach_the_import_only_when_exported() {
    let a = ClusterModel::build(
        &[(
            Flavour::McsV1alpha1,
            vec![hello_export(
                "2025-01-01T00:00:00Z",
                json!({"exportedLabels": {"dummy-label": "true"}, "exportedAnnotations": {"dummy-annotation": "true"}}),
            )],
        )],
        &[hello_service(json!({}))],
        &[],
    );
    let plan = run(
        "a",
        &[("a", &a)],
        &observed_with_namespaces(&["demo"]),
        &mut allocator(),
    );
    let metadata = &plan.imports[0].object["metadata"];
    assert_eq!(metadata["labels"]["dummy-label"], "true");
    assert_eq!(metadata["annotations"]["dummy-annotation"], "true");
    assert_eq!(metadata["labels"].as_object().unwrap().len(), 2);
}

#[test]
fn unexport_deletes_managed_objects_and_releases_the_address() {
    let a = exporting(
        "2025-01-01T00:00:00Z",
        hello_service(json!({})),
        &[hello_slice("s1", &["10.1.0.5"])],
    );
    let mut allocator = allocator();
    let first = run(
        "a",
        &[("a", &a)],
        &observed_with_namespaces(&["demo"]),
        &mut allocator,
    );
    let observed = observe(&first, &["demo"]);
    let key = ObjectKey::new("demo", "hello");
    assert_eq!(allocator.get(&key).len(), 1);
    let gone = ClusterModel::default();
    let plan = run("a", &[("a", &gone)], &observed, &mut allocator);
    assert!(plan.imports.is_empty());
    assert_eq!(plan.delete_imports, [(key.clone(), Flavour::McsV1beta1)]);
    assert_eq!(plan.delete_slices, [first.slices[0].key.clone()]);
    assert!(allocator.get(&key).is_empty());
}

#[test]
fn nothing_is_written_into_a_missing_namespace() {
    let a = exporting(
        "2025-01-01T00:00:00Z",
        hello_service(json!({})),
        &[hello_slice("s1", &["10.1.0.5"])],
    );
    let plan = run(
        "a",
        &[("a", &a)],
        &observed_with_namespaces(&["other"]),
        &mut allocator(),
    );
    assert!(plan.imports.is_empty() && plan.slices.is_empty());
    assert_eq!(
        plan.exports.len(),
        1,
        "the export's status is still written"
    );
}

#[test]
fn an_import_written_by_someone_else_is_left_alone() {
    let a = exporting("2025-01-01T00:00:00Z", hello_service(json!({})), &[]);
    let foreign: Arc<DynamicObject> = Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport",
            "metadata": {"name": "hello", "namespace": "demo"},
            "spec": {"type": "ClusterSetIP", "ips": ["10.240.0.1"], "ports": []},
        }))
        .unwrap(),
    );
    let observed = Observed::build(&[(Flavour::McsV1beta1, vec![foreign])], &[], None);
    let plan = run("a", &[("a", &a)], &observed, &mut allocator());
    assert!(plan.imports.is_empty());
    assert!(plan.delete_imports.is_empty());
    assert!(plan.notices.iter().any(|n| n.reason == "ImportNotManaged"));
}

#[test]
fn an_unknown_member_keeps_what_it_contributed_and_an_unreachable_one_is_marked() {
    let a = exporting(
        "2025-01-01T00:00:00Z",
        hello_service(json!({})),
        &[hello_slice("s1", &["10.1.0.5"])],
    );
    let b = exporting(
        "2025-01-01T00:00:01Z",
        hello_service(json!({})),
        &[hello_slice("s1", &["10.2.0.5"])],
    );
    let mut allocator = allocator();
    let both = run(
        "a",
        &[("a", &a), ("b", &b)],
        &observed_with_namespaces(&["demo"]),
        &mut allocator,
    );
    let observed = observe(&both, &["demo"]);
    let key = ObjectKey::new("demo", "hello");
    let ip = allocator.get(&key).to_vec();

    // Restarted: b has not answered yet, a no longer exports.
    let mut fresh =
        super::super::allocate::Allocator::new(&["10.240.0.0/16".parse().unwrap()]).unwrap();
    fresh.adopt(&key, &ip);
    let empty = ClusterModel::default();
    let members = [Member {
        id: "a",
        model: &empty,
        unreachable_since: None,
    }];
    let unknown = BTreeSet::from(["b".to_owned()]);
    let input = Input {
        cluster_id: "a",
        members: &members,
        unknown: &unknown,
        observed: &observed,
        flavour: Flavour::McsV1beta1,
    };
    let plan = plan(&input, &mut fresh);
    assert!(
        plan.delete_imports.is_empty(),
        "the import b may still export is kept"
    );
    let b_slice = both
        .slices
        .iter()
        .find(|s| s.object["metadata"]["labels"][LABEL_SOURCE_CLUSTER] == "b")
        .unwrap();
    assert!(!plan.delete_slices.contains(&b_slice.key));
    assert_eq!(plan.delete_slices.len(), 1, "a's own slice goes");
    assert_eq!(
        fresh.get(&key),
        ip.as_slice(),
        "the kept import keeps its address"
    );

    // b listed, then unreachable: its last state stays, marked.
    let since: Timestamp = "2025-06-01T12:00:00Z".parse().unwrap();
    let members = [
        Member {
            id: "a",
            model: &a,
            unreachable_since: None,
        },
        Member {
            id: "b",
            model: &b,
            unreachable_since: Some(since),
        },
    ];
    let none = BTreeSet::new();
    let input = Input {
        cluster_id: "a",
        members: &members,
        unknown: &none,
        observed: &observed,
        flavour: Flavour::McsV1beta1,
    };
    let plan = super::plan(&input, &mut allocator);
    assert!(plan.delete_slices.is_empty());
    let marked = plan
        .slices
        .iter()
        .find(|s| s.object["metadata"]["labels"][LABEL_SOURCE_CLUSTER] == "b")
        .unwrap();
    assert_eq!(
        marked.object["metadata"]["annotations"][ANNOTATION_UNREACHABLE_SINCE],
        "2025-06-01T12:00:00Z"
    );
    assert!(
        plan.imports[0].conditions[0]
            .message
            .contains("cluster b unreachable since")
    );
    assert_eq!(plan.imports[0].object["spec"]["ips"][0], ip[0].to_string());
}

#[test]
fn a_member_removed_from_the_set_loses_its_slices() {
    let a = exporting(
        "2025-01-01T00:00:00Z",
        hello_service(json!({})),
        &[hello_slice("s1", &["10.1.0.5"])],
    );
    let b = exporting(
        "2025-01-01T00:00:01Z",
        hello_service(json!({})),
        &[hello_slice("s1", &["10.2.0.5"])],
    );
    let mut allocator = allocator();
    let both = run(
        "a",
        &[("a", &a), ("b", &b)],
        &observed_with_namespaces(&["demo"]),
        &mut allocator,
    );
    let plan = run(
        "a",
        &[("a", &a)],
        &observe(&both, &["demo"]),
        &mut allocator,
    );
    assert_eq!(plan.delete_slices.len(), 1);
    assert_eq!(plan.imports[0].clusters, ["a"]);
}

#[test]
fn slice_names_are_unique_per_source_and_bounded() {
    let a = slice_name("hello", "cluster-a", "hello-abc12");
    assert!(a.starts_with("hello-cluster-a-"));
    assert_ne!(a, slice_name("hello", "cluster-a", "hello-abc13"));
    assert_ne!(a, slice_name("hello", "cluster-b", "hello-abc12"));
    assert_eq!(a, slice_name("hello", "cluster-a", "hello-abc12"));
    let long = slice_name(&"s".repeat(63), &"c".repeat(63), &"x".repeat(253));
    assert!(long.len() <= 253);
}

#[path = "desired_family_tests.rs"]
mod family;
