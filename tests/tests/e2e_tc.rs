//! End-to-end tests of the tc hook with real traffic, the agent run the way
//! the DaemonSet runs it: no interface listed by hand, pod interfaces found
//! by glob (`--pod-interfaces v-*`) at start and from link notifications
//! later, nothing on the node's uplink (replies of remote backends are
//! reverse-translated on the way into the client's pod interface). The
//! standard ClusterSet of `mcs_tests::scenario`, the agent on node a1.
//!
//! Run as root: `cargo xtask test`, or `cargo build -p mcs-agent &&
//! cargo test -p mcs-tests --test e2e_tc -- --include-ignored`.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{Ipv4Addr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use mcs_tests::{
    client::{HttpConn, UdpClient},
    load::{BackgroundLoad, LoadPattern},
    manifest::Protocol,
    require_root,
    scenario::{
        self, APPLY_TIMEOUT, BACKENDS, CLIENT_NODE, CLUSTER_A, ClusterSet, HTTP_PORT, Hooks,
        ServerPod, UDP_PORT, VIP, tc_attached,
    },
    servers::Identity,
    topology::{self, Topology},
};

/// A pod started after the agent (on the client's node).
const LATE_POD: &str = "a-late";
const LATE_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 101, 1, 101);
/// The time the spec allows from a pod interface's appearance to its
/// traffic being balanced.
const ATTACH_WITHIN: Duration = Duration::from_secs(1);

/// The ClusterSet listing `endpoints`, served by a tc agent started with
/// `agent_args`.
fn tc_cluster_set_of(endpoints: &[(ServerPod, bool)], agent_args: &[&str]) -> ClusterSet {
    require_root();
    let yaml = scenario::manifest(endpoints).to_yaml();
    let mut set = ClusterSet::create(&yaml, &|_| {}).expect("building the ClusterSet");
    set.use_hooks(Hooks::Tc);
    set.start_agent_with(agent_args)
        .expect("starting mcs-agent");
    set
}

fn tc_cluster_set() -> ClusterSet {
    tc_cluster_set_of(&scenario::all_backends_ready(), &[])
}

fn teardown(set: ClusterSet) {
    let prefix = set.topology().prefix().to_owned();
    drop(set);
    assert_eq!(
        Topology::leftovers(&prefix).expect("listing namespaces"),
        Vec::<String>::new(),
        "namespaces left behind"
    );
}

/// `n` new connections from pod `pod` to the ClusterSetIP; the answers per
/// backend. Each must show the ClusterSetIP as peer and reach the backend
/// from the pod's own address.
fn vip_connections_from(set: &ClusterSet, pod: &str, n: usize) -> BTreeMap<Identity, usize> {
    let ns = &set.topology().pod(pod).expect("pod").netns;
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let reply = HttpConn::connect(ns, scenario::vip_http())
            .and_then(HttpConn::get_and_close)
            .unwrap_or_else(|e| panic!("{pod}: connection {i}: {e:#}"));
        assert_eq!(
            reply.peer,
            scenario::vip_http(),
            "the pod sees the ClusterSetIP"
        );
        assert_eq!(reply.seen_by_backend, reply.local, "no SNAT");
        *seen.entry(reply.backend).or_default() += 1;
    }
    seen
}

fn assert_all_backends(seen: &BTreeMap<Identity, usize>, what: &str) {
    for pod in BACKENDS {
        assert!(
            seen.contains_key(&pod.identity()),
            "{what}: {} never answered: {seen:?}",
            pod.name
        );
    }
}

