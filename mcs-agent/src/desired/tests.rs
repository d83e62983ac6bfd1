//! Desired state from manifests: ports, clusters, conditions, locality,
//! conflicts and cluster CIDRs.

use super::*;
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use crate::model::manifest;

fn state_of(yaml: &str) -> (DesiredState, Vec<Rejection>) {
    let (snapshot, rejections) = manifest::snapshot_from_yaml(yaml).expect("valid YAML");
    assert!(rejections.is_empty(), "{rejections:?}");
    compute(&snapshot)
}

const TWO_CLUSTERS: &str = r#"
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {name: web, namespace: demo}
spec:
  ips: ["10.96.0.10"]
  ports: [{name: http, protocol: TCP, port: 80}, {name: metrics, protocol: TCP, port: 9090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: demo, labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: a}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}, {name: metrics, protocol: TCP, port: 9100}]
endpoints:
- addresses: ["10.1.0.1"]
- addresses: ["10.1.0.2"]
  conditions: {ready: false, serving: true, terminating: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: demo, labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: b}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8081}]
endpoints:
- addresses: ["10.2.0.1", "10.1.0.1"]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other, namespace: elsewhere, labels: {multicluster.kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 1}]
endpoints: [{addresses: ["10.9.9.9"]}]
"#;

fn frontend(port: u16) -> Frontend {
    Frontend {
        addr: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
        port,
        protocol: Protocol::Tcp,
    }
}

#[test]
fn backends_merge_clusters_per_port_with_their_target_ports() {
    let (state, rejections) = state_of(TWO_CLUSTERS);
    assert!(rejections.is_empty(), "{rejections:?}");
    let http = &state.frontends[&frontend(80)];
    let addrs: Vec<_> = http
        .backends
        .iter()
        .map(|b| (b.addr.to_string(), b.port, &*b.cluster))
        .collect();
    // Ready only, target port per cluster, other namespaces ignored.
    assert_eq!(
        addrs,
        [
            ("10.1.0.1".into(), 8080, "a"),
            ("10.1.0.1".into(), 8081, "b"),
            ("10.2.0.1".into(), 8081, "b")
        ]
    );
    // Only cluster a exposes `metrics`: b must never get its traffic.
    let metrics = &state.frontends[&frontend(9090)];
    assert_eq!(metrics.backends.len(), 1);
    assert_eq!(&*metrics.backends[0].cluster, "a");
    assert_eq!(http.name, "demo/web:http");
    // Markers for fragment handling, one per protocol.
    assert_eq!(state.frontends[&frontend(0)].kind, FrontendKind::VipMarker);
    assert_eq!(state.service_frontends().count(), 2);
}

#[test]
fn duplicate_addresses_across_slices_are_merged() {
    let yaml = TWO_CLUSTERS
        .replace("10.2.0.1", "10.1.0.1")
        .replace("8081", "8080");
    let (state, _) = state_of(&yaml);
    assert_eq!(state.frontends[&frontend(80)].backends.len(), 1);
}

#[test]
fn conflicting_frontends_first_import_wins() {
    let second =
        TWO_CLUSTERS.replacen("name: web, namespace: demo", "name: zz, namespace: demo", 1);
    let (state, rejections) = state_of(&format!(
        "{TWO_CLUSTERS}\n---\n{}",
        second.split("---").next().unwrap()
    ));
    assert_eq!(state.frontends[&frontend(80)].import.name, "web");
    assert_eq!(rejections.len(), 2, "{rejections:?}");
    assert!(
        rejections
            .iter()
            .all(|r| r.object.name == "zz" && r.reason() == "conflict")
    );
}

#[test]
fn headless_imports_get_no_frontend() {
    let yaml = TWO_CLUSTERS.replace("ips: [\"10.96.0.10\"]", "type: Headless");
    let (state, _) = state_of(&yaml);
    assert!(state.frontends.is_empty());
}

