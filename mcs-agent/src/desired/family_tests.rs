//! IPv6 and dual-stack imports: one frontend set per ClusterSetIP family,
//! each with the endpoints of its own family.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::model::{Problem, manifest};

fn state_of(yaml: &str) -> (DesiredState, Vec<Rejection>) {
    let (snapshot, rejections) = manifest::snapshot_from_yaml(yaml).expect("valid YAML");
    assert!(rejections.is_empty(), "{rejections:?}");
    compute(&snapshot)
}

fn import(ips: &str) -> String {
    format!(
        r#"
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {{name: web, namespace: demo}}
spec:
  ips: {ips}
  ports: [{{name: http, protocol: TCP, port: 80}}, {{name: dns, protocol: UDP, port: 53}}]
"#
    )
}

fn slice(name: &str, cluster: &str, family: &str, addresses: &[&str]) -> String {
    let endpoints: Vec<String> = addresses
        .iter()
        .map(|a| format!("- addresses: [\"{a}\"]"))
        .collect();
    format!(
        r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: demo, labels: {{multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: {cluster}}}}}
addressType: {family}
ports: [{{name: http, protocol: TCP, port: 8080}}, {{name: dns, protocol: UDP, port: 5353}}]
endpoints:
{}
"#,
        endpoints.join("\n")
    )
}

const VIP4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);

fn frontend(addr: impl Into<IpAddr>, port: u16, protocol: Protocol) -> Frontend {
    Frontend {
        addr: addr.into(),
        port,
        protocol,
    }
}

