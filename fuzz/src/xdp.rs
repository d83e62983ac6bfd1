//! Packet parsing and rewriting of the real XDP program: each input becomes
//! an Ethernet frame run through `BPF_PROG_TEST_RUN` (the object embedded in
//! the agent, maps programmed by the agent's reconciler). Needs root
//! (CAP_BPF); without it the target prints a loud SKIPPED line once and
//! returns.
//!
//! Input: the first byte picks raw bytes (the frame is the rest of the
//! input) or a template — a well-formed IPv4 TCP/UDP frame built from the
//! next bytes (client, backend, ClusterSetIP or random addresses, service or
//! random ports, full/partial/zero checksum, IP options, fragment bits, TCP
//! flags, payload) — optionally followed by byte mutations, so the fuzzer
//! reaches deep paths (DNAT, reverse NAT, refusals) and malformed ones.
//!
//! Invariants, from the input bytes alone:
//! * the verdict is PASS or DROP (refusals are passed to the node's stack,
//!   which routes them back to the client);
//! * a PASSed frame has the input's length and is either byte-identical or a
//!   translation: only one side's address and port changed (to a backend
//!   for DNAT, to a ClusterSetIP and service port for reverse NAT), plus the
//!   two checksums; the IPv4 header checksum verifies if it did before; the
//!   L4 checksum verifies if it did before (full), is the new pseudo-header
//!   seed if it was the old one (partial), stays 0 for UDP without checksum,
//!   and stays exactly as wrong otherwise;
//! * a passed refusal is no longer than the input, except an ICMP
//!   port unreachable (70 bytes): from the ClusterSetIP to the client, with
//!   valid IPv4 and TCP/ICMP checksums.

use std::{cell::RefCell, net::Ipv4Addr};

use etherparse::{IpNumber, Ipv4Header, TcpHeader};
use mcs_agent::dataplane::{MapSizes, test_run::XdpTestRun};
use mcs_tests::{
    is_root,
    packet::{Csum, ETH_LEN, Packet, Proto, rfc1071, verify},
};

use crate::Cursor;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const CLIENT: [u8; 4] = [10, 101, 1, 2];
/// Balanced over three backends (TCP 80 → 8080, UDP 53 → 5353).
const VIP: [u8; 4] = [10, 96, 100, 10];
/// Known, without endpoints: new flows are refused (RST / ICMP).
const EMPTY_VIP: [u8; 4] = [10, 96, 100, 20];
/// ClientIP affinity, two backends.
const AFFINITY_VIP: [u8; 4] = [10, 96, 100, 30];
const VIPS: [[u8; 4]; 3] = [VIP, EMPTY_VIP, AFFINITY_VIP];
const BACKENDS: [[u8; 4]; 3] = [[10, 101, 1, 10], [10, 102, 1, 10], [10, 102, 1, 11]];
const SERVICE_PORTS: [u16; 2] = [80, 53];
const TARGET_PORTS: [u16; 2] = [8080, 5353];