#[test]
fn derived_service_slices_back_gke_imports() {
    let yaml = r#"
apiVersion: net.gke.io/v1
kind: ServiceImport
metadata: {name: web, namespace: demo, annotations: {net.gke.io/derived-service: gke-mcs-x}}
spec: {ips: ["10.96.0.10"], ports: [{name: http, protocol: TCP, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: gke-mcs-x-abc, namespace: demo, labels: {kubernetes.io/service-name: gke-mcs-x, endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints: [{addresses: ["10.3.0.1"]}]
"#;
    let (state, _) = state_of(yaml);
    assert_eq!(state.frontends[&frontend(80)].backends.len(), 1);
}

#[test]
fn terminating_endpoints_serve_only_when_none_is_ready() {
    let (state, _) = state_of(TWO_CLUSTERS);
    // 10.1.0.2 is serving+terminating but ready ones exist.
    assert!(
        state.frontends[&frontend(80)]
            .backends
            .iter()
            .all(|b| !b.terminating)
    );
    let none_ready = TWO_CLUSTERS
        .replace("- addresses: [\"10.1.0.1\"]\n", "")
        .replace(
            "- addresses: [\"10.2.0.1\", \"10.1.0.1\"]",
            "- addresses: [\"10.2.0.1\"]\n  conditions: {ready: false, serving: false}",
        );
    let (state, _) = state_of(&none_ready);
    let backends = &state.frontends[&frontend(80)].backends;
    assert_eq!(backends.len(), 1, "{backends:?}");
    assert_eq!(backends[0].addr, Ipv4Addr::new(10, 1, 0, 2));
    assert!(backends[0].terminating);
}

fn with_policy(yaml: &str, locality: &str, local: &str) -> Vec<Backend> {
    let (snapshot, _) = manifest::snapshot_from_yaml(yaml).expect("valid YAML");
    let policy = Policy {
        local_cluster: Some(local.to_owned()),
        locality: locality.parse().expect("valid locality"),
        ..Policy::default()
    };
    let (state, _) = compute_with(&snapshot, &policy);
    state.frontends[&frontend(80)].backends.clone()
}

#[test]
fn local_first_keeps_the_local_cluster_and_spills_over() {
    let local = with_policy(TWO_CLUSTERS, "local-first", "b");
    assert!(
        local.iter().all(|b| &*b.cluster == "b") && local.len() == 2,
        "{local:?}"
    );
    let spill = with_policy(TWO_CLUSTERS, "local-first", "elsewhere");
    assert_eq!(spill.len(), 3);
}

#[test]
fn weights_split_a_cluster_share_over_its_endpoints() {
    let backends = with_policy(TWO_CLUSTERS, "weighted:a=2,b=1", "a");
    let weight = |cluster: &str| -> u32 {
        backends
            .iter()
            .filter(|b| &*b.cluster == cluster)
            .map(|b| b.weight)
            .sum()
    };
    // a: one endpoint with 2/3; b: two endpoints sharing 1/3.
    assert_eq!(weight("a"), 2 * weight("b"));
    let only_a = with_policy(TWO_CLUSTERS, "weighted:a=1", "a");
    assert!(only_a.iter().all(|b| &*b.cluster == "a"));
    let unlisted = with_policy(TWO_CLUSTERS, "weighted:zz=1", "a");
    assert_eq!(unlisted.len(), 3, "no listed cluster: share alike");
}

#[test]
fn locality_parsing() {
    assert_eq!("none".parse::<Locality>(), Ok(Locality::None));
    assert!("weighted:a=x".parse::<Locality>().is_err());
    assert!("weighted:a=0".parse::<Locality>().is_err());
    assert!("nearest".parse::<Locality>().is_err());
    let annotated = TWO_CLUSTERS.replacen(
        "metadata: {name: web, namespace: demo}",
        "metadata: {name: web, namespace: demo, annotations: {dataplane.mcs.dev/locality: local-first}}",
        1,
    );
    let local = with_policy(&annotated, "none", "a");
    assert!(
        local.iter().all(|b| &*b.cluster == "a"),
        "annotation overrides the agent policy"
    );
}

#[test]
fn affinity_reaches_the_frontend() {
    let yaml = TWO_CLUSTERS.replace(
        "ports: [{name: http, protocol: TCP, port: 80}, {name: metrics, protocol: TCP, port: 9090}]",
        "ports: [{name: http, protocol: TCP, port: 80}, {name: metrics, protocol: TCP, port: 9090}]\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}",
    );
    let (state, _) = state_of(&yaml);
    assert_eq!(state.frontends[&frontend(80)].affinity_timeout, Some(30));
}

#[test]
fn cluster_cidrs_keep_a_cluster_from_hijacking_another() {
    let (snapshot, _) = manifest::snapshot_from_yaml(TWO_CLUSTERS).expect("valid YAML");
    let policy = Policy {
        // b may only publish 10.2.0.0/16: its 10.1.0.1 is refused.
        cluster_cidrs: "a=10.1.0.0/16, b=10.2.0.0/16".parse().expect("valid list"),
        ..Policy::default()
    };
    let (state, rejections) = compute_with(&snapshot, &policy);
    let http: Vec<_> = state.frontends[&frontend(80)]
        .backends
        .iter()
        .map(|b| (b.addr.to_string(), b.cluster.clone()))
        .collect();
    assert_eq!(
        http,
        [
            ("10.1.0.1".into(), "a".into()),
            ("10.2.0.1".into(), "b".into())
        ]
    );
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert_eq!(rejections[0].reason(), "outside_cluster_cidr");
    assert_eq!(rejections[0].object.name, "web-b");
    // Unlisted clusters publish nothing once a list is given.
    let only_a = Policy {
        cluster_cidrs: "a=10.0.0.0/8".parse().expect("valid"),
        ..Policy::default()
    };
    let (state, _) = compute_with(&snapshot, &only_a);
    assert!(
        state.frontends[&frontend(80)]
            .backends
            .iter()
            .all(|b| &*b.cluster == "a")
    );
    assert!("a=10.0.0.0/33".parse::<ClusterCidrs>().is_err());
    assert!("a".parse::<ClusterCidrs>().is_err());
}

/// An import claiming a ClusterSetIP outside `--clusterset-ip-cidrs` (say
/// the API server's address) is not served there, with a typed rejection;
/// without the flag every address is served as before.
#[test]
fn clusterset_ip_cidrs_keep_an_import_from_capturing_other_addresses() {
    let yaml = format!(
        "{TWO_CLUSTERS}---\n{}",
        r#"
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {name: rogue, namespace: demo}
spec:
  ips: ["192.168.1.1"]
  ports: [{name: https, protocol: TCP, port: 443}]
"#
    );
    let (snapshot, rejections) = manifest::snapshot_from_yaml(&yaml).expect("valid YAML");
    assert!(rejections.is_empty(), "{rejections:?}");
    let vips = |state: &DesiredState| -> BTreeSet<Ipv4Addr> {
        state
            .frontends
            .keys()
            .filter_map(|f| match f.addr {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .collect()
    };
    let (unchecked, rejections) = compute_with(&snapshot, &Policy::default());
    let state = &unchecked;
    assert_eq!(
        vips(state),
        BTreeSet::from([Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(192, 168, 1, 1)])
    );
    assert!(rejections.is_empty(), "{rejections:?}");

    let policy = Policy {
        clusterset_ip_cidrs: "10.96.0.0/16, fd00:96::/108".parse().expect("valid list"),
        ..Policy::default()
    };
    let (state, rejections) = compute_with(&snapshot, &policy);
    assert_eq!(vips(&state), BTreeSet::from([Ipv4Addr::new(10, 96, 0, 10)]));
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert_eq!(rejections[0].reason(), "outside_clusterset_ip_cidrs");
    assert_eq!(rejections[0].object.name, "rogue");
    assert!(
        matches!(
            rejections[0].problem,
            crate::model::Problem::OutsideClustersetIpCidrs { value, .. }
                if value == IpAddr::from([192, 168, 1, 1])
        ),
        "{rejections:?}"
    );
    assert!(!rejections[0].fatal);
    // The other import is untouched.
    assert_eq!(
        state.frontends[&frontend(80)],
        unchecked.frontends[&frontend(80)]
    );

    assert!("10.96.0.0/33".parse::<ClustersetIpCidrs>().is_err());
    assert!("10.96.0.1".parse::<ClustersetIpCidrs>().is_err());
    assert_eq!(
        "".parse::<ClustersetIpCidrs>(),
        Ok(ClustersetIpCidrs::default())
    );
}
