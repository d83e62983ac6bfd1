//! The harness itself, without the agent: the two-cluster topology routes
//! pod to pod across clusters, servers and clients work, checksum
//! verification can be forced, and everything is torn down.

use std::net::{SocketAddr, SocketAddrV4};

use mcs_tests::{
    client::{HttpConn, UdpClient, http_get, udp_request},
    require_root,
    scenario::{
        self, BACKEND_HTTP_PORT, BACKEND_UDP_PORT, BACKENDS, CLIENT, CLIENT_IP, ClusterSet,
        UNLISTED_POD,
    },
    topology::Topology,
};

fn quiet(_: &str) {}

fn http_addr(ip: std::net::Ipv4Addr) -> SocketAddr {
    SocketAddrV4::new(ip, BACKEND_HTTP_PORT).into()
}

fn udp_addr(ip: std::net::Ipv4Addr) -> SocketAddr {
    SocketAddrV4::new(ip, BACKEND_UDP_PORT).into()
}

/// Every server pod answers the client directly, within and across
/// clusters, and sees the client's own address.
fn direct_traffic_works(set: &ClusterSet) {
    let client = set.client().unwrap();
    for pod in BACKENDS.iter().chain([&UNLISTED_POD]) {
        let reply = http_get(client, http_addr(pod.ip)).unwrap();
        assert_eq!(reply.backend, pod.identity());
        assert_eq!(reply.peer, http_addr(pod.ip));
        assert_eq!(reply.local.ip(), CLIENT_IP);
        assert_eq!(reply.seen_by_backend, reply.local);

        let mut conn = HttpConn::connect(client, http_addr(pod.ip)).unwrap();
        for _ in 0..5 {
            assert_eq!(conn.get().unwrap().backend, pod.identity());
        }

        let reply = udp_request(client, udp_addr(pod.ip), Some(40053), "ping").unwrap();
        assert_eq!(reply.backend, pod.identity());
        assert_eq!(reply.from, udp_addr(pod.ip));
        assert_eq!(reply.payload, "ping");
        assert_eq!(reply.seen_by_backend.ip(), CLIENT_IP);
        assert_eq!(reply.seen_by_backend.port(), 40053);
    }
    // Bulk data crosses the router in both directions (segmentation and
    // checksum completion happen on the way).
    let udp = UdpClient::bind(client, 0).unwrap();
    let big = "x".repeat(1200);
    for pod in &BACKENDS {
        assert_eq!(udp.request(udp_addr(pod.ip), &big).unwrap().payload, big);
    }
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn two_clusters_route_pod_to_pod() {
    require_root();
    let set = ClusterSet::create(
        &scenario::manifest(&scenario::all_backends_ready()).to_yaml(),
        &quiet,
    )
    .unwrap();
    let prefix = set.topology().prefix().to_owned();
    // Router, two nodes, five pods.
    assert_eq!(Topology::leftovers(&prefix).unwrap().len(), 8);
    assert_eq!(set.topology().all_netns().len(), 8);

    direct_traffic_works(&set);
    for pod in BACKENDS.iter().chain([&UNLISTED_POD]) {
        let servers = set.servers(pod.name).unwrap();
        // One close request plus five keep-alive ones.
        assert_eq!(servers.http.stats().requests(), 6, "{}", pod.name);
        assert_eq!(servers.http.stats().connections(), 2, "{}", pod.name);
    }
    set.topology().assert_no_csum_errors();

    drop(set);
    assert_eq!(Topology::leftovers(&prefix).unwrap(), Vec::<String>::new());
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn forced_checksum_verification_sees_no_errors_without_nat() {
    require_root();
    let set = ClusterSet::create(
        &scenario::manifest(&scenario::all_backends_ready()).to_yaml(),
        &quiet,
    )
    .unwrap();
    let topo = set.topology();
    topo.set_infra_tx_checksum(false).unwrap();
    direct_traffic_works(&set);
    topo.assert_no_csum_errors();
    topo.set_pod_tx_checksum(false).unwrap();
    direct_traffic_works(&set);
    topo.assert_no_csum_errors();
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn corrupted_checksums_are_counted() {
    // The counters must be able to fail: a datagram with a wrong UDP
    // checksum, injected by a raw socket in the client pod, is counted by
    // the receiving pod.
    require_root();
    let set = ClusterSet::create(
        &scenario::manifest(&scenario::all_backends_ready()).to_yaml(),
        &quiet,
    )
    .unwrap();
    let topo = set.topology();
    topo.set_infra_tx_checksum(false).unwrap();
    let client = &topo.pod(CLIENT).unwrap().netns;
    let target = BACKENDS[1];
    client
        .enter(|| send_bad_udp(CLIENT_IP, target.ip, BACKEND_UDP_PORT))
        .unwrap()
        .unwrap();
    let counters = topo.csum_counters().unwrap();
    let receiver = &counters[topo.pod(target.name).unwrap().netns.name()];
    // The datagram may still be in flight; poll briefly.
    let mut udp = receiver.udp;
    for _ in 0..50 {
        if udp > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        udp = mcs_tests::csum::CsumCounters::read(&topo.pod(target.name).unwrap().netns)
            .unwrap()
            .udp;
    }
    assert_eq!(udp, 1, "the receiver did not count the bad checksum");
    assert!(topo.check_no_csum_errors().is_err());
}

/// Sends one UDP datagram with a deliberately wrong checksum (raw socket,
/// kernel builds the IP header).
fn send_bad_udp(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    dport: u16,
) -> std::io::Result<()> {
    use etherparse::PacketBuilder;
    let payload = b"bad checksum";
    let builder = PacketBuilder::ipv4(src.octets(), dst.octets(), 64).udp(40999, dport);
    let mut packet = Vec::new();
    builder
        .write(&mut packet, payload)
        .map_err(std::io::Error::other)?;
    // IPv4 header is 20 bytes; the UDP checksum is at offset 6 of the UDP
    // header. Flip it (and avoid 0, which means "no checksum").
    let at = 20 + 6;
    packet[at] ^= 0x55;
    if packet[at] == 0 && packet[at + 1] == 0 {
        packet[at + 1] = 1;
    }
    let udp = &packet[20..];
    // SAFETY: plain socket(2)/sendto(2) calls on a buffer we own; the fd is
    // closed by OwnedFd.
    unsafe {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(dst).to_be(),
            },
            sin_zero: [0; 8],
        };
        let sent = libc::sendto(
            fd.as_raw_fd(),
            udp.as_ptr().cast(),
            udp.len(),
            0,
            std::ptr::from_ref(&addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
