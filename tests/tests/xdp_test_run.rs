//! BPF_PROG_TEST_RUN tier: packets in, packets out, through the real XDP
//! program loaded from the agent's embedded object, with maps programmed by
//! the agent's own reconciler. Checksums are verified independently with
//! etherparse (full checksums) and by finishing partial checksums the way
//! the kernel's `skb_checksum_help` does.
//!
//! Needs root (CAP_BPF); run by `cargo xtask test`.

use std::net::Ipv4Addr;

use etherparse::{IpNumber, Ipv4Header, Ipv4Options, TcpHeader, UdpHeader};
use mcs_agent::{
    conntrack::{Janitor, Scan},
    dataplane::test_run::XdpTestRun,
    desired,
    dump::{self, DumpReport},
    model::manifest,
};
use mcs_common::{CtKey, CtValue, PROTO_TCP, names, prefilter::Role};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const CLIENT: [u8; 4] = [10, 101, 1, 2];
const VIP: [u8; 4] = [10, 96, 100, 10];
const OTHER: [u8; 4] = [10, 102, 1, 99];

/// The conntrack key of a TCP packet from `src:sport` to `dst:dport`.
fn tcp_ct_key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> CtKey {
    CtKey {
        saddr: u32::from_ne_bytes(src),
        daddr: u32::from_ne_bytes(dst),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto: PROTO_TCP,
        _pad: [0; 3],
    }
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this tier needs root (CAP_BPF): run `cargo xtask test`"
    );
}

fn manifest(backends: &[(&str, &str)]) -> String {
    let mut yaml = String::from(
        "apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceImport\nmetadata: {name: web, namespace: demo}\n\
         spec: {type: ClusterSetIP, ips: [\"10.96.100.10\"], ports: [{name: http, protocol: TCP, port: 80}, {name: dns, protocol: UDP, port: 53}]}\n",
    );
    for (index, (addr, cluster)) in backends.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web-{index}, namespace: demo, labels: {{multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: {cluster}}}}}\n\
             addressType: IPv4\nports: [{{name: http, protocol: TCP, port: 8080}}, {{name: dns, protocol: UDP, port: 5353}}]\n\
             endpoints: [{{addresses: [\"{addr}\"]}}]\n"
        ));
    }
    yaml
}

struct Harness {
    dataplane: XdpTestRun,
}

impl Harness {
    fn new() -> Self {
        require_root();
        // Small maps: each test loads its own copy.
        let dataplane =
            XdpTestRun::load(&[(names::CONNTRACK, 4096)]).expect("load the XDP program");
        Self { dataplane }
    }

    fn with_backends(backends: &[(&str, &str)]) -> Self {
        let mut harness = Self::new();
        harness.apply(&manifest(backends));
        harness
    }

    fn apply(&mut self, yaml: &str) {
        self.dataplane.apply_manifest(yaml).expect("apply");
    }

    fn run(&self, packet: &[u8]) -> (u32, Vec<u8>) {
        self.dataplane.run(packet).expect("test run")
    }

    fn dump(&self) -> DumpReport {
        dump::collect(&self.dataplane.maps).expect("read maps")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Csum {
    /// Finished checksum (sender with TX checksum offload off).
    Full,
    /// Pseudo-header seed (CHECKSUM_PARTIAL, veth with offload on).
    Partial,
    /// UDP without checksum (field 0).
    Zero,
}

#[derive(Clone, Debug)]
struct Pkt {
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    udp: bool,
    csum: Csum,
    options: Vec<u8>,
    frags: u16,
    syn: bool,
    payload: Vec<u8>,
}

impl Pkt {
    fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self {
            src,
            dst,
            sport,
            dport,
            udp: false,
            csum: Csum::Full,
            options: Vec::new(),
            frags: 0x4000, // DF
            syn: true,
            payload: b"GET / HTTP/1.1\r\nHost: web\r\n\r\n".to_vec(),
        }
    }

    fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self {
            udp: true,
            syn: false,
            payload: b"ping, an odd-length payload".to_vec(),
            ..Self::tcp(src, sport, dst, dport)
        }
    }

    fn csum(mut self, csum: Csum) -> Self {
        self.csum = csum;
        self
    }

    fn build(&self) -> Vec<u8> {
        let l4 = self.l4_segment();
        let mut ip = Ipv4Header::new(
            l4.len() as u16,
            64,
            if self.udp {
                IpNumber::UDP
            } else {
                IpNumber::TCP
            },
            self.src,
            self.dst,
        )
        .expect("valid header");
        ip.options = Ipv4Options::try_from(self.options.as_slice()).expect("options");
        // Recomputes the total length now that the options are known.
        ip.set_payload_len(l4.len()).expect("length fits");
        ip.dont_fragment = self.frags & 0x4000 != 0;
        ip.more_fragments = self.frags & 0x2000 != 0;
        ip.fragment_offset = (self.frags & 0x1fff).try_into().expect("13 bits");
        ip.header_checksum = ip.calc_header_checksum();
        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
        ip.write(&mut frame).expect("write ip");
        frame.extend_from_slice(&l4);
        frame
    }

