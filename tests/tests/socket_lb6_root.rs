//! Socket-LB tier for IPv6 sockets: cgroup connect6/sendmsg6/recvmsg6/
//! getpeername6 with real sockets, in a network namespace of the test's own
//! (backends on its loopback interface; socket LB needs no route to a
//! ClusterSetIP). The agent programs the IPv6 frontends from a manifest; the
//! test process joins a private cgroup the agent's socket LB serves.
//!
//! Covered: TCP (getpeername shows the ClusterSetIP, both backends
//! reached), connected and unconnected UDP (recvfrom shows the
//! ClusterSetIP), a refused connect to a frontend without backends
//! (ECONNREFUSED at once), and an IPv6 socket addressing an IPv4
//! ClusterSetIP by its IPv4-mapped address.
//!
//! One test per binary on purpose: the whole process is in the cgroup.
//! Needs root; run by `cargo xtask test`.

use std::{
    collections::BTreeSet,
    fs,
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, Map, MapData};
use mcs_common::{
    FrontendStats, PROTO_TCP, PROTO_UDP, ServiceKeyV6, ServiceValue, SockRevKeyV6, SockRevValueV6,
    names,
};
use mcs_tests::{
    agent::{Agent, AgentConfig},
    netns::{Netns, unique_prefix},
};

const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0xa);
/// A ClusterSetIP whose service has no endpoints.
const EMPTY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0xb);
const BACKENDS6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0x101, 0, 0, 0, 0, 0, 0x10),
    Ipv6Addr::new(0xfd00, 0x101, 0, 0, 0, 0, 0, 0x11),
];
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const BACKEND4: Ipv4Addr = Ipv4Addr::new(10, 101, 1, 10);
const TARGET_HTTP: u16 = 8080;
const TARGET_UDP: u16 = 5353;

fn manifest() -> String {
    let import = |name: &str, ip: String| {
        format!(
            "---\napiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceImport\n\
             metadata: {{name: {name}, namespace: demo}}\n\
             spec:\n  type: ClusterSetIP\n  ips: [\"{ip}\"]\n  ports: [{{name: http, protocol: TCP, port: 80}}, {{name: dns, protocol: UDP, port: 53}}]\n"
        )
    };
    let slice = |name: &str, family: &str, addresses: &[String]| {
        let endpoints: Vec<String> = addresses
            .iter()
            .map(|a| format!("- addresses: [\"{a}\"]\n  conditions: {{ready: true}}"))
            .collect();
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-a, namespace: demo, labels: {{multicluster.kubernetes.io/service-name: {name}, multicluster.kubernetes.io/source-cluster: cluster-a}}}}\n\
             addressType: {family}\n\
             ports: [{{name: http, protocol: TCP, port: {TARGET_HTTP}}}, {{name: dns, protocol: UDP, port: {TARGET_UDP}}}]\n\
             endpoints:\n{}\n",
            endpoints.join("\n")
        )
    };
    let backends6: Vec<String> = BACKENDS6.iter().map(ToString::to_string).collect();
    [
        import("web6", VIP6.to_string()),
        slice("web6", "IPv6", &backends6),
        import("empty6", EMPTY6.to_string()),
        import("web4", VIP4.to_string()),
        slice("web4", "IPv4", &[BACKEND4.to_string()]),
    ]
    .concat()
}

/// The test's cgroup directory; removed on drop (also when a test fails).
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn create(name: &str) -> Self {
        let root =
            mcs_agent::dataplane::cgroup::node_cgroup_root().expect("cgroup v2 root mounted");
        let path = root.join(name);
        fs::create_dir_all(&path).expect("create test cgroup");
        Self(path)
    }

    /// Moves this process in; back to where it was on drop.
    fn enter(&self) -> ScopedCgroup {
        let root =
            mcs_agent::dataplane::cgroup::node_cgroup_root().expect("cgroup v2 root mounted");
        let own = fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
        let relative = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .expect("cgroup v2 membership")
            .trim_start_matches('/')
            .to_owned();
        fs::write(self.0.join("cgroup.procs"), std::process::id().to_string())
            .expect("join test cgroup");
        ScopedCgroup(root.join(relative))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

struct ScopedCgroup(PathBuf);

impl Drop for ScopedCgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.0.join("cgroup.procs"), std::process::id().to_string());
    }
}

/// TCP backends: each answers a connection with the address it was
/// reached at, then closes.
fn serve_tcp(listener: TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let local = stream.local_addr().map(|a| a.ip().to_string());
            let _ = stream.write_all(local.unwrap_or_default().as_bytes());
        }
    });
}

/// UDP backends: each answers a datagram with its own address, from it.
fn serve_udp(socket: UdpSocket) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let local = socket.local_addr().map(|a| a.ip().to_string());
            let _ = socket.send_to(local.unwrap_or_default().as_bytes(), from);
        }
    });
}

