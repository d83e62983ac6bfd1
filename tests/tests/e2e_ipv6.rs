//! IPv6 and dual-stack end to end with real sockets: the standard two-cluster
//! topology of `mcs_tests::scenario` given IPv6 by `mcs_tests::topology6`
//! (IPv6-only or dual-stack), the agent on node a1 fed a manifest file, the
//! client pod's traffic to the ClusterSetIPs translated by the tc hook (pod
//! interfaces discovered by glob, as the DaemonSet runs it) or by XDP (pod
//! veths and uplink listed). Transmit checksum offload is off on every node
//! and router interface, so every hop verifies; afterwards no namespace may
//! count a TCP, UDP, UDPv6 or ICMPv6 checksum error.
//!
//! Run as root: `cargo xtask test`, or `cargo build -p mcs-agent &&
//! cargo test -p mcs-tests --test e2e_ipv6 -- --include-ignored`.

use std::{
    collections::BTreeSet,
    io::ErrorKind,
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use mcs_tests::{
    agent::{Agent, AgentConfig},
    client::{HttpConn, UdpClient},
    manifest::{ManifestDir, Protocol},
    require_root,
    scenario::{
        self, APPLY_TIMEOUT, BACKEND_HTTP_PORT, BACKEND_UDP_PORT, BACKENDS, CLIENT, CLIENT_NODE,
        CLUSTER_A, CLUSTER_B, HTTP_PORT, POD_INTERFACES, ServerPod, UDP_PORT, VIP, tc_attached,
    },
    servers::{HttpServer, Identity, UdpEchoServer},
    topology::{self, Topology},
    topology6::{self, Stack},
};

/// The IPv6 ClusterSetIP of the service with endpoints.
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
/// The IPv6 ClusterSetIP of a service whose slices list no endpoint.
const EMPTY_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x20);
/// Connections and datagrams per family and protocol: enough for three
/// backends to be all reached with near certainty (miss odds 3·(2/3)^24).
const ROUNDS: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Tc,
    Xdp,
}

/// The servers of one backend pod for one family.
struct Servers {
    _http: HttpServer,
    _udp: UdpEchoServer,
}

/// Topology, servers and agent; fields drop in order (agent first).
struct Set {
    _agent: Agent,
    _servers: Vec<Servers>,
    _manifest: ManifestDir,
    topo: Topology,
}

/// The identity a backend's server of `family` answers with: the pod name
/// tagged with the family, so a reply shows which family's backend served.
fn identity(pod: &ServerPod, v6: bool) -> Identity {
    let family = if v6 { "v6" } else { "v4" };
    Identity::new(&format!("{}/{family}", pod.name), pod.cluster)
}

fn slice(svc: &str, cluster: &str, family: &str, addresses: &[IpAddr]) -> String {
    let name = format!("{svc}-{cluster}-{}", family.to_ascii_lowercase());
    let endpoints: String = addresses
        .iter()
        .map(|a| format!("- addresses: [\"{a}\"]\n  conditions: {{ready: true}}\n"))
        .collect();
    let endpoints = if endpoints.is_empty() {
        "endpoints: []\n".to_owned()
    } else {
        format!("endpoints:\n{endpoints}")
    };
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}, namespace: demo, labels: {{\
         multicluster.kubernetes.io/service-name: {svc}, \
         multicluster.kubernetes.io/source-cluster: {cluster}}}}}\n\
         addressType: {family}\n\
         ports: [{{name: http, protocol: TCP, port: {BACKEND_HTTP_PORT}}}, \
         {{name: echo, protocol: UDP, port: {BACKEND_UDP_PORT}}}]\n{endpoints}",
    )
}

fn import(name: &str, ips: &[IpAddr]) -> String {
    let ips: Vec<String> = ips.iter().map(|ip| format!("\"{ip}\"")).collect();
    format!(
        "---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\n\
         metadata: {{name: {name}, namespace: demo}}\n\
         spec:\n  type: ClusterSetIP\n  ips: [{}]\n  ports: [{{name: http, protocol: TCP, \
         port: {HTTP_PORT}}}, {{name: echo, protocol: UDP, port: {UDP_PORT}}}]\n",
        ips.join(", ")
    )
}

