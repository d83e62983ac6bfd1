//! Service semantics end to end, with real sockets through the XDP path in
//! the two-cluster topology: ClientIP affinity, refusal of flows to a
//! service without endpoints (TCP RST, ICMP port unreachable), the
//! terminating-endpoint fallback, a port only one cluster exposes, and
//! cluster locality (local-first, weighted).
//!
//! Needs root; run by `cargo xtask test`.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::ErrorKind,
    net::{TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use mcs_tests::{
    client::{UdpClient, http_get},
    manifest::Protocol,
    scenario::{self, APPLY_TIMEOUT, ClusterSet, HTTP_PORT, UDP_PORT, VIP},
};

const A_WEB1: &str = "10.101.1.10";
const B_WEB1: &str = "10.102.1.10";
const B_WEB2: &str = "10.102.1.11";

/// The import (TCP 80 `http`, UDP 53 `echo`) with `extra_spec` and one
/// slice per `(cluster, ports, endpoints)`; endpoints are `(address,
/// conditions)` in YAML flow syntax.
/// `(cluster, ports in YAML flow syntax, endpoints as (address, conditions))`.
type SliceSpec<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

fn manifest(extra_spec: &str, slices: &[SliceSpec]) -> String {
    let mut yaml = format!(
        "apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceImport\nmetadata: {{name: web, namespace: demo}}\n\
         spec:\n  type: ClusterSetIP\n  ips: [\"{VIP}\"]\n  ports: [{{name: http, protocol: TCP, port: {HTTP_PORT}}}, {{name: echo, protocol: UDP, port: {UDP_PORT}}}]\n{extra_spec}"
    );
    for (cluster, ports, endpoints) in slices {
        yaml.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web-{cluster}, namespace: demo, labels: {{multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: {cluster}}}}}\n\
             addressType: IPv4\nports: {ports}\nendpoints:\n"
        ));
        for (addr, conditions) in *endpoints {
            yaml.push_str(&format!(
                "- addresses: [\"{addr}\"]\n  conditions: {conditions}\n"
            ));
        }
    }
    yaml
}

const BOTH_PORTS: &str =
    "[{name: http, protocol: TCP, port: 8080}, {name: echo, protocol: UDP, port: 5353}]";
const READY: &str = "{ready: true}";

fn standard(extra_spec: &str) -> String {
    manifest(
        extra_spec,
        &[
            ("cluster-a", BOTH_PORTS, &[(A_WEB1, READY)]),
            ("cluster-b", BOTH_PORTS, &[(B_WEB1, READY), (B_WEB2, READY)]),
        ],
    )
}

fn start(yaml: &str, args: &[&str]) -> ClusterSet {
    mcs_tests::require_root();
    let mut set = ClusterSet::create(yaml, &|_| {}).expect("ClusterSet");
    set.start_agent_with(args).expect("agent");
    set
}

