//! BPF_PROG_TEST_RUN tier: packets in, packets out, through the real packet
//! programs loaded from the agent's embedded object, with maps programmed by
//! the agent's own reconciler. Frames come from `mcs_tests::packet`, whose
//! verifier checks checksums independently (etherparse for full checksums,
//! partial ones finished the way the kernel's `skb_checksum_help` does).
//! Single packets with a known outcome are one fixture table
//! ([`packet_cases`]), run through every packet hook ([`Hook`]: XDP on a
//! veth, XDP on a NIC, tc on socket buffers with and without
//! `CHECKSUM_COMPLETE`); the tests after it follow flows and map changes,
//! and the tc hook's own behaviour (reply-only egress, refusals redirected
//! back, no checksum guessing).
//!
//! Needs root (CAP_BPF); run by `cargo xtask test`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
};

use etherparse::{IpNumber, Ipv4Header, TcpHeader};
use mcs_agent::{
    conntrack::{Janitor, Scan},
    dataplane::{
        MapSizes,
        prefilter::Member,
        test_run::{SkbChecksum, XdpTestRun},
    },
    desired,
    dump::{self, DumpReport},
    maglev,
    model::manifest,
};
use mcs_common::{
    BACKEND_F_READY, BackendKey, BackendValueV6, CT_F_FIN, CT_F_REPLY, CT_F_RST, CT_F_SEEN_NON_SYN,
    CT_F_SYN, CtKey, CtKeyV6, CtValue, CtValueV6, MAGLEV_MAX_TABLE_SIZE, MaglevPlace, PROTO_TCP,
    PROTO_UDP, SVC_F_NONE, SVC_F_VIP_MARKER, ServiceKeyV6, ServiceValue, names, programs,
};
use mcs_tests::{
    packet::{
        CHECKSUM_KINDS, Csum, ETH_LEN, ETHERNET, Ext, IPV6_LEN, Packet, Packet6, Proto, Seen,
        TCP_SEQ, frag, rfc1071, tcp_flags, verify, verify6,
    },
    require_root,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// tc verdicts as the programs return them.
const TC_NEXT: i32 = -1;
const TC_SHOT: i32 = 2;
const TC_REDIRECT: i32 = 7;

/// A packet hook and how its packets reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    /// `mcs_xdp` (veth): partial checksums are told apart by value.
    Xdp,
    /// `mcs_xdp_nic`: every checksum is full.
    XdpNic,
    /// `mcs_tc_ingress` on a socket buffer in this checksum state.
    TcIngress(SkbChecksum),
    /// `mcs_tc_egress` likewise.
    TcEgress(SkbChecksum),
}

/// Every hook that runs the whole translation.
const TRANSLATING_HOOKS: [Hook; 4] = [
    Hook::Xdp,
    Hook::XdpNic,
    Hook::TcIngress(SkbChecksum::None),
    Hook::TcIngress(SkbChecksum::Complete),
];

impl Hook {
    /// Whether the hook can be handed `frame` in a test run: the kernel
    /// builds no socket buffer for an IP frame shorter than its IP header
    /// (and such a frame never reaches tc).
    fn takes(self, frame: &[u8]) -> bool {
        let ip_header = match frame.get(12..14) {
            Some([0x08, 0x00]) => 20,
            Some([0x86, 0xdd]) => IPV6_LEN,
            _ => 0,
        };
        matches!(self, Self::Xdp | Self::XdpNic) || frame.len() >= ETH_LEN + ip_header
    }

    /// Whether a partial checksum field can reach the hook in a test run:
    /// only XDP on a veth meets one without a socket buffer saying so (a
    /// test-run socket buffer is never `CHECKSUM_PARTIAL`; the netns tier
    /// covers partial ones through tc).
    fn sees_partial(self) -> bool {
        self == Self::Xdp
    }
}

/// A verdict, whatever the hook's numbers for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
    /// tc: sent back out of the interface (a refusal).
    Redirect,
}

const CLIENT: [u8; 4] = [10, 101, 1, 2];
const VIP: [u8; 4] = [10, 96, 100, 10];
const OTHER: [u8; 4] = [10, 102, 1, 99];