/// Service `web` (every backend of both clusters, per family of `stack`)
/// and service `none` at [`EMPTY_VIP6`], whose IPv6 slices are empty.
fn manifest(stack: Stack) -> String {
    let mut ips = vec![IpAddr::V6(VIP6)];
    if stack == Stack::Dual {
        ips.insert(0, IpAddr::V4(VIP));
    }
    let mut yaml = import("web", &ips) + &import("none", &[IpAddr::V6(EMPTY_VIP6)]);
    for cluster in [CLUSTER_A, CLUSTER_B] {
        let pods: Vec<&ServerPod> = BACKENDS.iter().filter(|p| p.cluster == cluster).collect();
        let v6: Vec<IpAddr> = pods
            .iter()
            .map(|p| topology6::ipv6_of(p.ip).into())
            .collect();
        yaml += &slice("web", cluster, "IPv6", &v6);
        if stack == Stack::Dual {
            let v4: Vec<IpAddr> = pods.iter().map(|p| p.ip.into()).collect();
            yaml += &slice("web", cluster, "IPv4", &v4);
        }
        yaml += &slice("none", cluster, "IPv6", &[]);
    }
    yaml
}

fn cluster_set(stack: Stack, hook: Hook) -> Set {
    require_root();
    let topo = scenario::topology().build().expect("topology");
    topology6::add_ipv6(&topo, stack).expect("IPv6 on the topology");
    topo.set_infra_tx_checksum(false)
        .expect("tx off on nodes and router");
    // XDP gets full checksums from the pods (what a NIC hands it), tc the
    // partial ones of a local sender.
    if hook == Hook::Xdp {
        topo.set_pod_tx_checksum(false).expect("tx off in pods");
    }
    let mut servers = Vec::new();
    for pod in &BACKENDS {
        let ns = &topo.pod(pod.name).expect("pod").netns;
        let mut addrs = vec![(IpAddr::V6(topology6::ipv6_of(pod.ip)), true)];
        if stack == Stack::Dual {
            addrs.push((IpAddr::V4(pod.ip), false));
        }
        for (ip, v6) in addrs {
            servers.push(Servers {
                _http: HttpServer::start(
                    ns,
                    SocketAddr::new(ip, BACKEND_HTTP_PORT),
                    identity(pod, v6),
                )
                .expect("HTTP server"),
                _udp: UdpEchoServer::start(
                    ns,
                    SocketAddr::new(ip, BACKEND_UDP_PORT),
                    identity(pod, v6),
                )
                .expect("UDP server"),
            });
        }
    }
    let manifest = ManifestDir::new("clusterset.yaml", &manifest(stack)).expect("manifest");
    let node = topo.node(CLIENT_NODE).expect("node");
    let mut config = AgentConfig::new(
        manifest.dir(),
        match hook {
            Hook::Xdp => topo.agent_ifaces(CLIENT_NODE).expect("interfaces"),
            Hook::Tc => Vec::new(),
        },
    );
    config.cluster_id = Some(CLUSTER_A.to_owned());
    if hook == Hook::Tc {
        config.extra_args = vec!["--pod-interfaces".to_owned(), POD_INTERFACES.to_owned()];
    }
    let mut agent = Agent::start(&node.netns, &config).expect("starting mcs-agent");
    agent
        .wait_until(APPLY_TIMEOUT, |dump| {
            let both = |vip: IpAddr| {
                dump.service(vip, HTTP_PORT, Protocol::Tcp).is_some()
                    && dump.service(vip, UDP_PORT, Protocol::Udp).is_some()
            };
            both(VIP6.into())
                && both(EMPTY_VIP6.into())
                && (stack == Stack::V6Only || both(VIP.into()))
        })
        .expect("the agent programs the import");
    let deadline = Instant::now() + APPLY_TIMEOUT;
    let attached = |dev: &str| match hook {
        Hook::Xdp => topology::xdp_attached(&node.netns, dev).expect("ip link"),
        Hook::Tc => {
            tc_attached(agent.bpffs_dir(), dev)
                || topology::clsact_attached(&node.netns, dev).expect("tc filter")
        }
    };
    let devs = match hook {
        Hook::Xdp => config.interfaces.clone(),
        Hook::Tc => topo.pod_ifaces(CLIENT_NODE),
    };
    for dev in &devs {
        while !attached(dev) {
            assert!(Instant::now() < deadline, "{hook:?} not attached to {dev}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Set {
        _agent: agent,
        _servers: servers,
        _manifest: manifest,
        topo,
    }
}

/// [`ROUNDS`] TCP connections and UDP requests from the client to `vip`;
/// every reply must come from `vip` and be served by a backend of the
/// family of `vip`. Returns the backends that answered.
fn reach(set: &Set, vip: IpAddr) -> BTreeSet<Identity> {
    let ns = &set.topo.pod(CLIENT).expect("client").netns;
    let family = if vip.is_ipv6() { "/v6" } else { "/v4" };
    let unspecified: IpAddr = if vip.is_ipv6() {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let mut seen = BTreeSet::new();
    for i in 0..ROUNDS {
        let http = SocketAddr::new(vip, HTTP_PORT);
        let reply = HttpConn::connect(ns, http)
            .and_then(HttpConn::get_and_close)
            .unwrap_or_else(|e| panic!("TCP {i} to {http}: {e:#}"));
        assert_eq!(reply.peer, http, "the client sees the ClusterSetIP");
        assert_eq!(reply.seen_by_backend, reply.local, "no SNAT");
        seen.insert(reply.backend);

        let udp = SocketAddr::new(vip, UDP_PORT);
        let reply = UdpClient::bind_to(ns, SocketAddr::new(unspecified, 0))
            .and_then(|c| c.request(udp, &format!("ping {i}")))
            .unwrap_or_else(|e| panic!("UDP {i} to {udp}: {e:#}"));
        assert_eq!(reply.from, udp, "the reply comes from the ClusterSetIP");
        seen.insert(reply.backend);
    }
    for backend in &seen {
        assert!(
            backend.pod.ends_with(family),
            "{vip} was served by {backend:?}"
        );
    }
    seen
}

/// Every backend of both clusters, of the family `family` (`v4`/`v6`).
fn all_backends(family: &str) -> BTreeSet<Identity> {
    BACKENDS
        .iter()
        .map(|p| identity(p, family == "v6"))
        .collect()
}

/// The empty service refuses at once: TCP with a RST, UDP with an ICMPv6
/// port unreachable that a connected socket reports as ECONNREFUSED.
fn refused(set: &Set) {
    let ns = &set.topo.pod(CLIENT).expect("client").netns;
    let http = SocketAddr::new(EMPTY_VIP6.into(), HTTP_PORT);
    let udp = SocketAddr::new(EMPTY_VIP6.into(), UDP_PORT);
    for _ in 0..3 {
        let started = Instant::now();
        let error = ns
            .enter(|| TcpStream::connect_timeout(&http, Duration::from_secs(3)))
            .expect("enter the client")
            .expect_err("no backend: the connection is refused");
        assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once"
        );

        let error = ns
            .enter(|| -> std::io::Result<()> {
                let socket = UdpSocket::bind("[::]:0")?;
                socket.set_read_timeout(Some(Duration::from_secs(3)))?;
                socket.connect(udp)?;
                socket.send(b"anyone?")?;
                socket.recv(&mut [0u8; 64]).map(drop)
            })
            .expect("enter the client")
            .expect_err("no backend: the datagram is refused");
        assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");
    }
}

fn teardown(set: Set) {
    set.topo.assert_no_csum_errors();
    let prefix = set.topo.prefix().to_owned();
    drop(set);
    assert_eq!(
        Topology::leftovers(&prefix).expect("listing namespaces"),
        Vec::<String>::new(),
        "namespaces left behind"
    );
}

fn ipv6_only(hook: Hook) {
    let set = cluster_set(Stack::V6Only, hook);
    let client = &set.topo.pod(CLIENT).expect("client").netns;
    let v4 = client
        .ip(&["-4", "addr", "show", "dev", "eth0"])
        .expect("ip");
    assert!(!v4.contains("inet "), "IPv6-only client has IPv4: {v4}");
    assert_eq!(reach(&set, VIP6.into()), all_backends("v6"));
    refused(&set);
    teardown(set);
}

fn dual_stack(hook: Hook) {
    let set = cluster_set(Stack::Dual, hook);
    assert_eq!(reach(&set, VIP.into()), all_backends("v4"));
    assert_eq!(reach(&set, VIP6.into()), all_backends("v6"));
    teardown(set);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn ipv6_only_through_tc() {
    ipv6_only(Hook::Tc);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn ipv6_only_through_xdp() {
    ipv6_only(Hook::Xdp);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn dual_stack_through_tc() {
    dual_stack(Hook::Tc);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn dual_stack_through_xdp() {
    dual_stack(Hook::Xdp);
}