    fn l4_segment(&self) -> Vec<u8> {
        let mut segment = Vec::new();
        let check = if self.udp {
            let mut udp =
                UdpHeader::without_ipv4_checksum(self.sport, self.dport, self.payload.len())
                    .expect("udp");
            udp.checksum = udp
                .calc_checksum_ipv4_raw(self.src, self.dst, &self.payload)
                .expect("checksum");
            udp.write(&mut segment).expect("write udp");
            6
        } else {
            let mut tcp = TcpHeader::new(self.sport, self.dport, 1000, 64240);
            tcp.syn = self.syn;
            tcp.ack = !self.syn;
            tcp.checksum = tcp
                .calc_checksum_ipv4_raw(self.src, self.dst, &self.payload)
                .expect("checksum");
            tcp.write(&mut segment).expect("write tcp");
            16
        };
        segment.extend_from_slice(&self.payload);
        let field = match self.csum {
            Csum::Full => return segment,
            Csum::Zero => 0,
            Csum::Partial => pseudo_seed(
                self.src,
                self.dst,
                if self.udp { 17 } else { 6 },
                segment.len(),
            ),
        };
        segment[check..check + 2].copy_from_slice(&field.to_be_bytes());
        segment
    }
}

/// Ones-complement sum of big-endian 16-bit words (independent of mcs).
fn ones_sum(mut acc: u32, bytes: &[u8]) -> u32 {
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        acc += u32::from(word);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// What Linux stores in the L4 checksum field of a CHECKSUM_PARTIAL packet.
fn pseudo_seed(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    fold(ones_sum(0, &pseudo))
}

/// A translated packet, verified.
#[derive(Debug)]
struct Seen {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
}

/// Parses an output frame and checks every checksum. For `partial`
/// packets the field must be the seed of the *new* addresses: finishing it
/// as the kernel would (checksum over the segment, seed included) must give
/// the correct checksum.
fn verify(frame: &[u8], csum: Csum) -> Seen {
    let (ip, rest) = Ipv4Header::from_slice(&frame[14..]).expect("IPv4 header");
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let segment = &rest[..ip.payload_len().expect("length") as usize];
    let (sport, dport, field, expected, check_offset) = if ip.protocol == IpNumber::UDP {
        let (udp, payload) = UdpHeader::from_slice(segment).expect("UDP header");
        let expected = udp
            .calc_checksum_ipv4_raw(ip.source, ip.destination, payload)
            .expect("checksum");
        (
            udp.source_port,
            udp.destination_port,
            udp.checksum,
            expected,
            6,
        )
    } else {
        let (tcp, payload) = TcpHeader::from_slice(segment).expect("TCP header");
        let expected = tcp
            .calc_checksum_ipv4_raw(ip.source, ip.destination, payload)
            .expect("checksum");
        (
            tcp.source_port,
            tcp.destination_port,
            tcp.checksum,
            expected,
            16,
        )
    };
    match csum {
        Csum::Full => assert_eq!(field, expected, "full L4 checksum"),
        Csum::Zero => assert_eq!(field, 0, "UDP zero checksum must stay zero"),
        Csum::Partial => {
            assert_eq!(
                field,
                pseudo_seed(ip.source, ip.destination, ip.protocol.0, segment.len()),
                "partial checksum must be the new pseudo-header seed"
            );
            let mut finished = !fold(ones_sum(0, segment));
            if ip.protocol == IpNumber::UDP && finished == 0 {
                finished = 0xffff;
            }
            let _ = check_offset;
            assert_eq!(finished, expected, "finished partial checksum");
        }
    }
    Seen {
        src: Ipv4Addr::from(ip.source),
        dst: Ipv4Addr::from(ip.destination),
        sport,
        dport,
    }
}

const BACKENDS: [(&str, &str); 3] = [
    ("10.101.1.10", "cluster-a"),
    ("10.102.1.10", "cluster-b"),
    ("10.102.1.11", "cluster-b"),
];

fn is_backend(addr: Ipv4Addr) -> bool {
    BACKENDS.iter().any(|(b, _)| addr.to_string() == *b)
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn dnat_and_reverse_nat_keep_checksums_exact() {
    let harness = Harness::with_backends(&BACKENDS);
    for (udp, csum) in [
        (false, Csum::Full),
        (false, Csum::Partial),
        (true, Csum::Full),
        (true, Csum::Partial),
        (true, Csum::Zero),
    ] {
        let (vport, tport) = if udp { (53, 5353) } else { (80, 8080) };
        let forward = if udp {
            Pkt::udp(CLIENT, 40000, VIP, vport)
        } else {
            Pkt::tcp(CLIENT, 40000, VIP, vport)
        }
        .csum(csum);
        let (action, out) = harness.run(&forward.build());
        assert_eq!(action, XDP_PASS, "{udp} {csum:?}");
        let seen = verify(&out, csum);
        assert!(
            is_backend(seen.dst),
            "DNAT to a listed backend, got {seen:?}"
        );
        assert_eq!(
            (seen.src, seen.sport, seen.dport),
            (Ipv4Addr::from(CLIENT), 40000, tport)
        );

        // The backend's reply comes back to the client from the ClusterSetIP.
        let mut reply = forward.clone();
        reply.src = seen.dst.octets();
        reply.dst = CLIENT;
        reply.sport = tport;
        reply.dport = 40000;
        reply.syn = false;
        let (action, out) = harness.run(&reply.build());
        assert_eq!(action, XDP_PASS);
        let back = verify(&out, csum);
        assert_eq!(
            (back.src, back.sport, back.dst, back.dport),
            (Ipv4Addr::from(VIP), vport, Ipv4Addr::from(CLIENT), 40000),
            "reverse NAT"
        );
    }
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn ip_options_are_skipped_correctly() {
    let harness = Harness::with_backends(&BACKENDS);
    for csum in [Csum::Full, Csum::Partial] {
        let mut packet = Pkt::tcp(CLIENT, 41000, VIP, 80).csum(csum);
        packet.options = vec![1, 1, 1, 1, 1, 1, 1, 0]; // NOPs + end of list
        let (action, out) = harness.run(&packet.build());
        assert_eq!(action, XDP_PASS);
        let seen = verify(&out, csum);
        assert!(is_backend(seen.dst));
        assert_eq!(seen.dport, 8080);
    }
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn flows_stick_to_their_backend_and_spread_across_backends() {
    let mut harness = Harness::with_backends(&BACKENDS);
    let mut chosen = std::collections::BTreeMap::new();
    for sport in 20000..20060 {
        let packet = Pkt::tcp(CLIENT, sport, VIP, 80).build();
        let first = verify(&harness.run(&packet).1, Csum::Full).dst;
        *chosen.entry(first).or_insert(0) += 1;
        for _ in 0..3 {
            let again = verify(&harness.run(&packet).1, Csum::Full).dst;
            assert_eq!(
                again, first,
                "every packet of a flow goes to the same backend"
            );
        }
    }
    assert_eq!(
        chosen.len(),
        BACKENDS.len(),
        "all backends used: {chosen:?}"
    );

    // Remove the backend of flow 20000: the established flow keeps it
    // (conntrack), new flows never get it.
    let packet = Pkt::tcp(CLIENT, 20000, VIP, 80).build();
    let pinned = verify(&harness.run(&packet).1, Csum::Full).dst;
    let remaining: Vec<_> = BACKENDS
        .iter()
        .copied()
        .filter(|(addr, _)| *addr != pinned.to_string())
        .collect();
    harness.apply(&manifest(&remaining));
    assert_eq!(verify(&harness.run(&packet).1, Csum::Full).dst, pinned);
    for sport in 30000..30100 {
        let new_flow = Pkt::tcp(CLIENT, sport, VIP, 80).build();
        assert_ne!(verify(&harness.run(&new_flow).1, Csum::Full).dst, pinned);
    }

    let report = harness.dump();
    let http = report
        .services
        .iter()
        .find(|s| s.port == 80)
        .expect("http frontend");
    assert_eq!(http.stats.new_flows, 60 + 100);
    assert_eq!(http.stats.packets, 60 * 4 + 2 + 100);
    assert!(http.stats.bytes >= http.stats.packets * 54);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn other_traffic_passes_byte_for_byte() {
    let harness = Harness::with_backends(&BACKENDS);
    let mut cases = vec![
        ("non-VIP TCP", Pkt::tcp(CLIENT, 40000, OTHER, 80).build()),
        ("non-VIP UDP", Pkt::udp(CLIENT, 40000, OTHER, 53).build()),
        (
            "VIP, unknown port",
            Pkt::tcp(CLIENT, 40000, VIP, 443).build(),
        ),
        (
            "VIP, wrong protocol for port",
            Pkt::udp(CLIENT, 40000, VIP, 80).build(),
        ),
    ];
    let mut fragment = Pkt::udp(CLIENT, 40000, OTHER, 53);
    fragment.frags = 0x2000;
    cases.push(("fragment to non-VIP", fragment.build()));
    let mut icmp = Pkt::tcp(CLIENT, 40000, VIP, 80).build();
    icmp[14 + 9] = 1; // protocol ICMP (header checksum irrelevant here)
    cases.push(("ICMP to VIP", icmp));
    let mut ipv6 = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
    ipv6.extend_from_slice(&[0x60; 40]);
    cases.push(("IPv6", ipv6));
    let mut arp = vec![0xff; 12];
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    cases.push(("ARP", arp));
    let short_ip = Pkt::tcp(CLIENT, 40000, VIP, 80).build()[..14 + 12].to_vec();
    cases.push(("IPv4 header cut short", short_ip));
    let mut bad_ihl = Pkt::tcp(CLIENT, 40000, VIP, 80).build();
    bad_ihl[14] = 0x43; // IHL 3 (< 5)
    cases.push(("IHL below 5", bad_ihl));
    let short_to_other = Pkt::tcp(CLIENT, 40000, OTHER, 80).build()[..14 + 20 + 10].to_vec();
    cases.push(("TCP header cut short, non-VIP", short_to_other));

    for (name, packet) in cases {
        let (action, out) = harness.run(&packet);
        assert_eq!(action, XDP_PASS, "{name}");
        assert_eq!(out, packet, "{name} must not be modified");
    }
    assert!(harness.dump().drops.values().all(|count| *count == 0));
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn odd_packets_to_a_cluster_set_ip_are_dropped_and_counted() {
    let harness = Harness::with_backends(&BACKENDS);
    let mut fragment = Pkt::udp(CLIENT, 40000, VIP, 53);
    fragment.frags = 0x2000; // first fragment, more to come
    let mut later_fragment = Pkt::udp(CLIENT, 40000, VIP, 53);
    later_fragment.frags = 0x0010;
    let truncated = Pkt::tcp(CLIENT, 40000, VIP, 80).build()[..14 + 20 + 10].to_vec();
    // The frame holds the whole TCP header, but the IP total length covers
    // only 10 bytes of it (found by fuzzing: it used to be translated).
    let mut short_total = Pkt::tcp(CLIENT, 40000, VIP, 80).build();
    short_total[14 + 2..14 + 4].copy_from_slice(&30u16.to_be_bytes());
    for packet in [
        fragment.build(),
        later_fragment.build(),
        truncated,
        short_total,
    ] {
        let (action, _) = harness.run(&packet);
        assert_eq!(action, XDP_DROP);
    }
    let drops = harness.dump().drops;
    assert_eq!(drops["fragment"], 2);
    assert_eq!(drops["malformed"], 2);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_service_without_endpoints_refuses_tcp_with_rst_and_udp_with_icmp() {
    let harness = Harness::with_backends(&[]);

    // TCP SYN (no ACK): RST|ACK from the ClusterSetIP, ack = seq + 1.
    let syn = Pkt::tcp(CLIENT, 40000, VIP, 80);
    let input = syn.build();
    let (action, out) = harness.run(&input);
    assert_eq!(
        action, XDP_PASS,
        "the stack routes the refusal to the client"
    );
    assert_eq!(
        &out[..12],
        &input[..12],
        "Ethernet header kept: addressed to the node"
    );
    let (ip, rest) = Ipv4Header::from_slice(&out[14..]).expect("IPv4");
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    assert_eq!((ip.source, ip.destination), (VIP, CLIENT));
    assert_eq!(out.len(), 14 + 20 + 20, "payload and options stripped");
    let (tcp, payload) = TcpHeader::from_slice(rest).expect("TCP");
    assert!(payload.is_empty());
    assert!(tcp.rst && tcp.ack && !tcp.syn);
    assert_eq!((tcp.source_port, tcp.destination_port), (80, 40000));
    let consumed = syn.payload.len() as u32 + 1; // payload + SYN
    assert_eq!(
        (tcp.sequence_number, tcp.acknowledgment_number),
        (0, 1000 + consumed)
    );
    assert_eq!(
        tcp.checksum,
        tcp.calc_checksum_ipv4(&ip, &[]).expect("checksum")
    );

    // A segment with ACK gets a bare RST with seq = its ack.
    let mut established = Pkt::tcp(CLIENT, 40001, VIP, 80);
    established.syn = false;
    let (action, out) = harness.run(&established.build());
    assert_eq!(action, XDP_PASS);
    let (ip, rest) = Ipv4Header::from_slice(&out[14..]).expect("IPv4");
    let (tcp, _) = TcpHeader::from_slice(rest).expect("TCP");
    assert!(tcp.rst && !tcp.ack);
    assert_eq!(
        tcp.checksum,
        tcp.calc_checksum_ipv4(&ip, &[]).expect("checksum")
    );

    // UDP: ICMP port unreachable quoting the datagram's IP header + 8 bytes.
    let datagram = Pkt::udp(CLIENT, 40002, VIP, 53).build();
    let (action, out) = harness.run(&datagram);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out.len(), 14 + 20 + 8 + 20 + 8);
    let (ip, icmp) = Ipv4Header::from_slice(&out[14..]).expect("IPv4");
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    assert_eq!(
        (ip.source, ip.destination, ip.protocol),
        (VIP, CLIENT, IpNumber::ICMP)
    );
    assert_eq!(
        &icmp[..2],
        &[3, 3],
        "destination unreachable / port unreachable"
    );
    assert_eq!(fold(ones_sum(0, icmp)), 0xffff, "ICMP checksum");
    assert_eq!(
        &icmp[8..],
        &datagram[14..14 + 28],
        "quotes the original header and 8 bytes"
    );

    // A RST is never answered; a packet with IP options is dropped unanswered.
    let mut reset = Pkt::tcp(CLIENT, 40003, VIP, 80).build();
    reset[14 + 20 + 13] = 0x04;
    assert_eq!(harness.run(&reset).0, XDP_DROP);
    let mut with_options = Pkt::udp(CLIENT, 40004, VIP, 53);
    with_options.options = vec![1, 1, 1, 0];
    assert_eq!(harness.run(&with_options.build()).0, XDP_DROP);

    let report = harness.dump();
    assert_eq!(report.drops["no_backend"], 3);
    assert_eq!(report.drops["no_backend_unreplied"], 2);
    let refused: u64 = report.services.iter().map(|s| s.stats.no_backend).sum();
    assert_eq!(refused, 5);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn client_ip_affinity_keeps_a_client_on_one_backend_across_ports() {
    let mut harness = Harness::new();
    let yaml = manifest(&BACKENDS).replace(
        "{type: ClusterSetIP,",
        "{sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}, type: ClusterSetIP,",
    );
    harness.apply(&yaml);
    let mut per_client = std::collections::BTreeSet::new();
    for client in 1..=30u8 {
        let source = [10, 101, 7, client];
        let mut chosen = std::collections::BTreeSet::new();
        for sport in 0..8 {
            let packet = Pkt::tcp(source, 30000 + sport * 7, VIP, 80).build();
            chosen.insert(verify(&harness.run(&packet).1, Csum::Full).dst);
        }
        assert_eq!(
            chosen.len(),
            1,
            "client {client} stays on one backend: {chosen:?}"
        );
        per_client.extend(chosen);
    }
    assert!(
        per_client.len() > 1,
        "different clients still spread: {per_client:?}"
    );
    let report = harness.dump();
    let http = report.services.iter().find(|s| s.port == 80).expect("http");
    assert_eq!(http.affinity_timeout_seconds, Some(30));
    assert_eq!(http.maglev_table_size, mcs_common::MAGLEV_TABLE_SIZE);
    assert!(
        harness.dataplane.maps.affinity.keys().count() >= 30,
        "one binding per client"
    );
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn terminating_endpoints_serve_new_flows_only_without_ready_ones() {
    let mut harness = Harness::new();
    let mut yaml = manifest(&BACKENDS[..1]);
    yaml.push_str(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: web-t, namespace: demo, labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: cluster-b}}\n\
         addressType: IPv4\nports: [{name: http, protocol: TCP, port: 8080}]\n\
         endpoints: [{addresses: [\"10.102.1.50\"], conditions: {ready: false, serving: true, terminating: true}}]\n",
    );
    harness.apply(&yaml);
    for sport in 0..40 {
        let seen = verify(
            &harness
                .run(&Pkt::tcp(CLIENT, 50000 + sport, VIP, 80).build())
                .1,
            Csum::Full,
        );
        assert_eq!(
            seen.dst,
            Ipv4Addr::new(10, 101, 1, 10),
            "ready endpoint only"
        );
    }
    // The ready endpoint goes away: the terminating one takes new flows,
    // while the established flow keeps its (now removed) backend.
    let established = Pkt::tcp(CLIENT, 50000, VIP, 80).build();
    harness.apply(&yaml.replace(
        "addresses: [\"10.101.1.10\"]",
        "addresses: [\"10.101.1.10\"], conditions: {ready: false, serving: false}",
    ));
    assert_eq!(
        verify(&harness.run(&established).1, Csum::Full).dst,
        Ipv4Addr::new(10, 101, 1, 10)
    );
    let fresh = verify(
        &harness.run(&Pkt::tcp(CLIENT, 51000, VIP, 80).build()).1,
        Csum::Full,
    );
    assert_eq!(fresh.dst, Ipv4Addr::new(10, 102, 1, 50));
    let report = harness.dump();
    let http = report.services.iter().find(|s| s.port == 80).expect("http");
    assert_eq!(http.backends[0].state, "terminating");
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_port_goes_only_to_clusters_that_expose_it() {
    let mut harness = Harness::new();
    // cluster-b's slice exposes only `http`: `dns` traffic must stay in a.
    let yaml = manifest(&BACKENDS).replace(
        "metadata: {name: web-1, namespace: demo, labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: cluster-b}}\naddressType: IPv4\nports: [{name: http, protocol: TCP, port: 8080}, {name: dns, protocol: UDP, port: 5353}]",
        "metadata: {name: web-1, namespace: demo, labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: cluster-b}}\naddressType: IPv4\nports: [{name: http, protocol: TCP, port: 8080}]",
    ).replace(
        "metadata: {name: web-2, namespace: demo, labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: cluster-b}}\naddressType: IPv4\nports: [{name: http, protocol: TCP, port: 8080}, {name: dns, protocol: UDP, port: 5353}]",
        "metadata: {name: web-2, namespace: demo, labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: cluster-b}}\naddressType: IPv4\nports: [{name: http, protocol: TCP, port: 8080}]",
    );
    harness.apply(&yaml);
    let mut http_backends = std::collections::BTreeSet::new();
    for sport in 0..60 {
        let dns = verify(
            &harness
                .run(&Pkt::udp(CLIENT, 20000 + sport, VIP, 53).build())
                .1,
            Csum::Full,
        );
        assert_eq!(
            dns.dst,
            Ipv4Addr::new(10, 101, 1, 10),
            "UDP 53 only in cluster-a"
        );
        let http = verify(
            &harness
                .run(&Pkt::tcp(CLIENT, 20000 + sport, VIP, 80).build())
                .1,
            Csum::Full,
        );
        http_backends.insert(http.dst);
    }
    assert_eq!(http_backends.len(), 3, "TCP 80 in both clusters");
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn retired_backends_lose_their_udp_flows_but_keep_tcp_ones() {
    let mut harness = Harness::with_backends(&BACKENDS);
    // One UDP and one TCP flow from fixed client ports.
    let udp = Pkt::udp(CLIENT, 33333, VIP, 53);
    let tcp = Pkt::tcp(CLIENT, 33333, VIP, 80);
    let udp_backend = verify(&harness.run(&udp.build()).1, Csum::Full).dst;
    let tcp_backend = verify(&harness.run(&tcp.build()).1, Csum::Full).dst;

    // Retire both flows' backends.
    let remaining: Vec<_> = BACKENDS
        .iter()
        .copied()
        .filter(|(addr, _)| *addr != udp_backend.to_string() && *addr != tcp_backend.to_string())
        .collect();
    assert!(!remaining.is_empty());
    let converted = manifest::parse(&manifest(&remaining)).expect("manifest");
    let (snapshot, _) = manifest::snapshot(converted.objects);
    let (state, _) = desired::compute(&snapshot);
    let report = harness
        .dataplane
        .reconciler
        .apply(&state, &mut harness.dataplane.maps);
    assert!(!report.retired.is_empty());
    // The agent's path: the janitor thread scans conntrack.
    let mut janitor = Janitor::start(&harness.dataplane.maps.conntrack).expect("janitor");
    janitor.submit(report.retired.clone(), false);
    let scan = next_scan(&mut janitor);
    assert_eq!(scan.removed, 2, "both directions of the UDP flow");
    assert!(scan.live.is_none(), "no sweep was asked for");

    // The UDP client on its fixed port is re-balanced at once; the TCP
    // connection keeps its backend (kube-proxy's policy).
    let moved = verify(&harness.run(&udp.build()).1, Csum::Full).dst;
    assert_ne!(moved, udp_backend, "stale UDP flow re-balanced");
    assert!(remaining.iter().any(|(addr, _)| *addr == moved.to_string()));
    let mut established = tcp.clone();
    established.syn = false;
    assert_eq!(
        verify(&harness.run(&established.build()).1, Csum::Full).dst,
        tcp_backend
    );
    // Its replies still come from the ClusterSetIP: the retired backend
    // lingers in the prefilter while conntrack holds its flow.
    let reply = Pkt::tcp(tcp_backend.octets(), 8080, CLIENT, 33333);
    let back = verify(&harness.run(&reply.build()).1, Csum::Full);
    assert_eq!((back.src, back.sport), (Ipv4Addr::from(VIP), 80));

    // The service itself goes: its established TCP flow keeps working both
    // ways (the ClusterSetIP lingers too), new flows are not translated.
    let report = harness.dataplane.reconciler.apply(
        &desired::DesiredState::default(),
        &mut harness.dataplane.maps,
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        verify(&harness.run(&established.build()).1, Csum::Full).dst,
        tcp_backend
    );
    let back = verify(&harness.run(&reply.build()).1, Csum::Full);
    assert_eq!((back.src, back.sport), (Ipv4Addr::from(VIP), 80));
    let new_flow = Pkt::tcp(CLIENT, 44444, VIP, 80).build();
    assert_eq!(harness.run(&new_flow), (XDP_PASS, new_flow.clone()));
    assert!(harness.dataplane.maps.prefilter.lingering() >= 2);

    // A sweep while the flow lives keeps both addresses; once conntrack
    // has no flow through them, the next sweep releases them.
    let vip = (Role::Destination, u32::from_ne_bytes(VIP));
    let backend = (Role::Source, u32::from_ne_bytes(tcp_backend.octets()));
    std::thread::sleep(std::time::Duration::from_millis(1100)); // the grace period
    assert!(
        harness
            .dataplane
            .maps
            .prefilter
            .sweep_due(std::time::Instant::now())
    );
    // (The agent sweeps when due, at most every few seconds; here at once.)
    let sweep = |harness: &mut Harness, janitor: &mut Janitor| {
        janitor.submit(Vec::new(), true);
        let (live, started) = next_scan(janitor).live.expect("sweep asked for");
        harness.dataplane.maps.prefilter.sweep(&live, started);
    };
    sweep(&mut harness, &mut janitor);
    assert!(harness.dataplane.maps.prefilter.contains(vip));
    assert!(harness.dataplane.maps.prefilter.contains(backend));
    let keys: Vec<CtKey> = harness
        .dataplane
        .maps
        .conntrack
        .keys()
        .collect::<Result<_, _>>()
        .expect("conntrack keys");
    for key in keys {
        harness
            .dataplane
            .maps
            .conntrack
            .remove(&key)
            .expect("delete flow");
    }
    sweep(&mut harness, &mut janitor);
    assert!(!harness.dataplane.maps.prefilter.contains(vip));
    assert!(!harness.dataplane.maps.prefilter.contains(backend));
    assert_eq!(harness.dataplane.maps.prefilter.lingering(), 0);
}

/// Waits for the janitor's next scan.
fn next_scan(janitor: &mut Janitor) -> Scan {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let report = runtime
        .block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(30), janitor.report()).await
        })
        .expect("scan within 30 s")
        .expect("janitor running");
    report.scan.expect("scan succeeded")
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn the_prefilter_skips_conntrack_only_for_unrelated_packets() {
    let mut harness = Harness::with_backends(&BACKENDS);
    for (addr, _) in BACKENDS {
        let addr: Ipv4Addr = addr.parse().expect("address");
        assert!(
            harness
                .dataplane
                .maps
                .prefilter
                .contains((Role::Source, u32::from_ne_bytes(addr.octets())))
        );
    }
    assert!(
        harness
            .dataplane
            .maps
            .prefilter
            .contains((Role::Destination, u32::from_ne_bytes(VIP)))
    );
    // A conntrack entry written behind the agent's back for a flow between
    // two unrelated addresses: the prefilter lets its packet skip conntrack.
    let key = tcp_ct_key(CLIENT, 40000, OTHER, 80);
    let target = [10, 101, 1, 77];
    let value = CtValue {
        nat_addr: u32::from_ne_bytes(target),
        nat_port: 8080u16.to_be(),
        _pad: 0,
        flags: 0,
        frontend_id: 0,
        backend_addr: u32::from_ne_bytes(target),
        backend_port: 8080u16.to_be(),
        _pad2: 0,
        backend_id: 0,
        _pad3: 0,
        last_seen_ns: 0,
    };
    harness
        .dataplane
        .maps
        .conntrack
        .insert(key, value, 0)
        .expect("insert");
    let packet = Pkt::tcp(CLIENT, 40000, OTHER, 80).build();
    assert_eq!(harness.run(&packet), (XDP_PASS, packet.clone()), "skipped");
    // A rebuild from the maps (as after adoption) takes conntrack's
    // destinations in: now the entry is found and applied.
    harness.dataplane.maps.rebuild_prefilter().expect("rebuild");
    let seen = verify(&harness.run(&packet).1, Csum::Full);
    assert_eq!((seen.dst, seen.dport), (Ipv4Addr::from(target), 8080));
    // Service traffic still translates after the rebuild.
    let seen = verify(
        &harness.run(&Pkt::tcp(CLIENT, 40001, VIP, 80).build()).1,
        Csum::Full,
    );
    assert!(is_backend(seen.dst));
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_full_service_map_fails_loudly_and_spares_what_is_programmed() {
    require_root();
    let mut harness = Harness {
        dataplane: XdpTestRun::load(&[(names::SERVICES, 6), (names::CONNTRACK, 64)]).expect("load"),
    };
    // web: 2 ports + 2 VIP markers = 4 entries; api adds 4 more: 2 fail.
    let mut yaml = manifest(&BACKENDS);
    yaml.push_str(
        "---\napiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceImport\nmetadata: {name: api, namespace: demo}\n\
         spec: {ips: [\"10.96.100.20\"], ports: [{name: http, protocol: TCP, port: 80}, {name: dns, protocol: UDP, port: 53}]}\n",
    );
    let converted = manifest::parse(&yaml).expect("manifest");
    let (snapshot, _) = manifest::snapshot(converted.objects);
    let (state, _) = desired::compute(&snapshot);
    let report = harness
        .dataplane
        .reconciler
        .apply(&state, &mut harness.dataplane.maps);
    assert_eq!(
        report.errors.len(),
        2,
        "the writes that did not fit fail: {:?}",
        report.errors
    );
    for (_, error) in &report.errors {
        assert_eq!(error.map, names::SERVICES);
    }
    // What fits serves; a retry fails the same way without disturbing it.
    let served = verify(
        &harness.run(&Pkt::tcp(CLIENT, 40000, VIP, 80).build()).1,
        Csum::Full,
    );
    assert!(is_backend(served.dst));
    let again = harness
        .dataplane
        .reconciler
        .apply(&state, &mut harness.dataplane.maps);
    assert_eq!(again.errors.len(), 2);
    assert!(is_backend(
        verify(
            &harness.run(&Pkt::tcp(CLIENT, 40000, VIP, 80).build()).1,
            Csum::Full
        )
        .dst
    ));

    // Conntrack (LRU, 64 entries here) full: old flows are evicted, never an
    // insert failure; an evicted flow's next packet gets the same backend
    // from Maglev because the backend set did not change.
    let first = Pkt::tcp(CLIENT, 10000, VIP, 80).build();
    let first_backend = verify(&harness.run(&first).1, Csum::Full).dst;
    for sport in 10001..10400 {
        let (action, _) = harness.run(&Pkt::tcp(CLIENT, sport, VIP, 80).build());
        assert_eq!(action, XDP_PASS);
    }
    let mut later = Pkt::tcp(CLIENT, 10000, VIP, 80);
    later.syn = false;
    assert_eq!(
        verify(&harness.run(&later.build()).1, Csum::Full).dst,
        first_backend
    );
    assert_eq!(harness.dump().drops["conntrack_full"], 0);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn conntrack_timestamps_follow_the_coarse_clock_through_jiffies() {
    use mcs_agent::dataplane::clock;
    let harness = Harness::with_backends(&BACKENDS);
    let calibration = harness.dataplane.maps.clock.get(&0, 0).expect("clock");
    assert!(
        calibration.ns_per_jiffy > 0,
        "the harness calibrates as the agent does: {calibration:?}"
    );
    let tick = calibration.ns_per_jiffy;
    let before = clock::coarse_now().expect("clock");
    let packet = Pkt::tcp(CLIENT, 41000, VIP, 80).build();
    assert_eq!(harness.run(&packet).0, XDP_PASS);
    let after = clock::coarse_now().expect("clock");
    let stamps: Vec<u64> = harness
        .dataplane
        .maps
        .conntrack
        .iter()
        .map(|entry| entry.expect("conntrack entry").1.last_seen_ns)
        .collect();
    assert_eq!(stamps.len(), 2, "forward and reply entries");
    for stamp in stamps {
        // Jiffies and the coarse clock tick together: within a tick, with
        // one more for the tick phase of the calibration.
        assert!(
            stamp + 2 * tick >= before && stamp <= after + 2 * tick,
            "entry time {stamp} outside [{before}, {after}] ± 2 ticks of {tick} ns"
        );
    }

    // The datapath takes its time from the calibration: shifted by an
    // hour, a new flow's entries are stamped an hour ahead.
    const HOUR_NS: u64 = 3_600_000_000_000;
    let mut dataplane = harness.dataplane;
    let shifted = mcs_common::ClockValue {
        offset_ns: calibration.offset_ns + HOUR_NS,
        ..calibration
    };
    dataplane
        .maps
        .clock
        .set(0, shifted, 0)
        .expect("shift the clock");
    let before = clock::coarse_now().expect("clock");
    let packet = Pkt::tcp(CLIENT, 41001, VIP, 80).build();
    assert_eq!(dataplane.run(&packet).expect("test run").0, XDP_PASS);
    let key = tcp_ct_key(CLIENT, 41001, VIP, 80);
    let stamp = dataplane
        .maps
        .conntrack
        .get(&key, 0)
        .expect("forward entry")
        .last_seen_ns;
    assert!(
        stamp.abs_diff(before + HOUR_NS) <= 2 * tick,
        "stamp {stamp}, expected about {}",
        before + HOUR_NS
    );

    // Recalibrating gives the same mapping, to the same tolerance.
    let again =
        clock::calibrate(&mut dataplane.ebpf, &mut dataplane.maps.clock).expect("recalibrate");
    assert_eq!(again.ns_per_jiffy, tick);
    assert!(
        again.offset_ns.abs_diff(calibration.offset_ns) <= 2 * tick,
        "{calibration:?} vs {again:?}"
    );
}
