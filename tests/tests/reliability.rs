//! Nothing lost across restarts, faults and stale state, with real traffic
//! in the two-cluster netns topology (`mcs_tests::scenario`): the agent on
//! node a1, a client pod on a1 talking to the ClusterSetIP.
//!
//! * a restart onto a broken source (a file that no longer parses, an API
//!   server that answers 404 for EndpointSlices) keeps the adopted
//!   dataplane serving until the source delivers a complete snapshot;
//! * new connections never reach a backend removed while no agent ran,
//!   whatever conntrack holds for their tuple;
//! * a second agent on the same bpffs directory exits at once and touches
//!   nothing; a start that fails after an ABI change leaves the old
//!   dataplane serving;
//! * closed flows leave conntrack after their timeout.
//!
//! Each test prints the figures docs/reliability.md quotes. Run as root:
//! `cargo xtask test`, or `cargo build -p mcs-agent && cargo test -p
//! mcs-tests --test reliability -- --include-ignored`.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mcs_agent::dump::DumpReport;
use mcs_tests::{
    agent::{self, Dump},
    client::http_get,
    clusterset::http_get_text,
    fake_apiserver::{FakeApiServer, ResourceId},
    load::{BackgroundLoad, LoadPattern},
    manifest::Protocol,
    netns::Netns,
    require_root,
    scenario::{
        self, APPLY_TIMEOUT, BACKENDS, CLIENT_IP, CLIENT_NODE, ClusterSet, HTTP_PORT, ServerPod,
        VIP,
    },
    servers::{Answer, Identity},
    topology,
};
use serde::Deserialize;
use serde_json::Value;

/// Where the agent serves metrics, inside the node's namespace.
const METRICS: &str = "127.0.0.1:19464";

fn metrics_addr() -> SocketAddr {
    METRICS.parse().expect("address")
}

/// The ClusterSet with every backend ready and the agent running with
/// `args`, its maps holding all three backends.
fn cluster_set_with(args: &[&str]) -> ClusterSet {
    require_root();
    let yaml = scenario::manifest(&scenario::all_backends_ready()).to_yaml();
    let mut set = ClusterSet::create(&yaml, &|_| {}).expect("building the ClusterSet");
    set.start_agent_with(args).expect("starting mcs-agent");
    wait_for_backends(&mut set, &BACKENDS);
    set
}

fn node(set: &ClusterSet) -> &Netns {
    &set.topology().node(CLIENT_NODE).expect("node a1").netns
}