fn pinned<T: TryFrom<Map>>(bpffs: &std::path::Path, name: &str) -> T
where
    T::Error: std::fmt::Debug,
{
    let pin = mcs_agent::dataplane::map_pin_dir(bpffs).join(name);
    let map = Map::from_map_data(MapData::from_pin(pin).expect("pinned map")).expect("map");
    T::try_from(map).expect("map type")
}

/// The IPv6 frontend of `vip:port/proto`, once pinned and programmed.
fn frontend6(bpffs: &std::path::Path, vip: Ipv6Addr, port: u16, proto: u8) -> Option<ServiceValue> {
    let pin = mcs_agent::dataplane::map_pin_dir(bpffs).join(names::SERVICES_V6);
    let map = Map::from_map_data(MapData::from_pin(pin).ok()?).ok()?;
    let services: HashMap<MapData, ServiceKeyV6, ServiceValue> = HashMap::try_from(map).ok()?;
    services.get(&ServiceKeyV6::new(vip, port, proto), 0).ok()
}

fn sock_stats(bpffs: &std::path::Path, frontend_id: u32) -> FrontendStats {
    let stats: Array<MapData, FrontendStats> = pinned(bpffs, names::SOCK_STATS);
    stats.get(&frontend_id, 0).expect("socket-LB counters")
}

