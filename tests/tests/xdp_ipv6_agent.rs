//! The agent programs IPv6 and dual-stack imports itself: a manifest goes
//! through the agent's desired state and reconciler into the pinned-layout
//! maps, and the loaded programs (BPF_PROG_TEST_RUN, XDP and tc) translate
//! each family's packets to that family's backends with exact checksums.
//! Root only (loads BPF): `cargo xtask test`.

use std::net::{Ipv4Addr, Ipv6Addr};

use mcs_agent::{
    dataplane::{
        MapSizes,
        test_run::{SkbChecksum, XdpTestRun},
    },
    dump,
};
use mcs_common::programs;
use mcs_tests::{
    packet::{Csum, Packet, Packet6, Proto, verify, verify6},
    require_root,
};

const XDP_PASS: u32 = 2;
/// tc's "continue" verdict.
const TC_NEXT: i32 = -1;

const VIP4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 101, 1, 2);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x101, 1, 0, 0, 0, 0, 2);

/// A dual-stack import exported by two clusters, each with one endpoint per
/// family; `ips` chooses the ClusterSetIPs.
fn manifest(ips: &str) -> String {
    let slice = |name: &str, cluster: &str, family: &str, address: &str| {
        format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: demo, labels: {{multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: {cluster}}}}}
addressType: {family}
ports: [{{name: http, protocol: TCP, port: 8080}}, {{name: dns, protocol: UDP, port: 5353}}]
endpoints: [{{addresses: [\"{address}\"]}}]
"
        )
    };
    format!(
        "apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {{name: web, namespace: demo}}
spec:
  ips: {ips}
  ports: [{{name: http, protocol: TCP, port: 80}}, {{name: dns, protocol: UDP, port: 53}}]
"
    ) + &slice("web-a4", "a", "IPv4", "10.101.1.10")
        + &slice("web-a6", "a", "IPv6", "fd00:101:1::10")
        + &slice("web-b4", "b", "IPv4", "10.102.1.10")
        + &slice("web-b6", "b", "IPv6", "fd00:102:1::10")
}

fn backends6() -> [Ipv6Addr; 2] {
    ["fd00:101:1::10", "fd00:102:1::10"].map(|a| a.parse().expect("address"))
}

fn backends4() -> [Ipv4Addr; 2] {
    [Ipv4Addr::new(10, 101, 1, 10), Ipv4Addr::new(10, 102, 1, 10)]
}

fn load(yaml: &str) -> XdpTestRun {
    require_root();
    let mut dataplane = XdpTestRun::load(&MapSizes {
        conntrack: 4096,
        ..MapSizes::default()
    })
    .expect("load the programs");
    let report = dataplane.apply_manifest(yaml).expect("apply");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    dataplane
}

/// The frame after XDP and after tc ingress (both must pass it).
fn through_both(dataplane: &XdpTestRun, frame: &[u8]) -> [Vec<u8>; 2] {
    let (action, xdp) = dataplane.run_xdp(programs::XDP, frame).expect("XDP run");
    assert_eq!(action, XDP_PASS);
    let (action, tc) = dataplane
        .run_tc(programs::TC_INGRESS, frame, SkbChecksum::None)
        .expect("tc run");
    assert_eq!(action, TC_NEXT);
    [xdp, tc]
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn an_ipv6_only_import_is_programmed_by_the_agent_and_translated() {
    let dataplane = load(&manifest(r#"["fd00:96::10"]"#));
    assert!(
        dataplane.maps.services.keys().next().is_none(),
        "no IPv4 frontend"
    );
    for (proto, port, target) in [(Proto::Tcp, 80, 8080), (Proto::Udp, 53, 5353)] {
        for sport in 40000..40008 {
            let frame = Packet6::new(proto, CLIENT6, sport, VIP6, port).build();
            for out in through_both(&dataplane, &frame) {
                let seen = verify6(&out, Csum::Full).expect("DNAT checksums");
                assert!(backends6().contains(&seen.dst), "{seen:?}");
                assert_eq!((seen.src, seen.dport), (CLIENT6, target));
            }
        }
    }
    // `dump` lists the IPv6 service with both clusters' backends.
    let report = dump::collect(&dataplane.maps).expect("dump");
    let http = report
        .services
        .iter()
        .find(|s| s.vip == std::net::IpAddr::V6(VIP6) && s.port == 80)
        .expect("the IPv6 service in the dump");
    let clusters: Vec<&str> = http.backends.iter().map(|b| b.cluster.as_str()).collect();
    assert_eq!(clusters.len(), 2);
    assert!(
        clusters.contains(&"a") && clusters.contains(&"b"),
        "{clusters:?}"
    );
    assert!(dump::render_text(&report).contains("[fd00:96::10]:80/TCP"));
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_dual_stack_import_sends_each_family_to_its_own_backends() {
    let dataplane = load(&manifest(r#"["10.96.0.10", "fd00:96::10"]"#));
    let mut reached6 = std::collections::BTreeSet::new();
    let mut reached4 = std::collections::BTreeSet::new();
    for sport in 40000..40064 {
        let frame = Packet6::new(Proto::Tcp, CLIENT6, sport, VIP6, 80).build();
        for out in through_both(&dataplane, &frame) {
            let seen = verify6(&out, Csum::Full).expect("IPv6 DNAT checksums");
            assert!(backends6().contains(&seen.dst), "{seen:?}");
            reached6.insert(seen.dst);
        }
        let frame = Packet::tcp(CLIENT4, sport, VIP4, 80).build();
        for out in through_both(&dataplane, &frame) {
            let seen = verify(&out, Csum::Full).expect("IPv4 DNAT checksums");
            assert!(backends4().contains(&seen.dst), "{seen:?}");
            reached4.insert(seen.dst);
        }
    }
    // Both clusters' backends serve each family.
    assert_eq!(reached6.len(), 2, "{reached6:?}");
    assert_eq!(reached4.len(), 2, "{reached4:?}");
}