/// Waits until tc is attached to `iface`; the time it took from `since`.
fn wait_for_tc(set: &mut ClusterSet, iface: &str, since: Instant) -> Duration {
    let agent = set.agent().expect("agent");
    while !tc_attached(agent.bpffs_dir(), iface) {
        agent.ensure_running().expect("agent running");
        assert!(
            since.elapsed() < APPLY_TIMEOUT,
            "tc never attached to {iface}; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    since.elapsed()
}

/// Retries a connection to the ClusterSetIP from pod `pod` until one is
/// answered; the time from `since` to that answer.
fn first_answer(set: &ClusterSet, pod: &str, since: Instant) -> Duration {
    let ns = &set.topology().pod(pod).expect("pod").netns;
    loop {
        let answered = ns
            .enter(|| TcpStream::connect_timeout(&scenario::vip_http(), Duration::from_millis(50)))
            .expect("enter the pod")
            .is_ok();
        if answered {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < APPLY_TIMEOUT,
            "{pod} never reached the ClusterSetIP"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ----- tests --------------------------------------------------------------

/// Every hop verifies checksums: node and router interfaces have transmit
/// offload off (partial checksums are completed in software and verified
/// by the next receiver), and with `pods_tx_off` the pods send full ones.
/// TCP with bulk data both ways and UDP through the ClusterSetIP, no
/// checksum error anywhere. The tc helpers follow the buffer's checksum
/// state, so unlike XDP on a veth there is no residual case to keep out.
fn checksums_are_verified(pods_tx_off: bool) {
    let set = tc_cluster_set();
    let topo = set.topology();
    topo.set_infra_tx_checksum(false)
        .expect("tx off on nodes and router");
    if pods_tx_off {
        topo.set_pod_tx_checksum(false).expect("tx off in pods");
    }
    let client = set.client().expect("client");
    let mut seen = BTreeMap::<Identity, usize>::new();
    for i in 0..30 {
        let fail = |e: anyhow::Error| -> ! {
            panic!(
                "connection {i}: {e:#}\n{:?}",
                set.topology().check_no_csum_errors()
            )
        };
        let mut conn = HttpConn::connect(client, scenario::vip_http()).unwrap_or_else(|e| fail(e));
        let small = conn.get().unwrap_or_else(|e| fail(e));
        let bulk = conn.transfer(20_000, 20_000).unwrap_or_else(|e| fail(e));
        assert_eq!(bulk.backend, small.backend);
        *seen.entry(small.backend).or_default() += 1;
    }
    assert_all_backends(&seen, "TCP through tc");
    let udp = UdpClient::bind(client, 0).expect("UDP socket");
    let mut answered = BTreeMap::<Identity, usize>::new();
    for i in 0..30 {
        // A new flow each: a new source port.
        let socket = UdpClient::bind(client, 0).expect("UDP socket");
        let reply = socket
            .request(scenario::vip_udp(), &format!("{i}:{}", "x".repeat(1200)))
            .unwrap_or_else(|e| panic!("datagram {i}: {e:#}"));
        assert_eq!(
            reply.from,
            scenario::vip_udp(),
            "UDP answers come from the ClusterSetIP"
        );
        *answered.entry(reply.backend).or_default() += 1;
    }
    drop(udp);
    assert_all_backends(&answered, "UDP through tc");
    set.topology().assert_no_csum_errors();
    teardown(set);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn tc_checksums_partial_from_pods() {
    checksums_are_verified(false);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn tc_checksums_full_from_pods() {
    checksums_are_verified(true);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_pod_created_after_the_agent_is_balanced_within_a_second() {
    let mut set = tc_cluster_set();
    let iface = format!("v-{LATE_POD}");
    let created = Instant::now();
    set.topology_mut()
        .add_pod(CLUSTER_A, CLIENT_NODE, LATE_POD, LATE_POD_IP)
        .expect("start a pod after the agent");
    let attached = wait_for_tc(&mut set, &iface, created);
    let answered = first_answer(&set, LATE_POD, created);
    eprintln!("late pod: tc attached after {attached:?}, first answer after {answered:?}");
    assert!(
        answered <= ATTACH_WITHIN,
        "the pod's first connection was answered {answered:?} after its interface appeared"
    );
    let seen = vip_connections_from(&set, LATE_POD, 30);
    assert_all_backends(&seen, "the late pod");
    teardown(set);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_pod_interface_deleted_and_recreated_is_served_again() {
    let mut set = tc_cluster_set();
    let iface = format!("v-{}", scenario::CLIENT);
    for round in 0..2 {
        let recreated = Instant::now();
        set.topology()
            .recreate_pod_link(scenario::CLIENT)
            .expect("recreate the client's veth");
        let answered = first_answer(&set, scenario::CLIENT, recreated);
        assert!(
            answered <= ATTACH_WITHIN,
            "round {round}: answered {answered:?} after the interface came back"
        );
        assert!(tc_attached(set.agent().expect("agent").bpffs_dir(), &iface));
        let seen = vip_connections_from(&set, scenario::CLIENT, 30);
        assert_all_backends(&seen, "after the interface came back");
    }
    // A pod that goes away for good takes its pins with it.
    let gone = format!("v-{}", BACKENDS[0].name);
    let node = set.topology().node(CLIENT_NODE).expect("node");
    node.netns
        .ip(&["link", "del", &gone])
        .expect("delete a pod's veth");
    let agent = set.agent().expect("agent");
    let deadline = Instant::now() + APPLY_TIMEOUT;
    while agent.bpffs_dir().join("tc").join(&gone).exists() {
        assert!(Instant::now() < deadline, "pins of {gone} never removed");
        std::thread::sleep(Duration::from_millis(20));
    }
    teardown(set);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn sigkill_under_load_with_tc_links_fails_no_request() {
    let mut set = tc_cluster_set();
    let load = BackgroundLoad::start(
        mcs_tests::netns::path_of(set.client().expect("client").name()),
        scenario::vip_http(),
        LoadPattern::EstablishedAndNew,
    );
    let wait = Duration::from_secs(60);
    load.wait_for(300, wait);
    let killed = set
        .kill_agent_keeping_dataplane()
        .expect("SIGKILL the agent");
    assert!(!killed.status.success());
    let pod_ifaces = set.topology().pod_ifaces(CLIENT_NODE);
    for iface in &pod_ifaces {
        assert!(
            tc_attached(killed.dataplane.dir(), iface),
            "{iface}: tc links pinned after SIGKILL"
        );
    }
    let at_kill = load.sent();
    load.wait_for(at_kill + 400, wait);
    set.adopt_agent(killed.dataplane, &[])
        .expect("successor agent");
    let at_adopt = load.sent();
    load.wait_for(at_adopt.max(1100) + 200, wait);
    let totals = load.stop().expect("load");
    totals.assert_all_answered(1000, "SIGKILL and adoption with tc links");
    eprintln!(
        "tc sigkill test: {} requests, {} failed (kill at {at_kill}, adopted at {at_adopt})",
        totals.sent, totals.failed
    );
    let seen = vip_connections_from(&set, scenario::CLIENT, 30);
    assert_all_backends(&seen, "after adoption");
    teardown(set);
}

/// A service without endpoints: TCP gets a RST and UDP an ICMP port
/// unreachable at once, built by tc and sent straight back into the pod,
/// with checksums verified (transmit offload off on the node's side of the
/// pod's veth completes a partial one in software; the pod then verifies).
fn refusals_reach_the_pod(pods_tx_off: bool) {
    let set = tc_cluster_set_of(&[], &[]);
    set.topology()
        .set_infra_tx_checksum(false)
        .expect("tx off on the nodes");
    if pods_tx_off {
        set.topology()
            .set_pod_tx_checksum(false)
            .expect("tx off in pods");
    }
    let client = set.client().expect("client");
    for _ in 0..5 {
        let started = Instant::now();
        let refused = client
            .enter(|| TcpStream::connect_timeout(&scenario::vip_http(), Duration::from_secs(3)))
            .expect("enter the client");
        let error = refused.expect_err("no backend: the connection is refused");
        assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once"
        );

        let udp_error = client
            .enter(|| -> std::io::Result<()> {
                let socket = UdpSocket::bind("0.0.0.0:0")?;
                socket.set_read_timeout(Some(Duration::from_secs(3)))?;
                socket.connect(scenario::vip_udp())?;
                socket.send(b"anyone?")?;
                let mut buf = [0u8; 64];
                socket.recv(&mut buf).map(|_| ())
            })
            .expect("enter the client")
            .expect_err("no backend: the datagram is refused");
        assert_eq!(
            udp_error.kind(),
            ErrorKind::ConnectionRefused,
            "{udp_error}"
        );
    }
    set.topology().assert_no_csum_errors();
    let dump = set.agent_ref().expect("agent").dump().expect("dump");
    let refused: u64 = [(HTTP_PORT, Protocol::Tcp), (UDP_PORT, Protocol::Udp)]
        .into_iter()
        .map(|(port, proto)| {
            dump.service(VIP, port, proto)
                .map_or(0, |svc| svc.stats.no_backend)
        })
        .sum();
    assert!(refused >= 10, "refusals counted: {refused}");
    teardown(set);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn tc_refusals_reach_the_pod_partial_checksums() {
    refusals_reach_the_pod(false);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn tc_refusals_reach_the_pod_full_checksums() {
    refusals_reach_the_pod(true);
}

/// The program ids of mcs's clsact filters on `iface` (client's node) in
/// `direction`, one per filter `tc filter show` lists.
fn mcs_filter_programs(set: &ClusterSet, iface: &str, direction: &str) -> Vec<u32> {
    let node = &set.topology().node(CLIENT_NODE).expect("node").netns;
    let shown = topology::tc_filters(node, iface, direction).expect("tc filter show");
    shown
        .lines()
        .filter(|line| line.contains(&format!("mcs_tc_{direction}")))
        .map(|line| {
            let mut words = line.split_whitespace();
            words
                .find(|&word| word == "id")
                .and_then(|_| words.next())
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("{direction}: no program id in {line:?}"))
        })
        .collect()
}

/// Kernels without TCX get clsact filters (`--tc-attach netlink`): they
/// serve, outlive a SIGKILLed agent (the kernel keeps them), are replaced in
/// place by the next agent's programs, and `cleanup` deletes them.
#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn clsact_filters_serve_outlive_the_agent_and_are_cleaned_up() {
    const NETLINK: [&str; 2] = ["--tc-attach", "netlink"];
    const DIRECTIONS: [&str; 2] = ["ingress", "egress"];
    let mut set = tc_cluster_set_of(&scenario::all_backends_ready(), &NETLINK);
    let iface = format!("v-{}", scenario::CLIENT);
    let first: Vec<Vec<u32>> = DIRECTIONS
        .iter()
        .map(|direction| mcs_filter_programs(&set, &iface, direction))
        .collect();
    for (direction, programs) in DIRECTIONS.iter().zip(&first) {
        assert_eq!(programs.len(), 1, "{direction}: one filter: {programs:?}");
    }
    assert_all_backends(&vip_connections_from(&set, scenario::CLIENT, 30), "clsact");
    let killed = set.kill_agent_keeping_dataplane().expect("SIGKILL");
    assert_all_backends(
        &vip_connections_from(&set, scenario::CLIENT, 30),
        "clsact with no agent running",
    );
    set.adopt_agent(killed.dataplane, &NETLINK)
        .expect("successor");
    for (direction, before) in DIRECTIONS.iter().zip(&first) {
        let now = mcs_filter_programs(&set, &iface, direction);
        assert_eq!(
            now.len(),
            1,
            "{direction}: replaced in place, not added: {now:?}"
        );
        assert_ne!(&now, before, "{direction}: the successor's program serves");
    }
    assert_all_backends(
        &vip_connections_from(&set, scenario::CLIENT, 30),
        "after adoption",
    );
    let stopped = set.stop_agent_keeping_dataplane().expect("stop");
    stopped.dataplane.cleanup().expect("cleanup");
    for direction in DIRECTIONS {
        let now = mcs_filter_programs(&set, &iface, direction);
        assert!(now.is_empty(), "{direction} after cleanup: {now:?}");
    }
    teardown(set);
}