/// The conntrack key of a TCP packet from `src:sport` to `dst:dport`.
fn tcp_ct_key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> CtKey {
    CtKey::new(
        SocketAddrV4::new(src.into(), sport),
        SocketAddrV4::new(dst.into(), dport),
        PROTO_TCP,
    )
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

/// The desired state of a manifest, through the agent's own functions.
fn desired_state(yaml: &str) -> desired::DesiredState {
    let (snapshot, _) = manifest::snapshot_from_yaml(yaml).expect("manifest");
    desired::compute(&snapshot).0
}

struct Harness {
    dataplane: XdpTestRun,
}

impl Harness {
    fn new() -> Self {
        require_root();
        // Small maps: each test loads its own copy.
        let dataplane = XdpTestRun::load(&MapSizes {
            conntrack: 4096,
            ..MapSizes::default()
        })
        .expect("load the XDP program");
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

    /// Writes the IPv6 frontends ([`FRONTENDS6`]) straight into the `_V6`
    /// maps through the agent's map handles, prefilter bits first (the
    /// agent does not program IPv6 from a manifest yet). Their frontend and
    /// backend ids lie above the ones the IPv4 manifest takes; both served
    /// frontends share one Maglev table alternating between the two slots.
    fn add_ipv6(&mut self) {
        let maps = &mut self.dataplane.maps;
        let size = 251;
        let base = u32::try_from(maps.maglev.capacity()).expect("chunks") - 64;
        let place = MaglevPlace {
            base,
            size,
            wide: false,
        };
        let table: Vec<u16> = (0..size as u16).map(|i| i % 2).collect();
        assert!(maps.maglev.write(&[(place, &table)]).is_empty());
        for (frontend_id, port, proto, served) in FRONTENDS6 {
            let key = ServiceKeyV6::new(VIP6, port, proto);
            let backends: &[Ipv6Addr] = if served { &BACKENDS6 } else { &[] };
            let value = ServiceValue {
                frontend_id,
                backend_count: backends.len() as u32,
                flags: if port == 0 {
                    SVC_F_VIP_MARKER
                } else {
                    SVC_F_NONE
                },
                affinity_timeout_s: 0,
                maglev_base: 0,
                maglev_size: 0,
            }
            .with_maglev(served.then_some(place));
            for (slot, addr) in backends.iter().enumerate() {
                let slot_key = BackendKey {
                    frontend_id,
                    slot: slot as u32,
                };
                let endpoint = SocketAddrV6::new(*addr, target_port(port), 0, 0);
                let backend = BackendValueV6::new(endpoint, 0, BACKEND_F_READY, 200 + slot as u32);
                maps.prefilter.put_backend(&slot_key, &backend);
                maps.backends_v6
                    .insert(slot_key, backend, 0)
                    .expect("IPv6 backend");
            }
            maps.prefilter.put_service_v6(&key);
            maps.services_v6
                .insert(key, value, 0)
                .expect("IPv6 frontend");
        }
    }

    fn run(&self, packet: &[u8]) -> (u32, Vec<u8>) {
        self.dataplane.run(packet).expect("test run")
    }

    fn run_on(&self, hook: Hook, packet: &[u8]) -> (Verdict, Vec<u8>) {
        let xdp = |name| {
            let (action, out) = self.dataplane.run_xdp(name, packet).expect("test run");
            let verdict = match action {
                XDP_PASS => Verdict::Pass,
                XDP_DROP => Verdict::Drop,
                other => panic!("XDP action {other}"),
            };
            (verdict, out)
        };
        let tc = |name, skb| {
            let (action, out) = self
                .dataplane
                .run_tc(name, packet, skb)
                .unwrap_or_else(|error| panic!("{name}: {error:#}"));
            let verdict = match action {
                TC_NEXT => Verdict::Pass,
                TC_SHOT => Verdict::Drop,
                TC_REDIRECT => Verdict::Redirect,
                other => panic!("tc action {other}"),
            };
            (verdict, out)
        };
        match hook {
            Hook::Xdp => xdp(programs::XDP),
            Hook::XdpNic => xdp(programs::XDP_NIC),
            Hook::TcIngress(skb) => tc(programs::TC_INGRESS, skb),
            Hook::TcEgress(skb) => tc(programs::TC_EGRESS, skb),
        }
    }

    /// Sends `packet`, which must pass with valid checksums of its kind.
    fn send(&self, packet: &Packet) -> Seen {
        let (action, out) = self.run(&packet.build());
        assert_eq!(action, XDP_PASS, "{packet:?}");
        verify(&out, packet.csum).unwrap_or_else(|error| panic!("{packet:?}: {error:#}"))
    }

    fn dump(&self) -> DumpReport {
        dump::collect(&self.dataplane.maps).expect("read maps")
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

/// The service's port for `proto`.
fn service_port(proto: Proto) -> u16 {
    match proto {
        Proto::Tcp => 80,
        Proto::Udp => 53,
    }
}

/// The service port's target port on the endpoints.
fn target_port(port: u16) -> u16 {
    match port {
        80 => 8080,
        53 => 5353,
        other => panic!("no service port {other}"),
    }
}

/// One row of the packet fixture table: a frame, what the program must do
/// with it, and the drop counters that must move.
struct PacketCase {
    description: String,
    input: Vec<u8>,
    verdict: Verdict,
    /// The checksum kind of the input's L4 field (partial ones only reach
    /// some hooks, see [`Hook::sees_partial`]).
    csum: Csum,
    output: Output,
    /// Drop counters (by name) and how much this frame adds to them; every
    /// other drop counter must stay.
    drops: &'static [(&'static str, u64)],
    /// Conntrack entries written before the frame is sent: a flow the
    /// datapath already knows.
    conntrack: Vec<(CtKey, CtValue)>,
    /// The same for IPv6 flows.
    conntrack6: Vec<(CtKeyV6, CtValueV6)>,
}

/// A removed backend (in no manifest of these tests).
const REMOVED: [u8; 4] = [10, 102, 1, 99];

/// Both entries of a TCP flow from `CLIENT:sport` to the ClusterSetIP's
/// port 80 translated to `backend:8080`, with `flags` seen both ways.
fn tcp_flow_entries(sport: u16, backend: [u8; 4], flags: u32) -> Vec<(CtKey, CtValue)> {
    let client = SocketAddrV4::new(CLIENT.into(), sport);
    let vip = SocketAddrV4::new(VIP.into(), 80);
    let backend = SocketAddrV4::new(backend.into(), 8080);
    vec![
        (
            CtKey::new(client, vip, PROTO_TCP),
            CtValue::new(backend, flags, 0, backend, 0),
        ),
        (
            CtKey::new(backend, client, PROTO_TCP),
            CtValue::new(vip, flags | CT_F_REPLY, 0, backend, 0),
        ),
    ]
}

/// What the program must hand back.
enum Output {
    /// The input, byte for byte.
    Unchanged,
    /// Not checked (a dropped frame).
    Any,
    /// One of these frames, whose L4 checksum is of this kind (a DNAT: one
    /// frame per backend Maglev may pick).
    OneOf(Csum, Vec<Vec<u8>>),
}

impl PacketCase {
    fn passed(description: &str, input: Vec<u8>) -> Self {
        Self {
            description: description.to_owned(),
            input,
            verdict: Verdict::Pass,
            csum: Csum::Full,
            output: Output::Unchanged,
            drops: &[],
            conntrack: Vec::new(),
            conntrack6: Vec::new(),
        }
    }

    fn dropped(description: &str, input: Vec<u8>, drops: &'static [(&'static str, u64)]) -> Self {
        Self {
            description: description.to_owned(),
            input,
            verdict: Verdict::Drop,
            csum: Csum::Full,
            output: Output::Any,
            drops,
            conntrack: Vec::new(),
            conntrack6: Vec::new(),
        }
    }

    /// `packet` to a ClusterSetIP, translated to one of [`BACKENDS`] on the
    /// target port, everything else (checksum kind included) kept.
    fn dnat(description: String, packet: &Packet) -> Self {
        let backends: Vec<Ipv4Addr> = BACKENDS
            .iter()
            .map(|(addr, _)| addr.parse().expect("backend address"))
            .collect();
        Self::dnat_to(description, packet, &backends)
    }

    /// `packet` translated to one of `backends` on the target port.
    fn dnat_to(description: String, packet: &Packet, backends: &[Ipv4Addr]) -> Self {
        let expected = backends
            .iter()
            .map(|addr| {
                let to = Packet {
                    dst: *addr,
                    dport: target_port(packet.dport),
                    ..packet.clone()
                };
                to.build()
            })
            .collect();
        Self {
            description,
            input: packet.build(),
            verdict: Verdict::Pass,
            csum: packet.csum,
            output: Output::OneOf(packet.csum, expected),
            drops: &[],
            conntrack: Vec::new(),
            conntrack6: Vec::new(),
        }
    }

    /// This case, sent after `entries` were written to conntrack.
    fn after(mut self, entries: Vec<(CtKey, CtValue)>) -> Self {
        self.conntrack = entries;
        self
    }

    /// This case, sent after IPv6 `entries` were written to conntrack.
    fn after6(mut self, entries: Vec<(CtKeyV6, CtValueV6)>) -> Self {
        self.conntrack6 = entries;
        self
    }

    /// This case passing untouched, with `drops` counted.
    fn counting(mut self, drops: &'static [(&'static str, u64)]) -> Self {
        self.drops = drops;
        self
    }

    /// IPv6 `packet` to the ClusterSetIP translated to one of `backends`
    /// on the target port, everything else (extension headers, checksum
    /// kind) kept.
    fn dnat6_to(description: String, packet: &Packet6, backends: &[Ipv6Addr]) -> Self {
        let expected = backends
            .iter()
            .map(|addr| {
                Packet6 {
                    dst: *addr,
                    dport: target_port(packet.dport),
                    ..packet.clone()
                }
                .build()
            })
            .collect();
        Self {
            output: Output::OneOf(packet.csum, expected),
            csum: packet.csum,
            ..Self::passed(&description, packet.build())
        }
    }

    /// A backend's IPv6 reply, its source translated back to the
    /// ClusterSetIP and service port.
    fn reverse6(description: &str, reply: &Packet6, service_port: u16) -> Self {
        let expected = Packet6 {
            src: VIP6,
            sport: service_port,
            ..reply.clone()
        };
        Self {
            output: Output::OneOf(reply.csum, vec![expected.build()]),
            csum: reply.csum,
            ..Self::passed(description, reply.build())
        }
    }

    /// Runs the case on XDP (veth): the output frame, or what went wrong.
    fn check(&self, harness: &mut Harness) -> Result<Vec<u8>, String> {
        self.check_on(harness, Hook::Xdp)
    }

    /// Runs the case on `hook`: the output frame, or what went wrong.
    fn check_on(&self, harness: &mut Harness, hook: Hook) -> Result<Vec<u8>, String> {
        for (key, value) in &self.conntrack {
            harness
                .dataplane
                .maps
                .conntrack
                .insert(key, value, 0)
                .map_err(|error| format!("conntrack entry: {error}"))?;
        }
        for (key, value) in &self.conntrack6 {
            harness
                .dataplane
                .maps
                .conntrack_v6
                .insert(key, value, 0)
                .map_err(|error| format!("IPv6 conntrack entry: {error}"))?;
        }
        let before = harness.dump().drops;
        let (verdict, out) = harness.run_on(hook, &self.input);
        if verdict != self.verdict {
            return Err(format!("verdict {verdict:?}, expected {:?}", self.verdict));
        }
        match &self.output {
            Output::Unchanged if out != self.input => {
                return Err(format!("modified: {out:02x?}"));
            }
            Output::OneOf(csum, frames) if !frames.contains(&out) => {
                let verdict = if out.get(12..14) == Some(&[0x86, 0xdd][..]) {
                    verify6(&out, *csum).map(|seen| format!("{seen:?}"))
                } else {
                    verify(&out, *csum).map(|seen| format!("{seen:?}"))
                };
                return Err(format!(
                    "not one of the {} expected frames (verifier: {:?}): {out:02x?}",
                    frames.len(),
                    verdict.map_err(|error| format!("{error:#}"))
                ));
            }
            _ => {}
        }
        let after = harness.dump().drops;
        let mut wrong = Vec::new();
        for (name, count) in &after {
            let moved = i128::from(*count) - i128::from(before.get(name).copied().unwrap_or(0));
            let expected = self
                .drops
                .iter()
                .find(|(counter, _)| counter == name)
                .map_or(0, |(_, by)| i128::from(*by));
            if moved != expected {
                wrong.push(format!("{name} moved by {moved}, expected {expected}"));
            }
        }
        for (name, _) in self.drops {
            if !after.contains_key(*name) {
                wrong.push(format!("no drop counter {name}"));
            }
        }
        if !wrong.is_empty() {
            return Err(format!("drop counters: {}", wrong.join(", ")));
        }
        Ok(out)
    }
}