/// Waits until the HTTP frontend lists exactly `pods`.
fn wait_for_backends(set: &mut ClusterSet, pods: &[ServerPod]) -> Dump {
    let mut want: Vec<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    want.sort();
    set.agent()
        .expect("agent")
        .wait_until(APPLY_TIMEOUT, |dump| {
            dump.service(VIP, HTTP_PORT, Protocol::Tcp)
                .is_some_and(|svc| svc.backend_addrs() == want)
        })
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn http_backends(dump: &Dump) -> Vec<Ipv4Addr> {
    dump.service(VIP, HTTP_PORT, Protocol::Tcp)
        .map(|svc| svc.backend_addrs())
        .unwrap_or_default()
}

/// `n` new connections to the ClusterSetIP: how many were answered, by
/// backend.
fn answered(set: &ClusterSet, n: usize) -> (usize, BTreeMap<String, usize>) {
    let client = set.client().expect("client");
    let mut by_pod = BTreeMap::new();
    let mut ok = 0;
    for _ in 0..n {
        if let Ok(reply) = http_get(client, scenario::vip_http()) {
            ok += 1;
            *by_pod.entry(reply.backend.pod).or_insert(0) += 1;
        }
    }
    (ok, by_pod)
}

/// `GET path` on the agent's metrics address (in the node's namespace).
fn agent_http(set: &ClusterSet, path: &str) -> (u16, String) {
    node(set)
        .enter(|| http_get_text(metrics_addr(), path))
        .expect("enter the node")
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
}

/// `mcs-agent dump --output json` with conntrack entries of the
/// ClusterSetIP.
fn conntrack_of_vip(dir: &Path) -> DumpReport {
    let output = Command::new(agent::binary())
        .args(["dump", "--output", "json", "--limit", "100000", "--vip"])
        .arg(VIP.to_string())
        .arg("--bpffs-dir")
        .arg(dir)
        .output()
        .expect("mcs-agent dump");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("dump JSON")
}

/// Client ports whose forward TCP entry goes to `backend`.
fn ports_to(report: &DumpReport, backend: Ipv4Addr) -> BTreeSet<u16> {
    report
        .conntrack
        .iter()
        .filter(|e| e.direction == "forward" && e.protocol == "TCP")
        .filter(|e| {
            e.backend
                .parse::<SocketAddrV4>()
                .is_ok_and(|b| *b.ip() == backend)
        })
        .filter_map(|e| e.src.parse::<SocketAddrV4>().ok().map(|s| s.port()))
        .collect()
}

/// Every pin under `dir` with the kernel id of what it holds: equal
/// listings mean the same maps and links, untouched.
fn pins(dir: &Path) -> BTreeMap<String, u32> {
    let mut listing = BTreeMap::new();
    for sub in ["maps", "links", "replaced"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let id = aya::maps::MapInfo::from_pin(&path)
                .map(|info| info.id())
                .or_else(|_| {
                    aya::programs::links::PinnedLink::from_pin(&path)
                        .map_err(|e| e.to_string())
                        .and_then(|link| {
                            aya::programs::links::FdLink::from(link)
                                .info()
                                .map(|info| info.id())
                                .map_err(|e| e.to_string())
                        })
                        .map_err(|_| ())
                })
                .unwrap_or(0);
            listing.insert(format!("{sub}/{}", entry.file_name().to_string_lossy()), id);
        }
    }
    listing
}

/// Whether XDP is attached to every interface the agent serves.
fn xdp_everywhere(set: &ClusterSet) -> bool {
    set.topology()
        .agent_ifaces(CLIENT_NODE)
        .expect("interfaces")
        .iter()
        .all(|dev| topology::xdp_attached(node(set), dev).expect("ip link"))
}

/// Runs `mcs-agent run` in the node's namespace on `dir` with `args` and
/// waits for it to exit (at most `limit`): its status, stderr and how long
/// it ran. Not an `agent::Agent`: that one would clean `dir` up on drop.
fn run_agent_to_exit(
    set: &ClusterSet,
    dir: &Path,
    args: &[&str],
    limit: Duration,
) -> (std::process::ExitStatus, String, Duration) {
    let mut cmd = node(set).command(agent::binary()).expect("command");
    cmd.arg("run")
        .arg("--source")
        .arg(format!("file:{}", set.manifest().dir().display()))
        .arg("--bpffs-dir")
        .arg(dir);
    for dev in set
        .topology()
        .agent_ifaces(CLIENT_NODE)
        .expect("interfaces")
    {
        cmd.args(["--interface", &dev]);
    }
    let started = Instant::now();
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mcs-agent");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = stderr.read_to_string(&mut err);
            }
            panic!("the agent still ran after {limit:?}; its log:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let ran = started.elapsed();
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut err).expect("stderr");
    }
    (status, err, ran)
}