const MANIFEST: &str = r#"
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {name: web, namespace: fuzz}
spec: {ips: ["10.96.100.10"], ports: [{name: http, protocol: TCP, port: 80}, {name: dns, protocol: UDP, port: 53}]}
---
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {name: empty, namespace: fuzz}
spec: {ips: ["10.96.100.20"], ports: [{name: http, protocol: TCP, port: 80}, {name: dns, protocol: UDP, port: 53}]}
---
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {name: sticky, namespace: fuzz}
spec: {ips: ["10.96.100.30"], ports: [{name: http, protocol: TCP, port: 80}], sessionAffinity: ClientIP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: fuzz, labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: a}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}, {name: dns, protocol: UDP, port: 5353}]
endpoints: [{addresses: ["10.101.1.10"]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: fuzz, labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: b}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}, {name: dns, protocol: UDP, port: 5353}]
endpoints: [{addresses: ["10.102.1.10"]}, {addresses: ["10.102.1.11"], conditions: {ready: true}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sticky-b, namespace: fuzz, labels: {multicluster.kubernetes.io/service-name: sticky, multicluster.kubernetes.io/source-cluster: b}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints: [{addresses: ["10.102.1.10"]}, {addresses: ["10.102.1.11"]}]
"#;

fn load() -> XdpTestRun {
    // Small LRU maps: the fuzzer creates flows by the million.
    let mut dataplane = XdpTestRun::load(&MapSizes {
        conntrack: 4096,
        affinity: 1024,
        ..MapSizes::default()
    })
    .expect("load the XDP program");
    dataplane
        .apply_manifest(MANIFEST)
        .expect("program the maps");
    dataplane
}

thread_local! {
    static HARNESS: RefCell<Option<Option<XdpTestRun>>> = const { RefCell::new(None) };
}

pub fn run(data: &[u8]) {
    HARNESS.with(|cell| {
        let mut cell = cell.borrow_mut();
        let harness = cell.get_or_insert_with(|| {
            if is_root() {
                Some(load())
            } else {
                eprintln!(
                    "\n#### SKIPPED: the xdp fuzz target needs root (BPF_PROG_TEST_RUN); \
                     nothing is being tested ####\n"
                );
                None
            }
        });
        let Some(harness) = harness else { return };
        // Frames shorter than an Ethernet header are refused by the kernel
        // (EINVAL) before the program runs.
        let frame = frame_of(data);
        if frame.len() < 14 {
            return;
        }
        let (verdict, out) = harness.run(&frame).expect("BPF_PROG_TEST_RUN");
        check(&frame, verdict, &out);
    });
}

/// The frame an input stands for (see the module docs).
pub fn frame_of(data: &[u8]) -> Vec<u8> {
    let mut input = Cursor::new(data);
    let mode = input.u8() % 4;
    if mode == 0 {
        return input.rest().to_vec();
    }
    let udp = input.u8() & 1 == 1;
    let pick = |selector: u8, random: [u8; 4]| -> [u8; 4] {
        match selector % 6 {
            0 => CLIENT,
            1 => VIP,
            2 => EMPTY_VIP,
            3 => AFFINITY_VIP,
            4 => BACKENDS[usize::from(random[0]) % BACKENDS.len()],
            _ => random,
        }
    };
    let (src_sel, src_random) = (input.u8(), input.array::<4>());
    let (dst_sel, dst_random) = (input.u8(), input.array::<4>());
    let src = pick(src_sel, src_random);
    let dst = pick(dst_sel.wrapping_add(1), dst_random);
    let port = |selector: u8, random: u16| -> u16 {
        match selector % 6 {
            0 => 80,
            1 => 53,
            2 => 8080,
            3 => 5353,
            _ => random,
        }
    };
    let sport = port(input.u8().wrapping_add(4), input.u16());
    let dport = port(input.u8(), input.u16());
    let csum = match input.u8() % 3 {
        1 => Csum::Partial,
        2 if udp => Csum::Zero,
        _ => Csum::Full,
    };
    let options = usize::from(input.u8() % 4) * 4;
    let frags = match input.u8() % 8 {
        0 => 0x2000u16, // first fragment, more to come
        1 => 0x0010,    // a later fragment
        2 => 0,         // no DF
        _ => 0x4000,    // DF
    };
    // FIN, SYN, RST, PSH, ACK.
    let tcp_flags = input.u8() & 0x1f;
    let payload_len = usize::from(input.u8());
    let payload = input.bytes(payload_len).to_vec();
    let mut frame = Packet {
        src: src.into(),
        sport,
        dst: dst.into(),
        dport,
        proto: if udp { Proto::Udp } else { Proto::Tcp },
        csum,
        options: vec![1; options], // NOPs
        frags,
        tcp_flags,
        payload,
    }
    .build();

    // Modes 2 and 3: byte mutations (offset, xor) and a cut.
    if mode >= 2 {
        let mutations = input.rest();
        for pair in mutations.chunks(2) {
            let offset = usize::from(pair[0]) % frame.len();
            frame[offset] ^= pair.get(1).copied().unwrap_or(0xff);
        }
        if mode == 3 && !mutations.is_empty() {
            let keep = usize::from(mutations[0]) % frame.len();
            frame.truncate(keep.max(14));
        }
    }
    frame
}

/// The parsed fields of an IPv4 TCP/UDP frame as the datapath reads them.
struct Parsed {
    ihl: usize,
    proto: u8,
    tot_len: usize,
    src: [u8; 4],
    dst: [u8; 4],
    l4: usize,
}

fn parse(frame: &[u8]) -> Option<Parsed> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[14] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let proto = frame[23];
    let tot_len = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let l4 = 14 + ihl;
    let l4_header = if proto == 6 { 20 } else { 8 };
    if ihl < 20 || tot_len < ihl || (proto != 6 && proto != 17) || frame.len() < l4 + l4_header {
        return None;
    }
    Some(Parsed {
        ihl,
        proto,
        tot_len,
        src: frame[26..30].try_into().ok()?,
        dst: frame[30..34].try_into().ok()?,
        l4,
    })
}

fn check(input: &[u8], verdict: u32, out: &[u8]) {
    match verdict {
        // A refusal (RST / ICMP port unreachable) is also passed: the node's
        // stack routes it back to the client.
        XDP_PASS if is_refusal(input, out) => check_refusal(input, out),
        XDP_PASS => check_pass(input, out),
        XDP_DROP => {}
        XDP_TX => panic!("XDP_TX is never used (refusals are passed to the stack)"),
        other => panic!("verdict {other} (expected PASS, DROP or TX)"),
    }
}

/// A passed frame that is a refusal rather than the input or a translation:
/// another length, or an ICMP / RST-only TCP frame built from a non-ICMP,
/// non-RST input.
fn is_refusal(input: &[u8], out: &[u8]) -> bool {
    if out.len() != input.len() {
        return true;
    }
    if out.len() < 34 || out[12..14] != [0x08, 0x00] {
        return false;
    }
    let icmp_now = out[23] == 1 && input.get(23) != Some(&1);
    let rst_now = out.len() == 54 && out[23] == 6 && out[47] & 0x04 != 0 && input[47] & 0x04 == 0;
    icmp_now || rst_now
}

fn check_pass(input: &[u8], out: &[u8]) {
    assert_eq!(out.len(), input.len(), "a passed frame changed length");
    if out == input {
        return;
    }
    let p = parse(input).expect("only IPv4 TCP/UDP frames may be rewritten");
    let check_at = p.l4 + if p.proto == 6 { 16 } else { 6 };
    let changed: Vec<usize> = (0..input.len()).filter(|&i| input[i] != out[i]).collect();
    let src_side = |i: usize| (26..30).contains(&i) || (p.l4..p.l4 + 2).contains(&i);
    let dst_side = |i: usize| (30..34).contains(&i) || (p.l4 + 2..p.l4 + 4).contains(&i);
    let checksums = |i: usize| (24..26).contains(&i) || (check_at..check_at + 2).contains(&i);
    assert!(
        changed
            .iter()
            .all(|&i| src_side(i) || dst_side(i) || checksums(i)),
        "bytes outside addresses, ports and checksums changed: {changed:?}"
    );
    let l4_header = if p.proto == 6 { 20 } else { 8 };
    assert!(
        p.tot_len >= p.ihl + l4_header,
        "rewrote a packet whose IP total length ({}) does not cover its L4 header",
        p.tot_len
    );
    let dnat = changed.iter().any(|&i| dst_side(i));
    let reverse = changed.iter().any(|&i| src_side(i));
    assert!(!(dnat && reverse), "both sides rewritten: {changed:?}");
    let out_src: [u8; 4] = out[26..30].try_into().expect("4 bytes");
    let out_dst: [u8; 4] = out[30..34].try_into().expect("4 bytes");
    let out_sport = u16::from_be_bytes([out[p.l4], out[p.l4 + 1]]);
    let out_dport = u16::from_be_bytes([out[p.l4 + 2], out[p.l4 + 3]]);
    if dnat {
        assert!(
            BACKENDS.contains(&out_dst),
            "DNAT to a non-backend {}",
            Ipv4Addr::from(out_dst)
        );
        assert!(
            TARGET_PORTS.contains(&out_dport),
            "DNAT to port {out_dport}"
        );
    }
    if reverse {
        assert!(
            VIPS.contains(&out_src),
            "reverse NAT from {}",
            Ipv4Addr::from(out_src)
        );
        assert!(
            SERVICE_PORTS.contains(&out_sport),
            "reverse NAT from port {out_sport}"
        );
    }

    let header = |frame: &[u8]| frame[14..14 + p.ihl].to_vec();
    if rfc1071::header_verifies(&header(input)) {
        assert!(
            rfc1071::header_verifies(&header(out)),
            "IPv4 header checksum broken"
        );
    }
    // L4 checksums can be judged only over a segment the frame holds whole.
    let end = 14 + p.tot_len;
    if end > input.len() {
        return;
    }
    let l4_len = (p.tot_len - p.ihl) as u16;
    let segment_in = &input[p.l4..end];
    let segment_out = &out[p.l4..end];
    let field_in = u16::from_be_bytes([input[check_at], input[check_at + 1]]);
    let field_out = u16::from_be_bytes([out[check_at], out[check_at + 1]]);
    let residual_in = rfc1071::residual(p.src, p.dst, p.proto, segment_in);
    let residual_out = rfc1071::residual(out_src, out_dst, p.proto, segment_out);
    if field_in == rfc1071::seed(p.src, p.dst, p.proto, l4_len) {
        assert_eq!(
            field_out,
            rfc1071::seed(out_src, out_dst, p.proto, l4_len),
            "partial checksum is not the seed of the new addresses"
        );
    } else if p.proto == 17 && field_in == 0 {
        assert_eq!(field_out, 0, "UDP without checksum got one");
    } else if residual_in == 0xffff {
        assert_eq!(
            residual_out, 0xffff,
            "full L4 checksum broken by the rewrite"
        );
        assert!(p.proto != 17 || field_out != 0, "UDP checksum written as 0");
    } else {
        let same = residual_out == residual_in
            || (residual_in == 0 && residual_out == 0xffff)
            || (residual_in == 0xffff && residual_out == 0);
        assert!(
            same,
            "a wrong L4 checksum changed: {residual_in:#x} → {residual_out:#x} (ihl {}, tot_len {}, frame {}, changed {changed:?})",
            p.ihl,
            p.tot_len,
            input.len()
        );
    }
}

/// A refusal: TCP RST or ICMP port unreachable from the ClusterSetIP.
fn check_refusal(input: &[u8], out: &[u8]) {
    let p = parse(input).expect("only IPv4 TCP/UDP frames are refused");
    assert!(VIPS.contains(&p.dst), "refusal for a non-VIP destination");
    // IPv4 and TCP/ICMP checksums, all full ones.
    let seen = verify(out, Csum::Full).unwrap_or_else(|error| panic!("refusal: {error:#}"));
    assert_eq!(
        (seen.src, seen.dst),
        (Ipv4Addr::from(p.dst), Ipv4Addr::from(p.src)),
        "refusal addresses"
    );
    assert_eq!(
        &out[..12],
        &input[..12],
        "refusal keeps the Ethernet header (the node's stack routes it to the client)"
    );
    let (_, rest) = Ipv4Header::from_slice(&out[ETH_LEN..]).expect("verified IPv4 header");
    if seen.proto == IpNumber::TCP {
        assert_eq!(out.len(), 54, "RST is a bare 54-byte frame");
        assert!(
            out.len() <= input.len(),
            "RST longer than the segment it refuses"
        );
        let (tcp, payload) = TcpHeader::from_slice(rest).expect("RST has a TCP header");
        assert!(tcp.rst && payload.is_empty(), "a refusal is a bare RST");
    } else if seen.proto == IpNumber::ICMP {
        assert_eq!(out.len(), 70, "ICMP port unreachable is 70 bytes");
        assert_eq!(&rest[..2], &[3, 3], "destination/port unreachable");
        assert_eq!(
            &rest[8..36],
            &input[14..42],
            "quotes the IP header and 8 bytes"
        );
    } else {
        panic!("refusal with protocol {:?}", seen.proto);
    }
}