/// Every single-packet case with a known outcome, in the order they run on
/// one harness (the DNATs last, so earlier frames meet an empty conntrack).
fn packet_cases() -> Vec<PacketCase> {
    let tcp = |dst, dport| Packet::tcp(CLIENT, 40000, dst, dport);
    let udp = |dst, dport| Packet::udp(CLIENT, 40000, dst, dport);
    let cut = |packet: Packet, len: usize| packet.build()[..len].to_vec();
    let with_byte = |packet: Packet, at: usize, value: u8| {
        let mut frame = packet.build();
        frame[at] = value;
        frame
    };
    let mut ipv6 = ETHERNET.to_vec();
    ipv6[12..].copy_from_slice(&[0x86, 0xdd]);
    ipv6.extend_from_slice(&[0x60; 40]);
    let mut arp = vec![0xff; 12];
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    // The frame holds the whole TCP header, but the IP total length covers
    // only 10 bytes of it (found by fuzzing: it used to be translated).
    let mut short_total = tcp(VIP, 80).build();
    short_total[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&30u16.to_be_bytes());
    let nops = [1, 1, 1, 1, 1, 1, 1, 0]; // NOPs + end of list

    let mut cases = vec![
        // Not ours: untouched, nothing counted.
        PacketCase::passed("non-VIP TCP", tcp(OTHER, 80).build()),
        PacketCase::passed("non-VIP UDP", udp(OTHER, 53).build()),
        PacketCase::passed("VIP, unknown port", tcp(VIP, 443).build()),
        PacketCase::passed("VIP, wrong protocol for port", udp(VIP, 80).build()),
        PacketCase::passed(
            "fragment to non-VIP",
            udp(OTHER, 53).frags(frag::MF).build(),
        ),
        // Protocol ICMP (header checksum irrelevant here).
        PacketCase::passed("ICMP to VIP", with_byte(tcp(VIP, 80), ETH_LEN + 9, 1)),
        PacketCase::passed("IPv6", ipv6),
        PacketCase::passed("ARP", arp),
        PacketCase::passed("IPv4 header cut short", cut(tcp(VIP, 80), ETH_LEN + 12)),
        // IHL 3 (< 5).
        PacketCase::passed("IHL below 5", with_byte(tcp(VIP, 80), ETH_LEN, 0x43)),
        PacketCase::passed(
            "TCP header cut short, non-VIP",
            cut(tcp(OTHER, 80), ETH_LEN + 20 + 10),
        ),
        // Odd packets to a ClusterSetIP: dropped and counted.
        PacketCase::dropped(
            "first fragment to VIP",
            udp(VIP, 53).frags(frag::MF).build(),
            &[("fragment", 1)],
        ),
        PacketCase::dropped(
            "later fragment to VIP",
            udp(VIP, 53).frags(0x0010).build(),
            &[("fragment", 1)],
        ),
        PacketCase::dropped(
            "TCP header cut short, VIP",
            cut(tcp(VIP, 80), ETH_LEN + 20 + 10),
            &[("malformed", 1)],
        ),
        PacketCase::dropped(
            "IP total length short of the TCP header, VIP",
            short_total,
            &[("malformed", 1)],
        ),
        // Translated, past IP options, with exact checksums.
        PacketCase::dnat(
            "DNAT past IP options, full checksum".to_owned(),
            &Packet::tcp(CLIENT, 41000, VIP, 80).options(&nops),
        ),
        PacketCase::dnat(
            "DNAT past IP options, partial checksum".to_owned(),
            &Packet::tcp(CLIENT, 41000, VIP, 80)
                .options(&nops)
                .csum(Csum::Partial),
        ),
    ];
    // Conntrack holds a flow of this tuple to a backend that is gone (a pod
    // removed while no agent ran, its address maybe reused elsewhere): a
    // SYN opens a new connection and is balanced over the current
    // backends, whatever the old flow's state; other packets of a flow
    // follow it (an established flow may finish on its backend).
    let finished = CT_F_SYN | CT_F_SEEN_NON_SYN | CT_F_FIN;
    cases.extend([
        PacketCase::dnat(
            "SYN on the tuple of a finished flow to a removed backend".to_owned(),
            &Packet::tcp(CLIENT, 42000, VIP, 80),
        )
        .after(tcp_flow_entries(42000, REMOVED, finished)),
        PacketCase::dnat(
            "SYN on the tuple of a reset flow to a removed backend".to_owned(),
            &Packet::tcp(CLIENT, 42001, VIP, 80),
        )
        .after(tcp_flow_entries(42001, REMOVED, CT_F_SYN | CT_F_RST)),
        PacketCase::dnat(
            "SYN on the tuple of a live flow to a removed backend".to_owned(),
            &Packet::tcp(CLIENT, 42002, VIP, 80),
        )
        .after(tcp_flow_entries(
            42002,
            REMOVED,
            CT_F_SYN | CT_F_SEEN_NON_SYN,
        )),
        PacketCase::dnat_to(
            "ACK of an established flow to a removed backend".to_owned(),
            &Packet::tcp(CLIENT, 42003, VIP, 80).established(),
            &[REMOVED.into()],
        )
        .after(tcp_flow_entries(
            42003,
            REMOVED,
            CT_F_SYN | CT_F_SEEN_NON_SYN,
        )),
        PacketCase::dnat_to(
            "FIN of a closing flow to a removed backend".to_owned(),
            &Packet::tcp(CLIENT, 42004, VIP, 80).flags(tcp_flags::FIN | tcp_flags::ACK),
            &[REMOVED.into()],
        )
        .after(tcp_flow_entries(42004, REMOVED, finished)),
    ]);
    // Translated with exact checksums of every kind.
    for (proto, csum) in CHECKSUM_KINDS {
        let packet = Packet::new(proto, CLIENT, 40000, VIP, service_port(proto)).csum(csum);
        cases.push(PacketCase::dnat(
            format!("DNAT {proto:?}, {csum:?} checksum"),
            &packet,
        ));
    }
    cases.extend(ipv6_cases());
    cases
}

/// The IPv6 ClusterSetIP, its client, an unrelated address, its backends
/// and a backend no longer in the maps.
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0x100, 0xa);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x101, 1, 0, 0, 0, 0, 2);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x102, 1, 0, 0, 0, 0, 0x99);
const BACKENDS6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0x101, 1, 0, 0, 0, 0, 0x10),
    Ipv6Addr::new(0xfd00, 0x102, 1, 0xab, 0, 0, 0xcd, 0x10),
];
const REMOVED6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x102, 1, 0, 0, 0, 0, 0x77);
/// The IPv6 frontends of [`VIP6`]: id, port, protocol, served by
/// [`BACKENDS6`] (or without backends); port 0 is the ClusterSetIP marker.
const FRONTENDS6: [(u32, u16, u8, bool); 6] = [
    (100, 80, PROTO_TCP, true),
    (101, 53, PROTO_UDP, true),
    (102, 443, PROTO_TCP, false),
    (103, 443, PROTO_UDP, false),
    (104, 0, PROTO_TCP, false),
    (105, 0, PROTO_UDP, false),
];

/// Both entries of an IPv6 TCP flow from `CLIENT6:sport` to the
/// ClusterSetIP's port 80, translated to `backend:8080`.
fn tcp_flow_entries6(sport: u16, backend: Ipv6Addr, flags: u32) -> Vec<(CtKeyV6, CtValueV6)> {
    let client = SocketAddrV6::new(CLIENT6, sport, 0, 0);
    let vip = SocketAddrV6::new(VIP6, 80, 0, 0);
    let backend = SocketAddrV6::new(backend, 8080, 0, 0);
    vec![
        (
            CtKeyV6::new(client, vip, PROTO_TCP),
            CtValueV6::new(backend, flags, 100, backend, 200),
        ),
        (
            CtKeyV6::new(backend, client, PROTO_TCP),
            CtValueV6::new(vip, flags | CT_F_REPLY, 100, backend, 200),
        ),
    ]
}

/// The IPv6 rows of the fixture table (the harness has [`FRONTENDS6`]).
fn ipv6_cases() -> Vec<PacketCase> {
    let tcp6 = |dst, dport| Packet6::new(Proto::Tcp, CLIENT6, 40000, dst, dport);
    let udp6 = |dst, dport| Packet6::new(Proto::Udp, CLIENT6, 40000, dst, dport);
    let first_fragment = Ext::Fragment {
        offset: 0,
        more: true,
    };
    let later_fragment = Ext::Fragment {
        offset: 100,
        more: false,
    };
    let atomic_fragment = Ext::Fragment {
        offset: 0,
        more: false,
    };
    let mut icmp6 = tcp6(VIP6, 80).build();
    icmp6[ETH_LEN + 6] = 58;
    let unfollowed: &[(&str, u64)] = &[("ipv6_chain_unfollowed", 1)];
    let dnat6 = |description: &str, packet: Packet6| {
        PacketCase::dnat6_to(format!("IPv6 DNAT {description}"), &packet, &BACKENDS6)
    };
    let established = CT_F_SYN | CT_F_SEEN_NON_SYN;
    let mut cases = vec![
        PacketCase::passed("IPv6 TCP to a non-VIP", tcp6(OTHER6, 80).build()),
        PacketCase::passed("IPv6 VIP, unknown port", tcp6(VIP6, 8443).build()),
        PacketCase::passed("IPv6 ICMPv6 to the VIP", icmp6),
        PacketCase::passed(
            "IPv6 header cut short",
            tcp6(VIP6, 80).build()[..ETH_LEN + 30].to_vec(),
        ),
        PacketCase::passed(
            "IPv6 fragment to a non-VIP",
            udp6(OTHER6, 53).exts(&[first_fragment]).build(),
        ),
        PacketCase::passed(
            "IPv6 authentication header to a non-VIP",
            tcp6(OTHER6, 80).exts(&[Ext::Other(51)]).build(),
        ),
        // A chain the parser does not follow: passed untouched, counted.
        PacketCase::passed(
            "IPv6 authentication header to the VIP",
            tcp6(VIP6, 80).exts(&[Ext::Other(51)]).build(),
        )
        .counting(unfollowed),
        PacketCase::passed(
            "IPv6 mobility header after hop-by-hop, to the VIP",
            udp6(VIP6, 53)
                .exts(&[Ext::HopByHop, Ext::Other(135)])
                .build(),
        )
        .counting(unfollowed),
        PacketCase::passed(
            "IPv6 chain of five extension headers to the VIP",
            tcp6(VIP6, 80).exts(&[Ext::DestOptions; 5]).build(),
        )
        .counting(unfollowed),
        // Odd packets to the ClusterSetIP: dropped and counted.
        PacketCase::dropped(
            "IPv6 first fragment to the VIP",
            udp6(VIP6, 53).exts(&[first_fragment]).build(),
            &[("fragment", 1)],
        ),
        PacketCase::dropped(
            "IPv6 later fragment to the VIP, after destination options",
            tcp6(VIP6, 80)
                .exts(&[Ext::DestOptions, later_fragment])
                .build(),
            &[("fragment", 1)],
        ),
        PacketCase::dropped(
            "IPv6 TCP header cut short, VIP",
            tcp6(VIP6, 80).build()[..ETH_LEN + IPV6_LEN + 10].to_vec(),
            &[("malformed", 1)],
        ),
        // No backend: refused; IPv6 refusals are not built yet, so the
        // packet is dropped and counted as unreplied.
        PacketCase::dropped(
            "IPv6 TCP SYN to a frontend without backends",
            tcp6(VIP6, 443).build(),
            &[("no_backend_unreplied", 1)],
        ),
        PacketCase::dropped(
            "IPv6 UDP to a frontend without backends",
            udp6(VIP6, 443).build(),
            &[("no_backend_unreplied", 1)],
        ),
        // Translated past extension headers, with exact checksums.
        dnat6(
            "past hop-by-hop, routing and destination options",
            Packet6::new(Proto::Tcp, CLIENT6, 41000, VIP6, 80).exts(&[
                Ext::HopByHop,
                Ext::Routing,
                Ext::DestOptions,
            ]),
        ),
        dnat6(
            "past four extension headers (the longest chain followed)",
            Packet6::new(Proto::Udp, CLIENT6, 41001, VIP6, 53).exts(&[
                Ext::HopByHop,
                Ext::DestOptions,
                Ext::Routing,
                Ext::DestOptions,
            ]),
        ),
        dnat6(
            "of an atomic fragment (a whole packet)",
            Packet6::new(Proto::Udp, CLIENT6, 41002, VIP6, 53).exts(&[atomic_fragment]),
        ),
        // Conntrack: the flow's entries, not the current backends.
        PacketCase::dnat6_to(
            "IPv6 ACK of an established flow to a removed backend".to_owned(),
            &Packet6::new(Proto::Tcp, CLIENT6, 42003, VIP6, 80).flags(tcp_flags::ACK),
            &[REMOVED6],
        )
        .after6(tcp_flow_entries6(42003, REMOVED6, established)),
        PacketCase::dnat6(
            "IPv6 SYN on the tuple of a finished flow to a removed backend",
            Packet6::new(Proto::Tcp, CLIENT6, 42004, VIP6, 80),
        )
        .after6(tcp_flow_entries6(42004, REMOVED6, established | CT_F_FIN)),
    ];
    // Reverse NAT of a backend's reply, both checksum kinds a reply meets.
    for csum in [Csum::Full, Csum::Partial] {
        let reply = Packet6::new(Proto::Tcp, BACKENDS6[1], 8080, CLIENT6, 42010)
            .flags(tcp_flags::ACK)
            .exts(&[Ext::DestOptions])
            .csum(csum);
        cases.push(
            PacketCase::reverse6(
                &format!("IPv6 reverse NAT of a reply, {csum:?} checksum"),
                &reply,
                80,
            )
            .after6(tcp_flow_entries6(42010, BACKENDS6[1], established)),
        );
    }
    for (proto, csum) in CHECKSUM_KINDS {
        let packet = Packet6::new(proto, CLIENT6, 40000, VIP6, service_port(proto)).csum(csum);
        cases.push(dnat6(&format!("{proto:?}, {csum:?} checksum"), packet));
    }
    cases
}

