//! IPv4 inputs of the `xdp` target: the template frame and the checks of
//! a passed or refused IPv4 frame (see the parent module's docs).

use std::net::Ipv4Addr;

use etherparse::{IpNumber, Ipv4Header, TcpHeader};
use mcs_tests::packet::{Csum, ETH_LEN, Packet, Proto, rfc1071, verify};

use super::{L4Sums, SERVICE_PORTS, TARGET_PORTS, check_l4, port};
use crate::Cursor;

const CLIENT: [u8; 4] = [10, 101, 1, 2];
/// Balanced over three backends (TCP 80 → 8080, UDP 53 → 5353).
const VIP: [u8; 4] = [10, 96, 100, 10];
/// Known, without endpoints: new flows are refused (RST / ICMP).
const EMPTY_VIP: [u8; 4] = [10, 96, 100, 20];
/// ClientIP affinity, two backends.
const AFFINITY_VIP: [u8; 4] = [10, 96, 100, 30];
const VIPS: [[u8; 4]; 3] = [VIP, EMPTY_VIP, AFFINITY_VIP];
const BACKENDS: [[u8; 4]; 3] = [[10, 101, 1, 10], [10, 102, 1, 10], [10, 102, 1, 11]];

pub const MANIFEST: &str = r#"
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

/// An IPv4 template frame from the next input bytes.
pub fn template(input: &mut Cursor<'_>) -> Vec<u8> {
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
    Packet {
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
    .build()
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

/// A passed frame that is a refusal rather than the input or a translation:
/// another length, or an ICMP / RST-only TCP frame built from a non-ICMP,
/// non-RST input.
pub fn is_refusal(input: &[u8], out: &[u8]) -> bool {
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

pub fn check_pass(input: &[u8], out: &[u8]) {
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
    let sums = L4Sums {
        udp: p.proto == 17,
        field_in: u16::from_be_bytes([input[check_at], input[check_at + 1]]),
        field_out: u16::from_be_bytes([out[check_at], out[check_at + 1]]),
        seed_in: rfc1071::seed(p.src, p.dst, p.proto, l4_len),
        seed_out: rfc1071::seed(out_src, out_dst, p.proto, l4_len),
        residual_in: rfc1071::residual(p.src, p.dst, p.proto, segment_in),
        residual_out: rfc1071::residual(out_src, out_dst, p.proto, segment_out),
    };
    let context = format!(
        "ihl {}, tot_len {}, frame {}, changed {changed:?}",
        p.ihl,
        p.tot_len,
        input.len()
    );
    check_l4(&sums, &context);
}

/// A refusal: TCP RST or ICMP port unreachable from the ClusterSetIP.
pub fn check_refusal(input: &[u8], out: &[u8]) {
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
