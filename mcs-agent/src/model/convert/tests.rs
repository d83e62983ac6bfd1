use serde_json::json;

use super::*;
use crate::model::SessionAffinity;

fn import(spec: Value) -> Value {
    json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceImport",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": spec,
    })
}

fn only_import(converted: &Converted) -> &ServiceImport {
    match converted.objects.as_slice() {
        [Object::Import(import)] => import,
        other => panic!("expected one import, got {other:?}"),
    }
}

#[test]
fn valid_import_converts_without_problems() {
    let converted = convert(&import(json!({
        "type": "ClusterSetIP",
        "ips": ["10.96.0.10"],
        "ports": [{"name": "http", "protocol": "TCP", "port": 80},
                  {"name": "dns", "protocol": "UDP", "port": 53}],
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}},
    })));
    assert!(
        converted.rejections.is_empty(),
        "{:?}",
        converted.rejections
    );
    let import = only_import(&converted);
    assert_eq!(import.ips, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(import.ports.len(), 2);
    assert_eq!(import.ports[1].protocol, Protocol::Udp);
    assert_eq!(
        import.session_affinity,
        SessionAffinity::ClientIp {
            timeout_seconds: 10
        }
    );
}

#[test]
fn bad_parts_are_rejected_and_the_rest_kept() {
    let converted = convert(&import(json!({
        "ips": ["127.0.0.1", "10.96.0.10", "not-an-ip"],
        "ports": [{"name": "a", "port": 0},
                  {"name": "b", "port": 70000},
                  {"name": "c", "protocol": "QUIC", "port": 1},
                  {"name": "d", "port": 80},
                  {"name": "d", "port": 81}],
    })));
    let import = only_import(&converted);
    // Only the first two addresses are considered; loopback is refused.
    assert_eq!(import.ips, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(import.ports.len(), 1);
    assert_eq!(import.ports[0].port, 80);
    let reasons: Vec<_> = converted.rejections.iter().map(Rejection::reason).collect();
    assert_eq!(
        reasons,
        [
            "too_many_ips",
            "forbidden_ip",
            "port_out_of_range",
            "port_out_of_range",
            "unknown_protocol",
            "duplicate_port_name"
        ]
    );
    assert!(converted.rejections.iter().all(|r| !r.fatal));
    let message = converted.rejections[1].to_string();
    assert!(message.contains("ServiceImport demo/web"), "{message}");
    assert!(message.contains("loopback"), "{message}");
}

#[test]
fn forbidden_addresses() {
    for ip in [
        "0.0.0.0",
        "127.0.0.5",
        "169.254.1.1",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "fe80::1",
        "ff02::1",
        "::",
        "::ffff:127.0.0.1",
    ] {
        assert!(forbidden_reason(ip.parse().unwrap()).is_some(), "{ip}");
    }
    for ip in ["10.1.2.3", "192.168.0.1", "2001:db8::1"] {
        assert!(forbidden_reason(ip.parse().unwrap()).is_none(), "{ip}");
    }
}

fn slice(labels: Value, address_type: &str, addresses: Value) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-b", "namespace": "demo", "labels": labels},
        "addressType": address_type,
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": [{"addresses": addresses, "conditions": {"ready": true}},
                      {"addresses": ["10.2.0.9"], "conditions": {"ready": false, "serving": true, "terminating": true}}],
    })
}

#[test]
fn slice_converts_with_owner_cluster_and_conditions() {
    let converted = convert(&slice(
        json!({LABEL_MC_SERVICE_NAME: "web", LABEL_SOURCE_CLUSTER: "cluster-b"}),
        "IPv4",
        json!(["10.2.0.7", "fd00::1", "127.0.0.1"]),
    ));
    let [Object::Slice(slice)] = converted.objects.as_slice() else {
        panic!("{:?}", converted.objects);
    };
    assert_eq!(slice.owner, SliceOwner::Import("web".into()));
    assert_eq!(slice.source_cluster, "cluster-b");
    assert_eq!(
        slice.endpoints[0].addresses,
        vec!["10.2.0.7".parse::<IpAddr>().unwrap()]
    );
    assert!(!slice.endpoints[1].conditions.ready);
    assert!(slice.endpoints[1].conditions.terminating);
    let reasons: Vec<_> = converted.rejections.iter().map(Rejection::reason).collect();
    assert_eq!(reasons, ["address_type_mismatch", "forbidden_ip"]);
}

#[test]
fn slices_of_the_ordinary_controller_are_ignored() {
    let converted = convert(&slice(
        json!({LABEL_MC_SERVICE_NAME: "web", LABEL_MANAGED_BY: MANAGED_BY_ENDPOINTSLICE_CONTROLLER}),
        "IPv4",
        json!(["10.2.0.7"]),
    ));
    assert!(converted.objects.is_empty());
    assert!(converted.rejections.is_empty());
}

#[test]
fn unknown_kinds_and_garbage_are_fatal_rejections() {
    for value in [
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "y"}}),
        json!("just a string"),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "x", "namespace": "y"}, "addressType": 7}),
        json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport", "metadata": {"name": "x"}}),
        json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport", "metadata": {"name": "x", "namespace": "y"}, "spec": {"ports": "nope"}}),
    ] {
        let converted = convert(&value);
        assert!(converted.objects.is_empty(), "{value}");
        assert_eq!(converted.rejections.len(), 1, "{value}");
        assert!(converted.rejections[0].fatal);
    }
}

#[test]
fn gke_import_reads_status_and_derived_service() {
    let converted = convert(&json!({
        "apiVersion": "net.gke.io/v1",
        "kind": "ServiceImport",
        "metadata": {"name": "web", "namespace": "demo",
                     "annotations": {ANNOTATION_GKE_DERIVED_SERVICE: "gke-mcs-abc"}},
        "status": {"ips": ["10.96.0.20"], "ports": [{"port": 80, "protocol": "TCP"}]},
    }));
    let import = only_import(&converted);
    assert_eq!(import.flavour, Flavour::Gke);
    assert_eq!(import.derived_service.as_deref(), Some("gke-mcs-abc"));
    assert_eq!(import.ports[0].port, 80);
    assert_eq!(import.ips.len(), 1);
}