impl PacketCase {
    /// IPv6 `packet` translated to one of [`BACKENDS6`].
    fn dnat6(description: &str, packet: Packet6) -> Self {
        Self::dnat6_to(description.to_owned(), &packet, &BACKENDS6)
    }
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn packet_cases_get_their_verdict_output_and_counters() {
    for hook in TRANSLATING_HOOKS {
        packet_cases_on(hook);
    }
}

/// The fixture table on a fresh harness through `hook`.
fn packet_cases_on(hook: Hook) {
    let mut harness = Harness::with_backends(&BACKENDS);
    harness.add_ipv6();
    let cases: Vec<PacketCase> = packet_cases()
        .into_iter()
        .filter(|case| case.csum != Csum::Partial || hook.sees_partial())
        .filter(|case| hook.takes(&case.input))
        .collect();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            case.check_on(&mut harness, hook)
                .err()
                .map(|error| format!("{}: {error}", case.description))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{hook:?}: {} of {} packet cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // The counters add up over the whole table, from zero.
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for (name, by) in cases.iter().flat_map(|case| case.drops) {
        *expected.entry(name).or_default() += by;
    }
    for (name, count) in harness.dump().drops {
        assert_eq!(
            count,
            expected.get(name.as_str()).copied().unwrap_or(0),
            "{name}"
        );
    }
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn dnat_and_reverse_nat_keep_checksums_exact() {
    let mut harness = Harness::with_backends(&BACKENDS);
    for (proto, csum) in CHECKSUM_KINDS {
        let forward = Packet::new(proto, CLIENT, 40000, VIP, service_port(proto)).csum(csum);
        let out = PacketCase::dnat("forward".to_owned(), &forward)
            .check(&mut harness)
            .unwrap_or_else(|error| panic!("{forward:?}: {error}"));
        let seen = verify(&out, forward.csum).expect("DNAT checksums");
        assert!(
            is_backend(seen.dst),
            "DNAT to a listed backend, got {seen:?}"
        );

        // The backend's reply comes back to the client from the ClusterSetIP,
        // exactly as the client's own stack would have built it.
        let reply = Packet {
            dst: seen.dst,
            dport: seen.dport,
            ..forward.clone()
        }
        .reply();
        let (action, out) = harness.run(&reply.build());
        assert_eq!(action, XDP_PASS, "{reply:?}");
        let expected = Packet {
            src: VIP.into(),
            sport: forward.dport,
            ..reply.clone()
        };
        assert_eq!(out, expected.build(), "reverse NAT of {reply:?}");
        let back = verify(&out, forward.csum).expect("reverse NAT checksums");
        assert_eq!(
            (back.src, back.sport, back.dst, back.dport),
            (
                Ipv4Addr::from(VIP),
                forward.dport,
                Ipv4Addr::from(CLIENT),
                40000
            ),
            "reverse NAT"
        );
    }
}
#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn flows_stick_to_their_backend_and_spread_across_backends() {
    let mut harness = Harness::with_backends(&BACKENDS);
    let mut chosen = BTreeMap::new();
    for sport in 20000..20060 {
        let packet = Packet::tcp(CLIENT, sport, VIP, 80);
        let first = harness.send(&packet).dst;
        *chosen.entry(first).or_insert(0) += 1;
        for _ in 0..3 {
            let again = harness.send(&packet.clone().established()).dst;
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
    let packet = Packet::tcp(CLIENT, 20000, VIP, 80).established();
    let pinned = harness.send(&packet).dst;
    let remaining: Vec<_> = BACKENDS
        .iter()
        .copied()
        .filter(|(addr, _)| *addr != pinned.to_string())
        .collect();
    harness.apply(&manifest(&remaining));
    assert_eq!(harness.send(&packet).dst, pinned);
    for sport in 30000..30100 {
        let new_flow = Packet::tcp(CLIENT, sport, VIP, 80);
        assert_ne!(harness.send(&new_flow).dst, pinned);
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
fn a_service_without_endpoints_refuses_tcp_with_rst_and_udp_with_icmp() {
    let harness = Harness::with_backends(&[]);
    // The refusals' checksums (IPv4, TCP, ICMP) are all full ones.
    let refusal = |out: &[u8]| verify(out, Csum::Full).expect("refusal checksums");

    // TCP SYN (no ACK): RST|ACK from the ClusterSetIP, ack = seq + 1.
    let syn = Packet::tcp(CLIENT, 40000, VIP, 80);
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
    let seen = refusal(&out);
    assert_eq!(
        (seen.src, seen.sport, seen.dst, seen.dport),
        (VIP.into(), 80, CLIENT.into(), 40000)
    );
    assert_eq!(out.len(), ETH_LEN + 20 + 20, "payload and options stripped");
    let (_, rest) = Ipv4Header::from_slice(&out[ETH_LEN..]).expect("IPv4");
    let (tcp, payload) = TcpHeader::from_slice(rest).expect("TCP");
    assert!(payload.is_empty());
    assert!(tcp.rst && tcp.ack && !tcp.syn);
    let consumed = syn.payload.len() as u32 + 1; // payload + SYN
    assert_eq!(
        (tcp.sequence_number, tcp.acknowledgment_number),
        (0, TCP_SEQ + consumed)
    );

    // A segment with ACK gets a bare RST with seq = its ack.
    let (action, out) = harness.run(&Packet::tcp(CLIENT, 40001, VIP, 80).established().build());
    assert_eq!(action, XDP_PASS);
    refusal(&out);
    let (_, rest) = Ipv4Header::from_slice(&out[ETH_LEN..]).expect("IPv4");
    let (tcp, _) = TcpHeader::from_slice(rest).expect("TCP");
    assert!(tcp.rst && !tcp.ack);

    // UDP: ICMP port unreachable quoting the datagram's IP header + 8 bytes.
    let datagram = Packet::udp(CLIENT, 40002, VIP, 53).build();
    let (action, out) = harness.run(&datagram);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out.len(), ETH_LEN + 20 + 8 + 20 + 8);
    let seen = refusal(&out);
    assert_eq!(
        (seen.src, seen.dst, seen.proto),
        (VIP.into(), CLIENT.into(), IpNumber::ICMP)
    );
    let icmp = &out[ETH_LEN + 20..];
    assert_eq!(
        &icmp[..2],
        &[3, 3],
        "destination unreachable / port unreachable"
    );
    assert_eq!(
        rfc1071::fold(rfc1071::sum(0, icmp)),
        0xffff,
        "ICMP checksum"
    );
    assert_eq!(
        &icmp[8..],
        &datagram[ETH_LEN..ETH_LEN + 28],
        "quotes the original header and 8 bytes"
    );

    // A RST is never answered; a packet with IP options is dropped unanswered.
    let reset = Packet::tcp(CLIENT, 40003, VIP, 80).flags(tcp_flags::RST);
    assert_eq!(harness.run(&reset.build()).0, XDP_DROP);
    let with_options = Packet::udp(CLIENT, 40004, VIP, 53).options(&[1, 1, 1, 0]);
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
    let mut per_client = BTreeSet::new();
    for client in 1..=30u8 {
        let source = [10, 101, 7, client];
        let mut chosen = BTreeSet::new();
        for sport in 0..8 {
            let packet = Packet::tcp(source, 30000 + sport * 7, VIP, 80);
            chosen.insert(harness.send(&packet).dst);
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
    assert_eq!(
        http.maglev_table_size,
        maglev::rule_size(BACKENDS.len()) as usize
    );
    assert!(
        harness.dataplane.maps.affinity.keys().count() >= 30,
        "one binding per client"
    );
}

/// `count` endpoints of cluster-a, 10.101.x.y.
fn many_backends(count: u16) -> Vec<(String, &'static str)> {
    (0..count)
        .map(|i| {
            let addr = Ipv4Addr::new(10, 101, (i / 200) as u8 + 1, (i % 200) as u8 + 10);
            (addr.to_string(), "cluster-a")
        })
        .collect()
}

fn manifest_of(backends: &[(String, &'static str)]) -> String {
    let borrowed: Vec<(&str, &str)> = backends.iter().map(|(a, c)| (a.as_str(), *c)).collect();
    manifest(&borrowed)
}

/// Every table size the datapath meets: one backend (101 one-byte
/// entries), ten (1009), and beyond 256 backends the capped two-byte table.
/// New flows reach only listed backends, spread over all of them, each as
/// often as its share of the table read back from the maps.
#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn tables_of_every_size_and_width_spread_flows_over_their_backends() {
    for count in [1u16, 10, 300] {
        let mut harness = Harness::new();
        let backends = many_backends(count);
        harness.apply(&manifest_of(&backends));
        let report = harness.dump();
        let http = report.services.iter().find(|s| s.port == 80).expect("http");
        let size = maglev::rule_size(usize::from(count));
        assert_eq!(http.maglev_table_size, size as usize, "{count} backends");
        if count > 256 {
            assert_eq!(size, MAGLEV_MAX_TABLE_SIZE);
        }
        // Every backend owns its share of the table (read back through the
        // service entry's place, as the datapath reads it).
        let owned: u32 = http.backends.iter().map(|b| b.table_entries).sum();
        assert_eq!(owned, size, "{count} backends");
        let share = size / u32::from(count);
        for backend in &http.backends {
            assert!(
                (share..=share + 1).contains(&backend.table_entries),
                "{count} backends: {} owns {}",
                backend.addr,
                backend.table_entries
            );
        }
        let listed: BTreeSet<Ipv4Addr> = backends
            .iter()
            .map(|(a, _)| a.parse().expect("addr"))
            .collect();
        let mut hits: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
        let flows = u32::from(count) * 20;
        for flow in 0..flows {
            let sport = 1024 + (flow % 60_000) as u16;
            let client = [10, 110, (flow / 60_000) as u8, 2];
            // Partial checksums: among thousands of flows some full
            // checksum would equal its pseudo-header seed (1 in 65536, the
            // documented ambiguity of `checksum::is_partial`).
            let packet = Packet::tcp(client, sport, VIP, 80).csum(Csum::Partial);
            let seen = harness.send(&packet);
            assert!(listed.contains(&seen.dst), "{} is not a backend", seen.dst);
            *hits.entry(seen.dst).or_default() += 1;
        }
        // 20 flows per backend on average: every one is reached.
        assert_eq!(hits.len(), usize::from(count), "{count} backends: {hits:?}");
    }
}

/// A third backend outgrows a two-backend table: the new table goes to a
/// new place and the service entry switches to it. Established flows keep
/// their backend (conntrack), new ones reach all three; shrinking back
/// keeps the grown table (it still suits two backends).
#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_table_that_grows_moves_and_flows_follow() {
    let mut harness = Harness::new();
    let backends = many_backends(3);
    harness.apply(&manifest_of(&backends[..2]));
    let size_of = |harness: &Harness| {
        harness
            .dump()
            .services
            .iter()
            .find(|s| s.port == 80)
            .expect("http")
            .maglev_table_size
    };
    assert_eq!(size_of(&harness), maglev::rule_size(2) as usize);
    let established: Vec<(Packet, Ipv4Addr)> = (0..40)
        .map(|i| {
            let packet = Packet::tcp(CLIENT, 41000 + i, VIP, 80);
            let dst = harness.send(&packet).dst;
            (packet, dst)
        })
        .collect();
    harness.apply(&manifest_of(&backends));
    let grown = size_of(&harness);
    assert_eq!(grown, maglev::rule_size(4) as usize, "grown with headroom");
    for (packet, dst) in &established {
        assert_eq!(harness.send(&packet.clone().established()).dst, *dst);
    }
    let reached: BTreeSet<Ipv4Addr> = (0..90)
        .map(|i| harness.send(&Packet::tcp(CLIENT, 42000 + i, VIP, 80)).dst)
        .collect();
    assert_eq!(reached.len(), 3, "{reached:?}");
    harness.apply(&manifest_of(&backends[..2]));
    assert_eq!(size_of(&harness), grown, "kept: it suits two backends");
    let third: Ipv4Addr = backends[2].0.parse().expect("addr");
    for i in 0..60 {
        assert_ne!(
            harness.send(&Packet::tcp(CLIENT, 43000 + i, VIP, 80)).dst,
            third
        );
    }
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
        let seen = harness.send(&Packet::tcp(CLIENT, 50000 + sport, VIP, 80));
        assert_eq!(
            seen.dst,
            Ipv4Addr::new(10, 101, 1, 10),
            "ready endpoint only"
        );
    }
    // The ready endpoint goes away: the terminating one takes new flows,
    // while the established flow keeps its (now removed) backend.
    let established = Packet::tcp(CLIENT, 50000, VIP, 80).established();
    harness.apply(&yaml.replace(
        "addresses: [\"10.101.1.10\"]",
        "addresses: [\"10.101.1.10\"], conditions: {ready: false, serving: false}",
    ));
    assert_eq!(
        harness.send(&established).dst,
        Ipv4Addr::new(10, 101, 1, 10)
    );
    let fresh = harness.send(&Packet::tcp(CLIENT, 51000, VIP, 80));
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
    let mut http_backends = BTreeSet::new();
    for sport in 0..60 {
        let dns = harness.send(&Packet::udp(CLIENT, 20000 + sport, VIP, 53));
        assert_eq!(
            dns.dst,
            Ipv4Addr::new(10, 101, 1, 10),
            "UDP 53 only in cluster-a"
        );
        let http = harness.send(&Packet::tcp(CLIENT, 20000 + sport, VIP, 80));
        http_backends.insert(http.dst);
    }
    assert_eq!(http_backends.len(), 3, "TCP 80 in both clusters");
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn retired_backends_lose_their_udp_flows_but_keep_tcp_ones() {
    let mut harness = Harness::with_backends(&BACKENDS);
    // One UDP and one TCP flow from fixed client ports.
    let udp = Packet::udp(CLIENT, 33333, VIP, 53);
    let tcp = Packet::tcp(CLIENT, 33333, VIP, 80);
    let udp_backend = harness.send(&udp).dst;
    let tcp_backend = harness.send(&tcp).dst;

    // Retire both flows' backends.
    let remaining: Vec<_> = BACKENDS
        .iter()
        .copied()
        .filter(|(addr, _)| *addr != udp_backend.to_string() && *addr != tcp_backend.to_string())
        .collect();
    assert!(!remaining.is_empty());
    let state = desired_state(&manifest(&remaining));
    let report = harness
        .dataplane
        .reconciler
        .apply(&state, &mut harness.dataplane.maps);
    assert!(!report.retired.is_empty());
    // The agent's path: the janitor thread scans conntrack.
    let mut janitor = Janitor::start(
        &harness.dataplane.maps.conntrack,
        Some(&harness.dataplane.maps.conntrack_v6),
        None,
    )
    .expect("janitor");
    janitor.submit(report.retired.clone(), false);
    let scan = next_scan(&mut janitor);
    assert_eq!(scan.removed, 2, "both directions of the UDP flow");
    assert!(scan.live.is_none(), "no sweep was asked for");

    // The UDP client on its fixed port is re-balanced at once; the TCP
    // connection keeps its backend (kube-proxy's policy).
    let moved = harness.send(&udp).dst;
    assert_ne!(moved, udp_backend, "stale UDP flow re-balanced");
    assert!(remaining.iter().any(|(addr, _)| *addr == moved.to_string()));
    let established = tcp.clone().established();
    assert_eq!(harness.send(&established).dst, tcp_backend);
    // Its replies still come from the ClusterSetIP: the retired backend
    // lingers in the prefilter while conntrack holds its flow.
    let reply = Packet::tcp(tcp_backend, 8080, CLIENT, 33333);
    let back = harness.send(&reply);
    assert_eq!((back.src, back.sport), (Ipv4Addr::from(VIP), 80));

    // The service itself goes: its established TCP flow keeps working both
    // ways (the ClusterSetIP lingers too), new flows are not translated.
    let report = harness.dataplane.reconciler.apply(
        &desired::DesiredState::default(),
        &mut harness.dataplane.maps,
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(harness.send(&established).dst, tcp_backend);
    let back = harness.send(&reply);
    assert_eq!((back.src, back.sport), (Ipv4Addr::from(VIP), 80));
    let new_flow = Packet::tcp(CLIENT, 44444, VIP, 80).build();
    assert_eq!(harness.run(&new_flow), (XDP_PASS, new_flow.clone()));
    assert!(harness.dataplane.maps.prefilter.lingering() >= 2);

    // A sweep while the flow lives keeps both addresses; once conntrack
    // has no flow through them, the next sweep releases them.
    let vip = Member::destination(VIP.into());
    let backend = Member::source(tcp_backend);
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
                .contains(Member::source(addr))
        );
    }
    assert!(
        harness
            .dataplane
            .maps
            .prefilter
            .contains(Member::destination(VIP.into()))
    );
    // A conntrack entry written behind the agent's back for a flow between
    // two unrelated addresses: the prefilter lets its packet skip conntrack.
    let key = tcp_ct_key(CLIENT, 40000, OTHER, 80);
    let target = [10, 101, 1, 77];
    let target = SocketAddrV4::new(target.into(), 8080);
    let value = CtValue::new(target, 0, 0, target, 0);
    harness
        .dataplane
        .maps
        .conntrack
        .insert(key, value, 0)
        .expect("insert");
    let packet = Packet::tcp(CLIENT, 40000, OTHER, 80).established();
    let frame = packet.build();
    assert_eq!(harness.run(&frame), (XDP_PASS, frame.clone()), "skipped");
    // A rebuild from the maps (as after adoption) takes conntrack's
    // destinations in: now the entry is found and applied.
    harness.dataplane.maps.rebuild_prefilter().expect("rebuild");
    let seen = harness.send(&packet);
    assert_eq!((seen.dst, seen.dport), (*target.ip(), target.port()));
    // Service traffic still translates after the rebuild.
    let seen = harness.send(&Packet::tcp(CLIENT, 40001, VIP, 80));
    assert!(is_backend(seen.dst));
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_full_service_map_fails_loudly_and_spares_what_is_programmed() {
    require_root();
    let mut harness = Harness {
        dataplane: XdpTestRun::load(&MapSizes {
            frontends: 6,
            conntrack: 64,
            ..MapSizes::default()
        })
        .expect("load"),
    };
    // web: 2 ports + 2 VIP markers = 4 entries; api adds 4 more: 2 fail.
    let mut yaml = manifest(&BACKENDS);
    yaml.push_str(
        "---\napiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceImport\nmetadata: {name: api, namespace: demo}\n\
         spec: {ips: [\"10.96.100.20\"], ports: [{name: http, protocol: TCP, port: 80}, {name: dns, protocol: UDP, port: 53}]}\n",
    );
    let state = desired_state(&yaml);
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
        assert!(error.is_full(), "{error:?}");
    }
    // What fits serves; a retry fails the same way without disturbing it.
    let served = harness.send(&Packet::tcp(CLIENT, 40000, VIP, 80));
    assert!(is_backend(served.dst));
    let again = harness
        .dataplane
        .reconciler
        .apply(&state, &mut harness.dataplane.maps);
    assert_eq!(again.errors.len(), 2);
    assert!(is_backend(
        harness.send(&Packet::tcp(CLIENT, 40000, VIP, 80)).dst
    ));

    // Conntrack (LRU, 64 entries here) full: old flows are evicted, never an
    // insert failure; an evicted flow's next packet gets the same backend
    // from Maglev because the backend set did not change.
    let first_backend = harness.send(&Packet::tcp(CLIENT, 10000, VIP, 80)).dst;
    for sport in 10001..10400 {
        let (action, _) = harness.run(&Packet::tcp(CLIENT, sport, VIP, 80).build());
        assert_eq!(action, XDP_PASS);
    }
    let later = Packet::tcp(CLIENT, 10000, VIP, 80).established();
    assert_eq!(harness.send(&later).dst, first_backend);
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
    let packet = Packet::tcp(CLIENT, 41000, VIP, 80).build();
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
    let packet = Packet::tcp(CLIENT, 41001, VIP, 80).build();
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

/// New frontend counters: new flows of the HTTP frontend.
fn http_new_flows(harness: &Harness) -> u64 {
    let report = harness.dump();
    report
        .services
        .iter()
        .find(|s| s.port == 80)
        .expect("http frontend")
        .stats
        .new_flows
}

/// The hook a flow's replies meet when its forward packets met `hook`: tc
/// translates replies on the way to the pod (egress).
fn reply_hook(hook: Hook) -> Hook {
    match hook {
        Hook::TcIngress(skb) => Hook::TcEgress(skb),
        other => other,
    }
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_syn_on_a_finished_flows_tuple_goes_to_a_current_backend() {
    let mut harness = Harness::with_backends(&BACKENDS);
    let syn = Packet::tcp(CLIENT, 45000, VIP, 80);
    let first = harness.send(&syn).dst;
    // A retransmitted SYN: the same backend (Maglev), the same flow.
    let flows = http_new_flows(&harness);
    assert_eq!(harness.send(&syn).dst, first);
    assert_eq!(
        http_new_flows(&harness),
        flows,
        "a retransmit is no new flow"
    );

    // The connection runs and closes both ways.
    let from_backend = |flags| Packet::tcp(first, 8080, CLIENT, 45000).flags(flags);
    let back = harness.send(&from_backend(tcp_flags::SYN | tcp_flags::ACK));
    assert_eq!((back.src, back.sport), (Ipv4Addr::from(VIP), 80));
    harness.send(&syn.clone().established());
    harness.send(&syn.clone().flags(tcp_flags::FIN | tcp_flags::ACK));
    harness.send(&from_backend(tcp_flags::FIN | tcp_flags::ACK));
    let forward_key = tcp_ct_key(CLIENT, 45000, VIP, 80);
    let old_reply_key = tcp_ct_key(first.octets(), 8080, CLIENT, 45000);
    let conntrack = &harness.dataplane.maps.conntrack;
    let forward = conntrack.get(&forward_key, 0).expect("forward entry");
    assert_eq!(
        forward.flags & (CT_F_SEEN_NON_SYN | CT_F_FIN),
        CT_F_SEEN_NON_SYN | CT_F_FIN,
        "the datapath records the handshake and the close"
    );

    // Its backend goes away; the client opens a new connection on the
    // same tuple: a current backend, however the old flow ended.
    let remaining: Vec<_> = BACKENDS
        .iter()
        .copied()
        .filter(|(addr, _)| *addr != first.to_string())
        .collect();
    harness.apply(&manifest(&remaining));
    let again = harness.send(&syn).dst;
    assert_ne!(again, first, "a new connection reached the removed backend");
    assert!(remaining.iter().any(|(addr, _)| *addr == again.to_string()));
    assert_eq!(http_new_flows(&harness), flows + 1);
    // Both entries are the new flow's: the old reply entry is gone, the
    // new backend's replies come back from the ClusterSetIP.
    let conntrack = &harness.dataplane.maps.conntrack;
    assert!(
        conntrack.get(&old_reply_key, 0).is_err(),
        "old reply entry left"
    );
    let forward = conntrack.get(&forward_key, 0).expect("forward entry");
    assert_eq!(forward.backend().ip(), &again);
    assert_eq!(forward.flags & CT_F_FIN, 0, "the new flow starts afresh");
    let reply = Packet::tcp(again, 8080, CLIENT, 45000).flags(tcp_flags::SYN | tcp_flags::ACK);
    let back = harness.send(&reply);
    assert_eq!((back.src, back.sport), (Ipv4Addr::from(VIP), 80));

    // The service gone entirely: a SYN on the tuple is not translated.
    let report = harness.dataplane.reconciler.apply(
        &desired::DesiredState::default(),
        &mut harness.dataplane.maps,
    );
    assert!(report.errors.is_empty());
    let frame = syn.build();
    assert_eq!(harness.run(&frame), (XDP_PASS, frame.clone()));
}

/// A pod that called the ClusterSetIP connects later to the backend
/// directly from the same port (the finished flow's entries still there):
/// the backend's SYN-ACK answers that direct connection, so on every hook
/// it passes as it is and the finished flow is forgotten. A flow still in
/// its handshake keeps translating a retransmitted SYN-ACK.
#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_direct_connection_on_a_finished_flows_tuple_is_not_translated() {
    for (i, hook) in TRANSLATING_HOOKS.into_iter().enumerate() {
        let harness = Harness::with_backends(&BACKENDS);
        let sport = 45100 + 2 * u16::try_from(i).expect("few hooks");
        let translated = |packet: &Packet, on: Hook| {
            let (verdict, out) = harness.run_on(on, &packet.build());
            assert_eq!(verdict, Verdict::Pass, "{packet:?}");
            verify(&out, packet.csum).unwrap_or_else(|error| panic!("{packet:?}: {error:#}"))
        };
        let syn = Packet::tcp(CLIENT, sport, VIP, 80);
        let backend = translated(&syn, hook).dst;
        let from_backend = |flags| Packet::tcp(backend, 8080, CLIENT, sport).flags(flags);
        let back = translated(
            &from_backend(tcp_flags::SYN | tcp_flags::ACK),
            reply_hook(hook),
        );
        assert_eq!((back.src, back.sport), (Ipv4Addr::from(VIP), 80));
        translated(&syn.clone().established(), hook);
        translated(&from_backend(tcp_flags::ACK), reply_hook(hook));
        translated(&syn.clone().flags(tcp_flags::FIN | tcp_flags::ACK), hook);
        translated(
            &from_backend(tcp_flags::FIN | tcp_flags::ACK),
            reply_hook(hook),
        );

        for flags in [tcp_flags::SYN | tcp_flags::ACK, tcp_flags::ACK] {
            let frame = from_backend(flags).build();
            assert_eq!(
                harness.run_on(reply_hook(hook), &frame),
                (Verdict::Pass, frame.clone()),
                "{hook:?}: flags {flags:#x} of the direct connection passed as they are"
            );
        }
        let conntrack = &harness.dataplane.maps.conntrack;
        for (key, what) in [
            (tcp_ct_key(backend.octets(), 8080, CLIENT, sport), "reply"),
            (tcp_ct_key(CLIENT, sport, VIP, 80), "forward"),
        ] {
            assert!(
                conntrack.get(&key, 0).is_err(),
                "{hook:?}: the finished flow's {what} entry left"
            );
        }

        let syn = Packet::tcp(CLIENT, sport + 1, VIP, 80);
        let backend = translated(&syn, hook).dst;
        for _ in 0..2 {
            let back = translated(
                &Packet::tcp(backend, 8080, CLIENT, sport + 1)
                    .flags(tcp_flags::SYN | tcp_flags::ACK),
                reply_hook(hook),
            );
            assert_eq!(
                (back.src, back.sport),
                (Ipv4Addr::from(VIP), 80),
                "{hook:?}: a retransmitted SYN-ACK"
            );
        }
    }
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn expired_flows_are_collected_by_class_both_directions_together() {
    use mcs_agent::{
        conntrack::{
            expiry::Class,
            gc::{Collected, Collector, GcConfig},
        },
        dataplane::clock,
    };
    use mcs_common::{PROTO_UDP, SockRevKey, SockRevValue};

    let mut harness = Harness::with_backends(&BACKENDS);
    // One flow per class (and a half-closed one), through the program.
    let open = |sport| {
        let syn = Packet::tcp(CLIENT, sport, VIP, 80);
        let backend = harness.send(&syn).dst;
        (syn, Packet::tcp(backend, 8080, CLIENT, sport))
    };
    let (closed, closed_back) = open(46000);
    let (established, established_back) = open(46001);
    let (half_closed, _) = open(46002);
    let (syn_only, _) = open(46003);
    for (forward, back) in [(&closed, &closed_back), (&established, &established_back)] {
        harness.send(&back.clone().flags(tcp_flags::SYN | tcp_flags::ACK));
        harness.send(&forward.clone().established());
    }
    harness.send(&half_closed.clone().established());
    harness.send(&half_closed.clone().flags(tcp_flags::FIN | tcp_flags::ACK));
    harness.send(&closed.clone().flags(tcp_flags::FIN | tcp_flags::ACK));
    harness.send(&closed_back.clone().flags(tcp_flags::FIN | tcp_flags::ACK));
    let udp = harness.send(&Packet::udp(CLIENT, 46004, VIP, 53)).dst;
    let key_of = |packet: &Packet, proto| {
        CtKey::new(
            SocketAddrV4::new(packet.src, packet.sport),
            SocketAddrV4::new(packet.dst, packet.dport),
            proto,
        )
    };
    let udp_key = CtKey::new(
        SocketAddrV4::new(CLIENT.into(), 46004),
        SocketAddrV4::new(VIP.into(), 53),
        PROTO_UDP,
    );
    let udp_reply_key = CtKey::new(
        SocketAddrV4::new(udp, 5353),
        SocketAddrV4::new(CLIENT.into(), 46004),
        PROTO_UDP,
    );
    // Socket-LB reverse entries of a TCP and a UDP socket, used a minute
    // and a half ago.
    let now = clock::coarse_now().expect("clock");
    let sock = |cookie, proto| {
        let key = SockRevKey::new(cookie, SocketAddrV4::new([10, 101, 1, 10].into(), 8080));
        let mut value = SockRevValue::new(SocketAddrV4::new(VIP.into(), 80), proto, 1);
        value.last_used_ns = now - 90_000_000_000;
        (key, value)
    };
    for (key, value) in [sock(1, PROTO_TCP), sock(2, PROTO_UDP)] {
        harness
            .dataplane
            .maps
            .sock_revnat
            .insert(key, value, 0)
            .expect("socket entry");
    }
    assert_eq!(harness.dataplane.maps.conntrack.keys().count(), 10);

    // Whole passes in steps of three entries (the cursor resumes), at
    // clock times later than now.
    let mut collector = Collector::new(GcConfig {
        batch: 3,
        ..GcConfig::default()
    });
    let mut pass = |harness: &Harness, after_s: u64| {
        let mut total = Collected::default();
        for _ in 0..100 {
            let step = collector
                .step(
                    &harness.dataplane.maps.conntrack,
                    Some(&harness.dataplane.maps.conntrack_v6),
                    Some(&harness.dataplane.maps.sock_revnat),
                    now + after_s * 1_000_000_000,
                )
                .expect("collection step");
            total.scanned += step.scanned;
            for (sum, add) in total.expired.iter_mut().zip(step.expired) {
                *sum += add;
            }
            total.deleted += step.deleted;
            total.sockets_expired += step.sockets_expired;
            if step.pass_finished.is_some() {
                return total;
            }
        }
        panic!("no pass finished in 100 steps");
    };
    let present =
        |harness: &Harness, key: &CtKey| harness.dataplane.maps.conntrack.get(key, 0).is_ok();
    let expired = |total: &Collected, class: Class| total.expired[class.index()];

    let fresh = pass(&harness, 5);
    assert_eq!(fresh.scanned, 10);
    assert_eq!((fresh.deleted, fresh.sockets_expired), (0, 1), "{fresh:?}");
    assert!(
        harness
            .dataplane
            .maps
            .sock_revnat
            .get(&sock(1, PROTO_TCP).0, 0)
            .is_ok()
    );

    // Closed after 10 s: both entries.
    let later = pass(&harness, 11);
    assert_eq!(
        (expired(&later, Class::Closed), later.deleted),
        (1, 2),
        "{later:?}"
    );
    assert!(!present(&harness, &key_of(&closed, PROTO_TCP)));
    assert!(!present(&harness, &key_of(&closed_back, PROTO_TCP)));
    // A FIN one way is not closed.
    assert!(present(&harness, &key_of(&half_closed, PROTO_TCP)));

    // SYN-only and UDP after 60 s.
    let minute = pass(&harness, 61);
    assert_eq!(expired(&minute, Class::Syn), 1, "{minute:?}");
    assert_eq!(expired(&minute, Class::Other), 1, "{minute:?}");
    assert_eq!(minute.deleted, 4);
    assert!(!present(&harness, &key_of(&syn_only, PROTO_TCP)));
    assert!(!present(&harness, &udp_key) && !present(&harness, &udp_reply_key));
    assert!(present(&harness, &key_of(&established, PROTO_TCP)));
    assert!(present(&harness, &key_of(&established_back, PROTO_TCP)));

    // Established flows (the half-closed one too) after 6 h.
    let hours = pass(&harness, 6 * 3600 + 1);
    assert_eq!(expired(&hours, Class::Established), 2, "{hours:?}");
    assert_eq!(harness.dataplane.maps.conntrack.keys().count(), 0);
    assert_eq!(hours.sockets_expired, 1, "the TCP socket's entry");
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn every_hook_translates_both_directions_with_exact_checksums() {
    for hook in TRANSLATING_HOOKS {
        let mut harness = Harness::with_backends(&BACKENDS);
        for (proto, csum) in CHECKSUM_KINDS {
            if csum == Csum::Partial && !hook.sees_partial() {
                continue;
            }
            let forward = Packet::new(proto, CLIENT, 40000, VIP, service_port(proto)).csum(csum);
            let out = PacketCase::dnat("forward".to_owned(), &forward)
                .check_on(&mut harness, hook)
                .unwrap_or_else(|error| panic!("{hook:?} {forward:?}: {error}"));
            let seen = verify(&out, csum).expect("DNAT checksums");
            assert!(
                is_backend(seen.dst),
                "{hook:?}: DNAT to a backend: {seen:?}"
            );
            let reply = Packet {
                dst: seen.dst,
                dport: seen.dport,
                ..forward.clone()
            }
            .reply();
            let (verdict, out) = harness.run_on(reply_hook(hook), &reply.build());
            assert_eq!(verdict, Verdict::Pass, "{hook:?} {reply:?}");
            let expected = Packet {
                src: VIP.into(),
                sport: forward.dport,
                ..reply.clone()
            };
            assert_eq!(out, expected.build(), "{hook:?}: reverse NAT of {reply:?}");
            verify(&out, csum).expect("reverse NAT checksums");
        }
    }
}

/// A TCP segment whose full checksum equals its pseudo-header seed (the
/// value a partial field would hold): the 1-in-65536 frame a hook that
/// guesses from the value takes for partial.
fn seed_valued_full_checksum(dst: [u8; 4], dport: u16) -> Packet {
    let base = Packet::tcp(CLIENT, 40500, dst, dport);
    let len = u16::try_from(20 + 2).expect("segment length");
    let seed = rfc1071::seed(CLIENT, dst, 6, len);
    (0..=u16::MAX)
        .map(|word| base.clone().payload(&word.to_be_bytes()))
        .find(|packet| {
            let frame = packet.build();
            let check = &frame[ETH_LEN + 20 + 16..ETH_LEN + 20 + 18];
            u16::from_be_bytes([check[0], check[1]]) == seed
        })
        .expect("some payload word gives the seed as checksum")
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn nic_xdp_and_tc_never_take_a_full_checksum_for_partial() {
    let packet = seed_valued_full_checksum(VIP, 80);
    for hook in [
        Hook::XdpNic,
        Hook::TcIngress(SkbChecksum::None),
        Hook::TcIngress(SkbChecksum::Complete),
    ] {
        let mut harness = Harness::with_backends(&BACKENDS);
        PacketCase::dnat(format!("{hook:?}"), &packet)
            .check_on(&mut harness, hook)
            .unwrap_or_else(|error| panic!("{hook:?}: {error}"));
    }
    // The veth XDP program guesses from the value and gets this one frame
    // wrong (docs/checksums.md): the reason NICs get their own program.
    let harness = Harness::with_backends(&BACKENDS);
    let (verdict, out) = harness.run_on(Hook::Xdp, &packet.build());
    assert_eq!(verdict, Verdict::Pass);
    assert!(
        verify(&out, Csum::Full).is_err(),
        "the documented residual case"
    );
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn tc_egress_only_reverse_translates_replies() {
    for skb in [SkbChecksum::None, SkbChecksum::Complete] {
        let mut harness = Harness::with_backends(&BACKENDS);
        // A new flow to the ClusterSetIP on the way to a pod: not ours.
        let forward = Packet::tcp(CLIENT, 40600, VIP, 80);
        let frame = forward.build();
        assert_eq!(
            harness.run_on(Hook::TcEgress(skb), &frame),
            (Verdict::Pass, frame.clone()),
            "egress starts no flow"
        );
        assert_eq!(
            harness
                .dump()
                .services
                .iter()
                .map(|s| s.stats.new_flows)
                .sum::<u64>(),
            0
        );
        // The flow starts on ingress; its forward packets seen on egress
        // (a hairpin) stay as they are, its replies are translated.
        let out = PacketCase::dnat("forward".to_owned(), &forward)
            .check_on(&mut harness, Hook::TcIngress(skb))
            .expect("DNAT on ingress");
        let seen = verify(&out, Csum::Full).expect("DNAT checksums");
        let established = forward.clone().established().build();
        assert_eq!(
            harness.run_on(Hook::TcEgress(skb), &established),
            (Verdict::Pass, established.clone()),
            "a forward entry is not egress's to use"
        );
        let reply = Packet {
            dst: seen.dst,
            dport: seen.dport,
            ..forward.clone()
        }
        .reply();
        let (verdict, out) = harness.run_on(Hook::TcEgress(skb), &reply.build());
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(
            verify(&out, Csum::Full).expect("reverse NAT checksums"),
            mcs_tests::packet::Seen {
                src: VIP.into(),
                sport: 80,
                dst: CLIENT.into(),
                dport: 40600,
                proto: IpNumber::TCP,
            }
        );
        // Odd packets on egress are passed, never dropped.
        let fragment = Packet::udp(CLIENT, 40601, VIP, 53).frags(frag::MF).build();
        assert_eq!(
            harness.run_on(Hook::TcEgress(skb), &fragment),
            (Verdict::Pass, fragment.clone())
        );
    }
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn tc_refuses_with_rst_and_icmp_sent_back_out_of_the_interface() {
    // Only `CHECKSUM_NONE`: cutting a buffer to the reply's size makes a
    // `CHECKSUM_COMPLETE` one `CHECKSUM_NONE` (its sum no longer applies),
    // which the test run's sum check does not look at.
    {
        let skb = SkbChecksum::None;
        let harness = Harness::with_backends(&[]);
        let hook = Hook::TcIngress(skb);
        let swapped = |input: &[u8]| {
            let mut eth = input[6..12].to_vec();
            eth.extend_from_slice(&input[..6]);
            eth
        };

        let syn = Packet::tcp(CLIENT, 40000, VIP, 80).payload(b"data on a SYN");
        let input = syn.build();
        let (verdict, out) = harness.run_on(hook, &input);
        assert_eq!(verdict, Verdict::Redirect, "{skb:?}: back to the client");
        assert_eq!(
            &out[..12],
            &swapped(&input)[..],
            "Ethernet addresses swapped"
        );
        assert_eq!(out.len(), ETH_LEN + 20 + 20);
        let seen = verify(&out, Csum::Full).expect("RST checksums");
        assert_eq!(
            (seen.src, seen.sport, seen.dst, seen.dport),
            (VIP.into(), 80, CLIENT.into(), 40000)
        );
        let (_, rest) = Ipv4Header::from_slice(&out[ETH_LEN..]).expect("IPv4");
        let (tcp, _) = TcpHeader::from_slice(rest).expect("TCP");
        assert!(tcp.rst && tcp.ack && !tcp.syn);
        assert_eq!(
            tcp.acknowledgment_number,
            TCP_SEQ + syn.payload.len() as u32 + 1
        );

        let datagram = Packet::udp(CLIENT, 40002, VIP, 53).payload(&[7; 100]);
        let input = datagram.build();
        let (verdict, out) = harness.run_on(hook, &input);
        assert_eq!(verdict, Verdict::Redirect);
        assert_eq!(&out[..12], &swapped(&input)[..]);
        assert_eq!(out.len(), ETH_LEN + 20 + 8 + 20 + 8);
        let seen = verify(&out, Csum::Full).expect("ICMP checksums");
        assert_eq!(
            (seen.src, seen.dst, seen.proto),
            (VIP.into(), CLIENT.into(), IpNumber::ICMP)
        );
        let icmp = &out[ETH_LEN + 20..];
        assert_eq!(&icmp[..2], &[3, 3]);
        assert_eq!(
            rfc1071::fold(rfc1071::sum(0, icmp)),
            0xffff,
            "ICMP checksum"
        );
        assert_eq!(&icmp[8..], &input[ETH_LEN..ETH_LEN + 28], "the quote");

        let reset = Packet::tcp(CLIENT, 40003, VIP, 80)
            .flags(tcp_flags::RST)
            .build();
        assert_eq!(harness.run_on(hook, &reset).0, Verdict::Drop);
        let report = harness.dump();
        assert_eq!(report.drops["no_backend"], 2);
        assert_eq!(report.drops["no_backend_unreplied"], 1);
    }
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn ipv6_flows_translate_both_ways_and_tc_egress_only_reverse_translates() {
    for skb in [SkbChecksum::None, SkbChecksum::Complete] {
        let mut harness = Harness::with_backends(&BACKENDS);
        harness.add_ipv6();
        // A new IPv6 flow on the way to a pod: egress starts no flow.
        let forward = Packet6::new(Proto::Tcp, CLIENT6, 40600, VIP6, 80);
        let frame = forward.build();
        assert_eq!(
            harness.run_on(Hook::TcEgress(skb), &frame),
            (Verdict::Pass, frame.clone()),
            "egress starts no flow"
        );
        // Ingress translates it; the backend's reply, seen on egress, comes
        // back from the ClusterSetIP with an exact checksum.
        let out = PacketCase::dnat6("forward", forward.clone())
            .check_on(&mut harness, Hook::TcIngress(skb))
            .expect("DNAT on ingress");
        let seen = verify6(&out, Csum::Full).expect("DNAT checksums");
        assert!(BACKENDS6.contains(&seen.dst), "{seen:?}");
        let established = forward.clone().flags(tcp_flags::ACK).build();
        assert_eq!(
            harness.run_on(Hook::TcEgress(skb), &established),
            (Verdict::Pass, established.clone()),
            "a forward entry is not egress's to use"
        );
        let reply = Packet6 {
            dst: seen.dst,
            dport: seen.dport,
            ..forward.clone()
        }
        .reply();
        let (verdict, out) = harness.run_on(Hook::TcEgress(skb), &reply.build());
        assert_eq!(verdict, Verdict::Pass);
        let expected = Packet6 {
            src: VIP6,
            sport: 80,
            ..reply.clone()
        };
        assert_eq!(out, expected.build(), "{skb:?}");
        verify6(&out, Csum::Full).expect("reverse NAT checksums");
        // Later packets of the flow follow its entry to the same backend.
        let (verdict, out) = harness.run_on(Hook::TcIngress(skb), &established);
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(verify6(&out, Csum::Full).expect("checksums").dst, seen.dst);
        // Counted under the IPv6 frontend's id (the shared counters).
        let stats = harness
            .dataplane
            .maps
            .frontend_stats
            .get(&100, 0)
            .expect("frontend counters");
        let (flows, packets) = stats.iter().fold((0, 0), |(flows, packets), cpu| {
            (flows + cpu.new_flows, packets + cpu.packets)
        });
        assert_eq!((flows, packets), (1, 3), "{skb:?}");
        // `dump` lists both entries of the flow readably.
        let filter = dump::ConntrackFilter {
            list: true,
            limit: 100,
            ..dump::ConntrackFilter::default()
        };
        let report = dump::collect_with(&harness.dataplane.maps, &filter).expect("dump");
        let client = format!("[{CLIENT6}]:40600");
        let listed: Vec<(&str, &str, &str)> = report
            .conntrack
            .iter()
            .filter(|entry| entry.src == client || entry.dst == client)
            .map(|entry| {
                (
                    entry.direction.as_str(),
                    entry.nat.as_str(),
                    entry.protocol.as_str(),
                )
            })
            .collect();
        let backend = format!("[{}]:{}", seen.dst, seen.dport);
        let vip = format!("[{VIP6}]:80");
        assert_eq!(listed.len(), 2, "{:#?}", report.conntrack);
        assert!(
            listed.contains(&("forward", backend.as_str(), "TCP")),
            "{listed:?}"
        );
        assert!(
            listed.contains(&("reply", vip.as_str(), "TCP")),
            "{listed:?}"
        );
        let fill = report
            .maps
            .iter()
            .find(|fill| fill.name == names::CONNTRACK_V6)
            .expect("IPv6 conntrack fill");
        assert_eq!(fill.entries, 2);
    }
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn ipv6_client_ip_affinity_binds_a_client_to_one_backend() {
    let mut harness = Harness::with_backends(&BACKENDS);
    harness.add_ipv6();
    // The TCP frontend with ClientIP affinity.
    let key = ServiceKeyV6::new(VIP6, 80, PROTO_TCP);
    let maps = &mut harness.dataplane.maps;
    let mut value = maps.services_v6.get(&key, 0).expect("IPv6 frontend");
    value.flags |= mcs_common::SVC_F_AFFINITY;
    value.affinity_timeout_s = 60;
    maps.services_v6.insert(key, value, 0).expect("affinity on");
    let backends: BTreeSet<Ipv6Addr> = (0..16)
        .map(|i| {
            let syn = Packet6::new(Proto::Tcp, CLIENT6, 43000 + i, VIP6, 80);
            let (verdict, out) = harness.run_on(Hook::Xdp, &syn.build());
            assert_eq!(verdict, Verdict::Pass);
            verify6(&out, Csum::Full).expect("DNAT checksums").dst
        })
        .collect();
    assert_eq!(backends.len(), 1, "one client, one backend: {backends:?}");
    let binding = harness
        .dataplane
        .maps
        .affinity_v6
        .get(&mcs_common::AffinityKeyV6::new(100, CLIENT6), 0)
        .expect("the client's binding");
    assert!(backends.contains(binding.backend().ip()), "{binding:?}");
    // Another client may land elsewhere, but is bound as well.
    let other = Ipv6Addr::new(0xfd00, 0x101, 1, 0, 0, 0, 0, 3);
    let syn = Packet6::new(Proto::Tcp, other, 43000, VIP6, 80);
    assert_eq!(harness.run_on(Hook::Xdp, &syn.build()).0, Verdict::Pass);
    assert!(
        harness
            .dataplane
            .maps
            .affinity_v6
            .get(&mcs_common::AffinityKeyV6::new(100, other), 0)
            .is_ok()
    );
}