fn apply(set: &mut ClusterSet, yaml: &str, backends: usize) {
    set.manifest().write(yaml).expect("manifest");
    set.agent()
        .expect("agent")
        .wait_until(APPLY_TIMEOUT, |d| {
            d.service(VIP, HTTP_PORT, Protocol::Tcp)
                .is_some_and(|s| s.backends.len() == backends)
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Which pods answered `n` new connections, and how often.
fn tcp_spread(set: &ClusterSet, n: usize) -> BTreeMap<String, usize> {
    let client = set.client().expect("client");
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let reply = http_get(client, scenario::vip_http()).expect("request");
        *seen.entry(reply.backend.pod).or_default() += 1;
    }
    seen
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn client_ip_affinity_pins_a_client_across_connections() {
    let mut set = start(
        &standard(
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}\n",
        ),
        &[],
    );
    apply(
        &mut set,
        &standard(
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}\n",
        ),
        3,
    );
    let seen = tcp_spread(&set, 30);
    assert_eq!(
        seen.len(),
        1,
        "30 connections from one client, one backend: {seen:?}"
    );
    // Without affinity the same client spreads.
    apply(&mut set, &standard(""), 3);
    std::thread::sleep(Duration::from_millis(200));
    assert!(tcp_spread(&set, 40).len() > 1);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_service_without_endpoints_refuses_at_once() {
    let set = start(&manifest("", &[("cluster-a", BOTH_PORTS, &[])]), &[]);
    let client = set.client().expect("client");
    let started = Instant::now();
    let refused = client
        .enter(|| TcpStream::connect_timeout(&scenario::vip_http(), Duration::from_secs(3)))
        .expect("enter");
    assert_eq!(
        refused
            .expect_err("no endpoint: the connect must fail")
            .kind(),
        ErrorKind::ConnectionRefused,
        "a RST, not a timeout"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused after {:?}",
        started.elapsed()
    );
    // Connected UDP sees the ICMP port unreachable as ECONNREFUSED.
    let udp_error = client
        .enter(|| {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            socket.connect(scenario::vip_udp())?;
            socket.send(b"anyone?")?;
            let mut buf = [0u8; 64];
            socket.recv(&mut buf).map(|_| ())
        })
        .expect("enter")
        .expect_err("no endpoint: no answer");
    assert_eq!(
        udp_error.kind(),
        ErrorKind::ConnectionRefused,
        "ICMP port unreachable, not a timeout"
    );
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn terminating_endpoints_take_over_when_none_is_ready() {
    let mut set = start(&standard(""), &[]);
    let terminating = "{ready: false, serving: true, terminating: true}";
    let gone = "{ready: false, serving: false, terminating: true}";
    let yaml = manifest(
        "",
        &[
            ("cluster-a", BOTH_PORTS, &[(A_WEB1, gone)]),
            (
                "cluster-b",
                BOTH_PORTS,
                &[(B_WEB1, terminating), (B_WEB2, gone)],
            ),
        ],
    );
    apply(&mut set, &yaml, 1);
    let seen = tcp_spread(&set, 20);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["b-web1"], "{seen:?}");
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_port_only_one_cluster_exposes_stays_in_that_cluster() {
    let only_http = "[{name: http, protocol: TCP, port: 8080}]";
    let yaml = manifest(
        "",
        &[
            ("cluster-a", BOTH_PORTS, &[(A_WEB1, READY)]),
            ("cluster-b", only_http, &[(B_WEB1, READY), (B_WEB2, READY)]),
        ],
    );
    let mut set = start(&yaml, &[]);
    apply(&mut set, &yaml, 3);
    assert_eq!(tcp_spread(&set, 40).len(), 3, "TCP 80 in both clusters");
    let client = set.client().expect("client");
    let mut udp_backends = BTreeSet::new();
    for i in 0..20 {
        let udp = UdpClient::bind(client, 0).expect("bind");
        let reply = udp
            .request(scenario::vip_udp(), &format!("p{i}"))
            .expect("UDP");
        udp_backends.insert(reply.backend.pod);
    }
    assert_eq!(
        udp_backends.into_iter().collect::<Vec<_>>(),
        ["a-web1"],
        "UDP 53 only where exported"
    );
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn locality_local_first_and_weights() {
    let mut set = start(&standard(""), &["--locality", "local-first"]);
    apply(&mut set, &standard(""), 1);
    // The agent runs in cluster-a (--cluster-id cluster-a).
    let local = tcp_spread(&set, 30);
    assert_eq!(local.keys().collect::<Vec<_>>(), ["a-web1"], "{local:?}");
    // Per-import override: weighted 1:3 towards cluster-b.
    let weighted = standard("").replacen(
        "metadata: {name: web, namespace: demo}",
        "metadata: {name: web, namespace: demo, annotations: {dataplane.mcs.dev/locality: \"weighted:cluster-a=1,cluster-b=3\"}}",
        1,
    );
    set.manifest().write(&weighted).expect("manifest");
    std::thread::sleep(Duration::from_millis(500));
    let spread = tcp_spread(&set, 200);
    let in_b =
        spread.get("b-web1").copied().unwrap_or(0) + spread.get("b-web2").copied().unwrap_or(0);
    let share = in_b as f64 / 200.0;
    assert!(
        (0.62..=0.88).contains(&share),
        "cluster-b share {share:.2} (goal 0.75): {spread:?}"
    );
}