/// Reads what a TCP backend answered.
fn fetch(stream: &mut TcpStream) -> String {
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("backend reply");
    reply
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn ipv6_sockets_are_balanced_at_connect_time() {
    mcs_tests::require_root();
    let prefix = unique_prefix();
    let cgroup = TestCgroup::create(&format!("mcs-test-socklb6-{}", std::process::id()));
    let ns = Netns::create(&format!("{prefix}sl6")).expect("netns");
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "0")
        .expect("IPv6 on");
    for backend in BACKENDS6 {
        ns.ip(&[
            "addr",
            "add",
            &format!("{backend}/128"),
            "dev",
            "lo",
            "nodad",
        ])
        .expect("IPv6 backend address");
    }
    ns.ip(&["addr", "add", &format!("{BACKEND4}/32"), "dev", "lo"])
        .expect("IPv4 backend address");
    let (tcp, udp) = ns
        .enter(|| -> std::io::Result<_> {
            let mut tcp = Vec::new();
            let mut udp = Vec::new();
            for backend in BACKENDS6 {
                tcp.push(TcpListener::bind(SocketAddrV6::new(
                    backend,
                    TARGET_HTTP,
                    0,
                    0,
                ))?);
                udp.push(UdpSocket::bind(SocketAddrV6::new(
                    backend, TARGET_UDP, 0, 0,
                ))?);
            }
            tcp.push(TcpListener::bind((BACKEND4, TARGET_HTTP))?);
            Ok((tcp, udp))
        })
        .expect("enter netns")
        .expect("backends listen");
    tcp.into_iter().for_each(serve_tcp);
    udp.into_iter().for_each(serve_udp);

    let dir = tempfile::tempdir().expect("temp dir");
    let source = dir.path().join("imports.yaml");
    fs::write(&source, manifest()).expect("manifest");
    let mut config = AgentConfig::new(&source, Vec::new());
    config.extra_args = [
        "--socket-lb",
        "--cgroup",
        &cgroup.0.display().to_string(),
        "--pod-interfaces",
        "",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut agent = Agent::start(&ns, &config).expect("start the agent");
    let bpffs = agent.bpffs_dir().to_path_buf();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (http, dns, empty) = loop {
        agent.ensure_running().expect("agent running");
        let programmed = (
            frontend6(&bpffs, VIP6, 80, PROTO_TCP),
            frontend6(&bpffs, VIP6, 53, PROTO_UDP),
            frontend6(&bpffs, EMPTY6, 80, PROTO_TCP),
        );
        if let (Some(http), Some(dns), Some(empty)) = programmed
            && http.backend_count == 2
            && dns.backend_count == 2
        {
            break (http, dns, empty);
        }
        assert!(
            Instant::now() < deadline,
            "IPv6 frontends not programmed: {programmed:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(empty.backend_count, 0);
    let before = (
        sock_stats(&bpffs, http.frontend_id),
        sock_stats(&bpffs, dns.frontend_id),
        sock_stats(&bpffs, empty.frontend_id),
    );

    let inside = cgroup.enter();
    let vip_http = SocketAddr::V6(SocketAddrV6::new(VIP6, 80, 0, 0));
    let vip_dns = SocketAddr::V6(SocketAddrV6::new(VIP6, 53, 0, 0));
    let mapped_http = SocketAddr::V6(SocketAddrV6::new(VIP4.to_ipv6_mapped(), 80, 0, 0));
    let timeout = Duration::from_secs(2);
    let seen = ns
        .enter(|| -> std::io::Result<_> {
            // TCP: connect() goes straight to a backend; getpeername shows
            // the ClusterSetIP.
            let mut reached = BTreeSet::new();
            for _ in 0..30 {
                let mut stream = TcpStream::connect_timeout(&vip_http, timeout)?;
                assert_eq!(
                    stream.peer_addr()?,
                    vip_http,
                    "getpeername: the ClusterSetIP"
                );
                reached.insert(fetch(&mut stream));
            }
            // Connected UDP: peer_addr shows the ClusterSetIP.
            let connected = UdpSocket::bind("[::]:0")?;
            connected.set_read_timeout(Some(timeout))?;
            connected.connect(vip_dns)?;
            connected.send(b"connected")?;
            let mut buf = [0u8; 256];
            let len = connected.recv(&mut buf)?;
            let connected_reply = String::from_utf8_lossy(&buf[..len]).into_owned();
            let connected_peer = connected.peer_addr()?;
            // Unconnected UDP: the reply comes from the ClusterSetIP.
            let unconnected = UdpSocket::bind("[::]:0")?;
            unconnected.set_read_timeout(Some(timeout))?;
            let mut froms = BTreeSet::new();
            for i in 0..10 {
                unconnected.send_to(format!("unconnected-{i}").as_bytes(), vip_dns)?;
                let (_, from) = unconnected.recv_from(&mut buf)?;
                froms.insert(from);
            }
            // No backend: refused at once.
            let started = Instant::now();
            let refused = TcpStream::connect_timeout(
                &SocketAddr::V6(SocketAddrV6::new(EMPTY6, 80, 0, 0)),
                timeout,
            )
            .map(drop)
            .map_err(|error| (error.kind(), started.elapsed()));
            // An IPv6 socket to the IPv4 ClusterSetIP, IPv4-mapped.
            let mut mapped = TcpStream::connect_timeout(&mapped_http, timeout)?;
            let mapped_peer = mapped.peer_addr()?;
            let mapped_backend = fetch(&mut mapped);
            Ok((
                reached,
                (connected_reply, connected_peer),
                froms,
                refused,
                (mapped_peer, mapped_backend),
            ))
        })
        .expect("enter netns")
        .expect("socket LB traffic");
    drop(inside);
    let (reached, connected, froms, refused, mapped) = seen;

    let listed: BTreeSet<String> = BACKENDS6.iter().map(ToString::to_string).collect();
    assert_eq!(reached, listed, "both IPv6 backends reached");
    assert!(listed.contains(&connected.0), "{connected:?}");
    assert_eq!(connected.1, vip_dns, "connected UDP peer: the ClusterSetIP");
    assert_eq!(
        froms,
        BTreeSet::from([vip_dns]),
        "recvfrom: the ClusterSetIP"
    );
    match refused {
        Err((kind, took)) => {
            assert_eq!(kind, ErrorKind::ConnectionRefused);
            assert!(
                took < Duration::from_millis(500),
                "refused at once: {took:?}"
            );
        }
        Ok(()) => panic!("a connect to a frontend without backends must be refused"),
    }
    assert_eq!(
        mapped.0, mapped_http,
        "getpeername: the mapped ClusterSetIP"
    );
    assert_eq!(
        mapped.1.trim_start_matches("::ffff:"),
        BACKEND4.to_string(),
        "the IPv4 backend answered"
    );

    let after = (
        sock_stats(&bpffs, http.frontend_id),
        sock_stats(&bpffs, dns.frontend_id),
        sock_stats(&bpffs, empty.frontend_id),
    );
    assert!(after.0.new_flows >= before.0.new_flows + 30, "{after:?}");
    assert!(after.1.new_flows > before.1.new_flows, "{after:?}");
    assert_eq!(after.2.no_backend, before.2.no_backend + 1, "{after:?}");

    // Reverse entries of both protocols, the mapped one included.
    let reverse: HashMap<MapData, SockRevKeyV6, SockRevValueV6> =
        pinned(&bpffs, names::SOCK_REVNAT_V6);
    let entries: Vec<(SockRevKeyV6, SockRevValueV6)> =
        reverse.iter().map(|entry| entry.expect("entry")).collect();
    let protocols: BTreeSet<u8> = entries.iter().map(|(_, v)| v.proto).collect();
    assert_eq!(protocols, BTreeSet::from([PROTO_TCP, PROTO_UDP]));
    assert!(
        entries
            .iter()
            .any(|(k, v)| *k.backend().ip() == BACKEND4.to_ipv6_mapped()
                && *v.service().ip() == VIP4.to_ipv6_mapped()),
        "a mapped entry: {entries:?}"
    );
    agent.stop().expect("stop the agent");
    drop(ns);
    drop(cgroup);
}