fn addresses(state: &DesiredState, frontend: &Frontend) -> Vec<IpAddr> {
    state.frontends[frontend]
        .backends
        .iter()
        .map(|b| b.addr)
        .collect()
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

/// Two clusters each exporting both families.
fn dual_stack() -> String {
    import(r#"["10.96.0.10", "fd00:96::10"]"#)
        + &slice("web-a4", "a", "IPv4", &["10.1.0.1"])
        + &slice("web-a6", "a", "IPv6", &["fd00:1::1"])
        + &slice("web-b4", "b", "IPv4", &["10.2.0.1"])
        + &slice("web-b6", "b", "IPv6", &["fd00:2::1", "fd00:2::2"])
}

#[test]
fn an_ipv6_import_is_served_by_ipv6_endpoints_of_every_cluster() {
    let yaml = import(r#"["fd00:96::10"]"#)
        + &slice("web-a6", "a", "IPv6", &["fd00:1::1"])
        + &slice("web-b6", "b", "IPv6", &["fd00:2::1"]);
    let (state, rejections) = state_of(&yaml);
    assert!(rejections.is_empty(), "{rejections:?}");
    // Two service ports and the two markers, all IPv6.
    assert_eq!(state.frontends.len(), 4);
    assert!(state.frontends.keys().all(|f| f.family() == IpFamily::V6));
    let http = frontend(VIP6, 80, Protocol::Tcp);
    assert_eq!(addresses(&state, &http), [ip("fd00:1::1"), ip("fd00:2::1")]);
    let clusters: Vec<&str> = state.frontends[&http]
        .backends
        .iter()
        .map(|b| &*b.cluster)
        .collect();
    assert_eq!(clusters, ["a", "b"]);
    assert!(
        state.frontends[&http]
            .backends
            .iter()
            .all(|b| b.port == 8080)
    );
    let dns = frontend(VIP6, 53, Protocol::Udp);
    assert_eq!(state.frontends[&dns].backends.len(), 2);
    assert!(
        state.frontends[&dns]
            .backends
            .iter()
            .all(|b| b.port == 5353)
    );
    assert_eq!(
        state.frontends[&frontend(VIP6, 0, Protocol::Tcp)].kind,
        FrontendKind::VipMarker
    );
}

#[test]
fn a_dual_stack_import_gives_each_family_its_own_endpoints() {
    let (state, rejections) = state_of(&dual_stack());
    assert!(rejections.is_empty(), "{rejections:?}");
    assert_eq!(state.frontends.len(), 8);
    let http4 = frontend(VIP4, 80, Protocol::Tcp);
    let http6 = frontend(VIP6, 80, Protocol::Tcp);
    assert_eq!(addresses(&state, &http4), [ip("10.1.0.1"), ip("10.2.0.1")]);
    assert_eq!(
        addresses(&state, &http6),
        [ip("fd00:1::1"), ip("fd00:2::1"), ip("fd00:2::2")]
    );
    // Same name and import for both families (one service, two addresses).
    assert_eq!(state.frontends[&http4].name, state.frontends[&http6].name);
}

#[test]
fn locality_and_terminating_fallback_apply_per_family() {
    let yaml = dual_stack().replace(
        "- addresses: [\"fd00:2::2\"]",
        "- addresses: [\"fd00:2::2\"]\n  conditions: {ready: false, serving: true, terminating: true}",
    );
    let (snapshot, _) = manifest::snapshot_from_yaml(&yaml).expect("valid YAML");
    let policy = Policy {
        local_cluster: Some("b".into()),
        locality: Locality::LocalFirst,
        ..Policy::default()
    };
    let (state, _) = compute_with(&snapshot, &policy);
    let http6 = frontend(VIP6, 80, Protocol::Tcp);
    // Local first: cluster b's ready IPv6 endpoint only.
    assert_eq!(addresses(&state, &http6), [ip("fd00:2::1")]);
    assert_eq!(
        addresses(&state, &frontend(VIP4, 80, Protocol::Tcp)),
        [ip("10.2.0.1")]
    );
}

#[test]
fn a_family_without_endpoints_is_a_typed_rejection_and_still_programmed() {
    // Dual-stack ClusterSetIPs, but every cluster exports IPv4 only.
    let yaml = import(r#"["10.96.0.10", "fd00:96::10"]"#)
        + &slice("web-a4", "a", "IPv4", &["10.1.0.1"])
        + &slice("web-b4", "b", "IPv4", &["10.2.0.1"]);
    let (state, rejections) = state_of(&yaml);
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert!(!rejections[0].fatal);
    assert!(matches!(
        rejections[0].problem,
        Problem::NoEndpointsOfFamily { vip: IpAddr::V6(vip), family: IpFamily::V6 } if vip == VIP6
    ));
    // The IPv6 frontends exist without backends, so the datapath refuses
    // their connections instead of letting them through.
    let http6 = frontend(VIP6, 80, Protocol::Tcp);
    assert!(state.frontends[&http6].backends.is_empty());
    assert_eq!(
        addresses(&state, &frontend(VIP4, 80, Protocol::Tcp)).len(),
        2
    );
    // Not yet exported anywhere: no rejection (nothing to report).
    let (_, rejections) = state_of(&import(r#"["fd00:96::10"]"#));
    assert!(rejections.is_empty(), "{rejections:?}");
}

#[test]
fn two_clusterset_ips_of_one_family_are_a_typed_rejection() {
    let yaml =
        import(r#"["fd00:96::10", "fd00:96::11"]"#) + &slice("web-a6", "a", "IPv6", &["fd00:1::1"]);
    let (snapshot, rejections) = manifest::snapshot_from_yaml(&yaml).expect("valid YAML");
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert!(matches!(
        rejections[0].problem,
        Problem::SameFamilyIps { family: IpFamily::V6, value, .. } if value == ip("fd00:96::11")
    ));
    // The first address is served.
    let (state, _) = compute(&snapshot);
    assert!(state.frontends.keys().all(|f| f.addr == IpAddr::V6(VIP6)));
    assert_eq!(state.frontends.len(), 4);
}

#[test]
fn cluster_cidrs_of_either_family_guard_ipv6_endpoints() {
    let (snapshot, _) = manifest::snapshot_from_yaml(&dual_stack()).expect("valid YAML");
    let policy = Policy {
        cluster_cidrs: "a=10.1.0.0/16,a=fd00:1::/64,b=10.2.0.0/16"
            .parse()
            .expect("valid"),
        ..Policy::default()
    };
    let (state, rejections) = compute_with(&snapshot, &policy);
    // Cluster b has no IPv6 range: its IPv6 endpoints are refused.
    assert_eq!(
        addresses(&state, &frontend(VIP6, 80, Protocol::Tcp)),
        [ip("fd00:1::1")]
    );
    assert!(rejections.iter().any(|r| matches!(
        &r.problem,
        Problem::OutsideClusterCidr { value, cluster, .. } if *value == ip("fd00:2::1") && cluster == "b"
    )));
    assert_eq!(
        addresses(&state, &frontend(VIP4, 80, Protocol::Tcp)).len(),
        2
    );
}

/// Issue 20 sizes the agent for a million IPv4 backends: holding either
/// family must not make a backend bigger than an IPv4-only one was (32
/// bytes: a fat `Arc<str>`, an `Ipv4Addr`, port, weight and flag).
#[test]
fn a_backend_of_either_family_stays_as_small_as_an_ipv4_one_was() {
    assert_eq!(std::mem::size_of::<Backend>(), 32);
    // A frontend key grows from 8 to 20 bytes (a ClusterSetIP of either
    // family); frontends are a tenth of the backends.
    assert_eq!(std::mem::size_of::<Frontend>(), 20);
}
