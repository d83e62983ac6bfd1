//! Socket-LB tier: cgroup connect4/sendmsg4/recvmsg4/getpeername4 with real
//! sockets (sock_addr programs cannot be test-run). The test process itself
//! joins a private cgroup that the agent's socket LB serves, and talks from
//! the client pod's network namespace to the ClusterSetIP.
//!
//! One test per binary on purpose: the whole process is in the cgroup.
//! Needs root; run by `cargo xtask test`.

use std::{
    collections::BTreeSet,
    fs,
    net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use mcs_agent::dump::DumpReport;
use mcs_tests::{
    client::{HttpConn, UdpClient},
    scenario::{
        self, APPLY_TIMEOUT, BACKENDS, CLIENT_IP, ClusterSet, HTTP_PORT, UDP_PORT, UNLISTED, VIP,
    },
};

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
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// This process sits in the test cgroup while alive; moves back on drop.
struct ScopedCgroup {
    path: PathBuf,
    original: PathBuf,
}

impl ScopedCgroup {
    fn enter(name: &str) -> Self {
        let root =
            mcs_agent::dataplane::cgroup::node_cgroup_root().expect("cgroup v2 root mounted");
        let own = fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
        let relative = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .expect("cgroup v2 membership")
            .trim_start_matches('/')
            .to_owned();
        let original = root.join(relative);
        let path = root.join(name);
        fs::write(path.join("cgroup.procs"), std::process::id().to_string())
            .expect("join test cgroup");
        Self { path, original }
    }
}

impl Drop for ScopedCgroup {
    fn drop(&mut self) {
        let _ = fs::write(
            self.original.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        let _ = &self.path;
    }
}

fn dump(bpffs_dir: &std::path::Path) -> DumpReport {
    let output = Command::new(mcs_tests::agent::binary())
        .args(["dump", "--output", "json", "--bpffs-dir"])
        .arg(bpffs_dir)
        .output()
        .expect("run mcs-agent dump");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("dump JSON")
}

fn frontend(report: &DumpReport, port: u16, protocol: &str) -> mcs_agent::dump::ServiceDump {
    report
        .services
        .iter()
        .find(|s| s.vip == VIP && s.port == port && s.protocol == protocol)
        .cloned()
        .unwrap_or_else(|| panic!("no frontend {VIP}:{port}/{protocol}"))
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn local_sockets_are_balanced_at_connect_time() {
    mcs_tests::require_root();
    let cgroup_name = format!("mcs-test-socklb-{}", std::process::id());
    let yaml = scenario::manifest(&scenario::all_backends_ready()).to_yaml();
    // Declared first so it is dropped last, after the agent and the
    // process have left it.
    let cgroup = TestCgroup::create(&cgroup_name);
    let mut set = ClusterSet::create(&yaml, &|_| {}).expect("building the ClusterSet");
    let cgroup_arg = cgroup.0.display().to_string();
    set.start_agent_with(&["--socket-lb", "--cgroup", &cgroup_arg])
        .expect("starting mcs-agent");
    let bpffs = set.agent().expect("agent").bpffs_dir().to_path_buf();
    set.agent()
        .expect("agent")
        .wait_until(APPLY_TIMEOUT, |d| {
            d.service(VIP, HTTP_PORT, mcs_tests::manifest::Protocol::Tcp)
                .is_some_and(|s| s.backends.len() == BACKENDS.len())
        })
        .expect("backends programmed");
    let before = dump(&bpffs);
    let _inside = ScopedCgroup::enter(&cgroup_name);
    let client = set.client().expect("client netns");
    let vip_http = SocketAddr::V4(SocketAddrV4::new(VIP, HTTP_PORT));
    let vip_udp = SocketAddr::V4(SocketAddrV4::new(VIP, UDP_PORT));

    // TCP: connect() goes straight to a backend; getpeername shows the VIP.
    let mut reached = BTreeSet::new();
    for _ in 0..40 {
        let mut conn = HttpConn::connect(client, vip_http).expect("connect to the ClusterSetIP");
        assert_eq!(
            conn.peer(),
            vip_http,
            "getpeername must return the ClusterSetIP"
        );
        let reply = conn.get().expect("HTTP over socket LB");
        assert_eq!(reply.seen_by_backend.ip(), std::net::IpAddr::V4(CLIENT_IP));
        reached.insert(reply.backend.pod.clone());
    }
    let listed: BTreeSet<String> = BACKENDS.iter().map(|p| p.name.to_owned()).collect();
    assert_eq!(reached, listed, "every backend, in both clusters, reached");

    // Unconnected UDP: sendto the VIP, the reply comes from the VIP.
    let udp = UdpClient::bind(client, 0).expect("bind UDP");
    for i in 0..10 {
        let reply = udp
            .request(vip_udp, &format!("unconnected-{i}"))
            .expect("UDP via socket LB");
        assert_eq!(reply.from, vip_udp, "recvfrom must show the ClusterSetIP");
    }

    // Connected UDP: connect(), send, recv; peer_addr shows the VIP.
    let connected = client
        .enter(|| {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            socket.connect(vip_udp)?;
            socket.send(b"connected")?;
            let mut buf = [0u8; 2048];
            let len = socket.recv(&mut buf)?;
            Ok::<_, std::io::Error>((
                socket.peer_addr()?,
                String::from_utf8_lossy(&buf[..len]).into_owned(),
            ))
        })
        .expect("enter netns")
        .expect("connected UDP via socket LB");
    assert_eq!(connected.0, vip_udp);
    assert!(connected.1.contains("connected"), "{}", connected.1);

    // A miss is untouched: a pod address is connected as given.
    let direct = SocketAddr::V4(SocketAddrV4::new(
        BACKENDS[0].ip,
        scenario::BACKEND_HTTP_PORT,
    ));
    let peer = client
        .enter(|| {
            TcpStream::connect_timeout(&direct, Duration::from_secs(2)).and_then(|s| s.peer_addr())
        })
        .expect("enter netns")
        .expect("direct connect");
    assert_eq!(peer, direct);

    let after = dump(&bpffs);
    let (tcp_before, tcp_after) = (
        frontend(&before, HTTP_PORT, "TCP"),
        frontend(&after, HTTP_PORT, "TCP"),
    );
    assert!(
        tcp_after.socket_stats.new_flows >= tcp_before.socket_stats.new_flows + 40,
        "socket LB counted the connections: {:?}",
        tcp_after.socket_stats
    );
    // Not translated twice: the XDP path saw backend addresses only.
    assert_eq!(
        tcp_after.stats.new_flows, tcp_before.stats.new_flows,
        "XDP must not NAT socket-LB flows"
    );
    let (udp_before, udp_after) = (
        frontend(&before, UDP_PORT, "UDP"),
        frontend(&after, UDP_PORT, "UDP"),
    );
    assert!(udp_after.socket_stats.new_flows > udp_before.socket_stats.new_flows);
    assert_eq!(set.http_requests()[UNLISTED], 0);

    // Every reverse translation says its protocol and when it was last
    // used (what the janitor ages it out by): just now.
    let pin = mcs_agent::dataplane::map_pin_dir(&bpffs).join(mcs_common::names::SOCK_REVNAT);
    let map = aya::maps::Map::from_map_data(aya::maps::MapData::from_pin(pin).expect("pin"))
        .expect("map");
    let reverse: aya::maps::HashMap<_, mcs_common::SockRevKey, mcs_common::SockRevValue> =
        aya::maps::HashMap::try_from(map).expect("hash map");
    let now = mcs_agent::dataplane::clock::coarse_now().expect("clock");
    let entries: Vec<_> = reverse.iter().map(|e| e.expect("entry").1).collect();
    let protocols: BTreeSet<u8> = entries.iter().map(|v| v.proto).collect();
    assert_eq!(
        protocols,
        BTreeSet::from([mcs_common::PROTO_TCP, mcs_common::PROTO_UDP])
    );
    for value in &entries {
        let age = now.saturating_sub(value.last_used_ns);
        assert!(
            value.last_used_ns > 0 && age < 60_000_000_000,
            "{value:?}: last used {age} ns ago"
        );
    }
    drop(_inside);
    drop(set);
    drop(cgroup);
}