// ----- restarts onto a broken source ---------------------------------------

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_restart_onto_a_broken_file_keeps_serving_until_it_parses() {
    let mut set = cluster_set_with(&["--metrics-addr", METRICS]);
    let killed = set.kill_agent_keeping_dataplane().expect("SIGKILL");
    std::fs::write(set.manifest().file(), "spec: [this is not YAML\n").expect("break the file");
    set.adopt_agent(killed.dataplane, &["--metrics-addr", METRICS])
        .expect("successor");
    // Give the successor time to (wrongly) apply what it read.
    std::thread::sleep(Duration::from_secs(3));
    set.agent()
        .expect("agent")
        .ensure_running()
        .expect("running");
    let (ok, by_pod) = answered(&set, 30);
    assert_eq!(ok, 30, "requests answered with the file broken: {by_pod:?}");
    assert_eq!(by_pod.len(), 3, "every backend still serves: {by_pod:?}");
    let dump = set.agent().expect("agent").dump().expect("dump");
    assert_eq!(http_backends(&dump).len(), 3, "{dump:#?}");

    // Not ready, saying why; the source counted unhealthy.
    let (status, body) = agent_http(&set, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("complete snapshot") && body.contains("clusterset.yaml"),
        "{body}"
    );
    let (_, metrics) = agent_http(&set, "/metrics");
    assert!(
        metrics.contains("mcs_source_healthy{source=\"file\"} 0"),
        "{metrics}"
    );
    // The broken file is logged once, not on every re-read.
    std::thread::sleep(Duration::from_secs(2));
    let log = set.agent().expect("agent").log();
    assert_eq!(log.matches("manifest file rejected").count(), 1, "{log}");

    // The file parses again (one backend fewer): applied, ready.
    let [a_web1, b_web1, _] = BACKENDS;
    let fixed = scenario::manifest(&[(a_web1, true), (b_web1, true)]).to_yaml();
    set.manifest().write(&fixed).expect("fix the file");
    wait_for_backends(&mut set, &[a_web1, b_web1]);
    let deadline = Instant::now() + APPLY_TIMEOUT;
    while agent_http(&set, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = agent_http(&set, "/metrics");
    assert!(
        metrics.contains("mcs_source_healthy{source=\"file\"} 1"),
        "{metrics}"
    );
    eprintln!("broken file at restart: {ok}/30 requests answered by {by_pod:?}");
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_restart_while_endpointslices_are_not_served_keeps_serving() {
    require_root();
    let all = scenario::manifest(&scenario::all_backends_ready());
    let mut set = ClusterSet::create(&all.to_yaml(), &|_| {}).expect("ClusterSet");
    let server = node(&set)
        .enter(FakeApiServer::start)
        .expect("enter")
        .expect("local API server");
    let objects: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&all.to_yaml())
        .map(|doc| Value::deserialize(doc).expect("YAML"))
        .filter(|value| !value.is_null())
        .collect();
    server.apply_all(objects).expect("load objects");
    let kubeconfig = server.kubeconfig_file().expect("kubeconfig");
    let kubeconfig = kubeconfig.display().to_string();
    let args = [
        "--kubeconfig",
        kubeconfig.as_str(),
        "--metrics-addr",
        METRICS,
    ];
    set.start_agent_from("kube", &args).expect("kube agent");
    wait_for_backends(&mut set, &BACKENDS);

    let killed = set.kill_agent_keeping_dataplane().expect("SIGKILL");
    let slices = ResourceId::new("discovery.k8s.io/v1", "endpointslices");
    server.set_served(&slices, false);
    set.adopt_agent(killed.dataplane, &args).expect("successor");
    std::thread::sleep(Duration::from_secs(4));
    set.agent()
        .expect("agent")
        .ensure_running()
        .expect("running");
    let (ok, by_pod) = answered(&set, 30);
    assert_eq!(ok, 30, "requests answered during the 404s: {by_pod:?}");
    assert_eq!(by_pod.len(), 3, "{by_pod:?}");
    let (status, body) = agent_http(&set, "/readyz");
    assert_eq!(status, 503, "{body}");
    let log = set.agent().expect("agent").log();
    assert!(
        log.contains("not served by the API server (a core API"),
        "{log}"
    );

    // Served again: the successor lists and syncs (nothing to change).
    server.set_served(&slices, true);
    let deadline = Instant::now() + Duration::from_secs(90);
    while agent_http(&set, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        http_backends(&set.agent().expect("agent").dump().expect("dump")).len(),
        3
    );
    eprintln!("EndpointSlices 404 at restart: {ok}/30 requests answered by {by_pod:?}");
    drop(set);
    drop(server);
}

// ----- new connections and stale conntrack ---------------------------------

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn after_sigkill_under_load_a_backend_removed_meanwhile_gets_no_new_connection() {
    let mut set = cluster_set_with(&[]);
    // A narrow port range, reused as soon as a port's last connection is
    // a second old: new connections reuse tuples conntrack has seen.
    let client = set.client().expect("client");
    client
        .sysctl("net.ipv4.ip_local_port_range", "42000 42399")
        .expect("port range");
    client
        .sysctl("net.ipv4.tcp_tw_reuse", "1")
        .expect("tw_reuse");
    let load = BackgroundLoad::start(
        mcs_tests::netns::path_of(client.name()),
        scenario::vip_http(),
        LoadPattern::NewConnections {
            pause: Duration::from_millis(2),
        },
    );
    load.wait_for(1500, Duration::from_secs(120));
    let killed = set.kill_agent_keeping_dataplane().expect("SIGKILL");
    let dir = killed.dataplane.dir().to_owned();
    let [a_web1, b_web1, b_web2] = BACKENDS;
    let without = scenario::manifest(&[(a_web1, true), (b_web1, true)]).to_yaml();
    set.manifest().write(&without).expect("remove b-web2");
    load.wait_for(load.sent() + 300, Duration::from_secs(60));
    set.adopt_agent(killed.dataplane, &[]).expect("successor");
    wait_for_backends(&mut set, &[a_web1, b_web1]);
    let totals = load.stop().expect("load");
    let before = conntrack_of_vip(&dir);
    let stale = ports_to(&before, b_web2.ip);
    assert!(
        !stale.is_empty(),
        "no conntrack entry left to b-web2: nothing tested"
    );

    let client = set.client().expect("client");
    let mut reused = 0;
    let mut to_removed = 0;
    let n = 400;
    for i in 0..n {
        let reply = http_get(client, scenario::vip_http())
            .unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        if stale.contains(&reply.local.port()) {
            reused += 1;
        }
        if reply.backend == b_web2.identity() {
            to_removed += 1;
        }
    }
    assert_eq!(
        to_removed, 0,
        "{to_removed} of {n} new connections reached the removed backend \
         ({reused} reused a tuple whose entry pointed at it)"
    );
    assert!(
        reused > 0,
        "no connection reused a stale tuple: nothing tested"
    );
    eprintln!(
        "SIGKILL under load ({} requests, {} failed), b-web2 removed while down: {} conntrack entries, {} client ports with an entry to b-web2; {n} new connections after the restart, {reused} on such a port, {to_removed} reached b-web2",
        totals.sent,
        totals.failed,
        before.conntrack_entries,
        stale.len()
    );
}

/// `GET /` from `CLIENT_IP:port` to the ClusterSetIP, read to the end (the
/// server closes first, so the client port is free again at once): the
/// backend that answered.
fn get_from_port(client: &str, port: u16) -> Identity {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket,
        sockopt::ReuseAddr,
    };
    let stream = mcs_tests::netns::enter(client, move || -> anyhow::Result<TcpStream> {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        setsockopt(&fd, ReuseAddr, &true)?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(SocketAddrV4::new(CLIENT_IP, port)),
        )?;
        let vip = match scenario::vip_http() {
            SocketAddr::V4(v4) => v4,
            SocketAddr::V6(_) => unreachable!("the ClusterSetIP is IPv4"),
        };
        connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(vip))?;
        Ok(TcpStream::from(fd))
    })
    .expect("enter")
    .unwrap_or_else(|e| panic!("connect from port {port}: {e:#}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut stream = stream;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {VIP}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let body = response.split_once("\r\n\r\n").expect("head").1;
    let answer: Answer = serde_json::from_str(body).expect("JSON body");
    answer.identity
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_syn_on_the_tuple_of_a_finished_flow_to_a_removed_backend_reaches_a_current_one() {
    // Expiry out of the way: only the datapath's SYN rule is at work.
    let long = ["--conntrack-timeout-closed", "3600"];
    let mut set = cluster_set_with(&long);
    let client = set.client().expect("client").name().to_owned();
    // One finished flow per port; keep the ports whose flow went to b-web2.
    let [a_web1, b_web1, b_web2] = BACKENDS;
    let ports: Vec<u16> = (43000..43090)
        .filter(|port| get_from_port(&client, *port) == b_web2.identity())
        .collect();
    assert!(ports.len() > 10, "{} flows to b-web2", ports.len());
    let killed = set.kill_agent_keeping_dataplane().expect("SIGKILL");
    let dir = killed.dataplane.dir().to_owned();
    let without = scenario::manifest(&[(a_web1, true), (b_web1, true)]).to_yaml();
    set.manifest().write(&without).expect("remove b-web2");
    set.adopt_agent(killed.dataplane, &long).expect("successor");
    wait_for_backends(&mut set, &[a_web1, b_web1]);
    let stale = ports_to(&conntrack_of_vip(&dir), b_web2.ip);
    let kept: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|p| stale.contains(p))
        .collect();
    assert_eq!(kept, ports, "the finished flows' entries are still there");
    // The same tuples again: new connections, to current backends only.
    let again: BTreeMap<u16, Identity> = ports
        .iter()
        .map(|port| (*port, get_from_port(&client, *port)))
        .collect();
    let wrong: Vec<_> = again
        .iter()
        .filter(|(_, who)| **who == b_web2.identity())
        .collect();
    assert!(
        wrong.is_empty(),
        "SYNs that followed a stale entry: {wrong:?}"
    );
    eprintln!(
        "{} client ports reused after their flow to b-web2 finished and b-web2 was removed: 0 reached it",
        ports.len()
    );
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn closed_flows_leave_conntrack_after_their_timeout() {
    let mut set = cluster_set_with(&["--conntrack-timeout-closed", "2", "--metrics-addr", METRICS]);
    let dir = set.agent().expect("agent").bpffs_dir().to_owned();
    // A connection kept open, and 50 that close.
    let mut open =
        mcs_tests::client::HttpConn::connect(set.client().expect("client"), scenario::vip_http())
            .expect("connect");
    open.get().expect("request");
    let open_port = open.local().port();
    let (ok, _) = answered(&set, 50);
    assert_eq!(ok, 50);
    let closed_at = Instant::now();
    let entries = conntrack_of_vip(&dir);
    assert!(
        entries.conntrack.len() >= 100,
        "{}",
        entries.conntrack.len()
    );
    let gone = loop {
        let left = conntrack_of_vip(&dir);
        let tcp: Vec<_> = left
            .conntrack
            .iter()
            .filter(|e| e.protocol == "TCP")
            .collect();
        // Only the open connection's two entries stay.
        if tcp.len() == 2 {
            assert!(
                tcp.iter().all(|e| e.src.ends_with(&format!(":{open_port}"))
                    || e.dst.ends_with(&format!(":{open_port}"))),
                "{tcp:#?}"
            );
            break closed_at.elapsed();
        }
        assert!(
            closed_at.elapsed() < Duration::from_secs(10),
            "{} TCP entries still there",
            tcp.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    open.get().expect("the open connection still works");
    let (_, metrics) = agent_http(&set, "/metrics");
    let expired = metrics
        .lines()
        .find(|l| l.starts_with("mcs_conntrack_expired_total{class=\"closed\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let count: f64 = expired
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert!(count >= 50.0, "{expired}");
    assert!(
        gone >= Duration::from_secs(2),
        "expired before the timeout: {gone:?}"
    );
    eprintln!(
        "closed-flow timeout 2 s: 50 closed flows gone {:.1} s after closing; the open flow kept",
        gone.as_secs_f64()
    );
}

// ----- one agent per directory, failed starts --------------------------------

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_second_agent_on_the_same_directory_exits_at_once_and_touches_nothing() {
    let mut set = cluster_set_with(&[]);
    let first = set.agent().expect("agent");
    let dir = first.bpffs_dir().to_owned();
    let pid = first.pid().expect("pid");
    let before_pins = pins(&dir);
    let before = set.agent().expect("agent").dump().expect("dump");
    let (status, stderr, ran) = run_agent_to_exit(&set, &dir, &[], Duration::from_secs(10));
    assert!(!status.success(), "the second agent exited with {status}");
    assert!(ran < Duration::from_secs(2), "took {ran:?}");
    assert!(
        stderr.contains("another mcs-agent holds") && stderr.contains(&format!("pid {pid}")),
        "{stderr}"
    );
    assert!(stderr.contains(&dir.display().to_string()), "{stderr}");
    assert_eq!(pins(&dir), before_pins, "pins changed");
    // `cleanup` refuses too while the agent runs.
    let cleanup = Command::new(agent::binary())
        .arg("cleanup")
        .arg("--bpffs-dir")
        .arg(&dir)
        .output()
        .expect("mcs-agent cleanup");
    assert!(!cleanup.status.success());
    assert_eq!(
        pins(&dir),
        before_pins,
        "cleanup removed pins under a running agent"
    );
    let after = set.agent().expect("agent").dump().expect("dump");
    assert_eq!(after.services, before.services, "maps changed");
    set.agent()
        .expect("agent")
        .ensure_running()
        .expect("first agent");
    let (ok, _) = answered(&set, 20);
    assert_eq!(ok, 20);
    eprintln!("second agent on the same directory: exited {status} after {ran:?}");
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_start_that_fails_after_an_abi_change_leaves_the_old_dataplane_serving() {
    use mcs_common::{ABI_MAGIC, AbiInfo, names};

    let mut set = cluster_set_with(&[]);
    let killed = set.kill_agent_keeping_dataplane().expect("SIGKILL");
    let dir = killed.dataplane.dir().to_owned();
    // As if the next agent had another layout version: every map is
    // incompatible with it.
    let abi_pin = dir.join("maps").join(names::ABI);
    let data = aya::maps::MapData::from_pin(&abi_pin).expect("ABI pin");
    let mut abi: aya::maps::Array<_, AbiInfo> =
        aya::maps::Array::try_from(aya::maps::Map::from_map_data(data).expect("map"))
            .expect("array");
    abi.set(
        0,
        AbiInfo {
            magic: ABI_MAGIC,
            version: 999,
        },
        0,
    )
    .expect("write version");
    drop(abi);
    let before = pins(&dir);
    assert!(
        before.keys().any(|pin| pin.starts_with("links/")),
        "{before:?}"
    );

    // It fails after loading (an address it cannot bind for metrics).
    let (status, stderr, _) = run_agent_to_exit(
        &set,
        &dir,
        &["--metrics-addr", "192.0.2.1:9464"],
        Duration::from_secs(30),
    );
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("recreating it"),
        "the start replaced the maps: {stderr}"
    );
    assert_eq!(
        pins(&dir),
        before,
        "the failed start changed the pins:\n{stderr}"
    );
    assert!(xdp_everywhere(&set), "XDP detached by the failed start");
    let (ok, by_pod) = answered(&set, 20);
    assert_eq!(ok, 20, "{by_pod:?}\n{stderr}");
    eprintln!("failed start after an ABI change: pins unchanged, {ok}/20 requests answered");
    // The next agent of the same version takes over normally.
    abi_restore(&abi_pin);
    set.adopt_agent(killed.dataplane, &[]).expect("successor");
    wait_for_backends(&mut set, &BACKENDS);
}

fn abi_restore(pin: &Path) {
    use mcs_common::{ABI_MAGIC, ABI_VERSION, AbiInfo};
    let data = aya::maps::MapData::from_pin(pin).expect("ABI pin");
    let mut abi: aya::maps::Array<_, AbiInfo> =
        aya::maps::Array::try_from(aya::maps::Map::from_map_data(data).expect("map"))
            .expect("array");
    abi.set(
        0,
        AbiInfo {
            magic: ABI_MAGIC,
            version: ABI_VERSION,
        },
        0,
    )
    .expect("write version");
}
