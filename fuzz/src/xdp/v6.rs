//! IPv6 inputs of the `xdp` target: the `_V6` frontends the harness
//! programs, the template frame (TCP, UDP or ICMPv6 behind an extension
//! header chain) and the checks of a passed or refused IPv6 frame (see the
//! parent module's docs).

use std::net::{Ipv6Addr, SocketAddrV6};

use anyhow::{Context as _, Result, ensure};
use etherparse::{IpNumber, Ipv6Header};
use mcs_agent::dataplane::test_run::XdpTestRun;
use mcs_common::{
    BACKEND_F_READY, BackendKey, BackendValueV6, MaglevPlace, PROTO_TCP, PROTO_UDP, SVC_F_NONE,
    SVC_F_VIP_MARKER, ServiceKeyV6, ServiceValue,
};
use mcs_tests::packet::{Csum, ETH_LEN, Ext, IPV6_LEN, Packet6, Proto, rfc1071, verify6};

use super::{L4Sums, SERVICE_PORTS, TARGET_PORTS, check_l4, port};
use crate::Cursor;

const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x101, 1, 0, 0, 0, 0, 2);
/// Balanced over three backends (TCP 80 → 8080, UDP 53 → 5353).
const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0x100, 0xa);
/// Known, without endpoints.
const EMPTY_VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0x100, 0x14);
/// ClientIP affinity (TCP 80), the same three backends.
const AFFINITY_VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0x100, 0x1e);
const VIPS: [Ipv6Addr; 3] = [VIP, EMPTY_VIP, AFFINITY_VIP];
const BACKENDS: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfd00, 0x101, 1, 0, 0, 0, 0, 0x10),
    Ipv6Addr::new(0xfd00, 0x102, 1, 0, 0, 0, 0, 0x10),
    Ipv6Addr::new(0xfd00, 0x102, 1, 0xab, 0, 0, 0xcd, 0x11),
];
/// Affinity timeout of [`AFFINITY_VIP`], seconds.
const AFFINITY_TIMEOUT_S: u32 = 600;
/// The frontends: id, ClusterSetIP, port (0: the ClusterSetIP marker),
/// protocol, served by [`BACKENDS`]. Ids above the IPv4 manifest's.
const FRONTENDS: [(u32, Ipv6Addr, u16, u8, bool); 11] = [
    (100, VIP, 80, PROTO_TCP, true),
    (101, VIP, 53, PROTO_UDP, true),
    (102, VIP, 0, PROTO_TCP, false),
    (103, VIP, 0, PROTO_UDP, false),
    (104, EMPTY_VIP, 80, PROTO_TCP, false),
    (105, EMPTY_VIP, 53, PROTO_UDP, false),
    (106, EMPTY_VIP, 0, PROTO_TCP, false),
    (107, EMPTY_VIP, 0, PROTO_UDP, false),
    (108, AFFINITY_VIP, 80, PROTO_TCP, true),
    (109, AFFINITY_VIP, 0, PROTO_TCP, false),
    (110, AFFINITY_VIP, 0, PROTO_UDP, false),
];
/// Size of the one Maglev table every served frontend shares (prime).
const MAGLEV_SIZE: u32 = 251;
/// ICMPv6, and the echo request type.
const PROTO_ICMPV6: u8 = 58;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// Writes [`FRONTENDS`] into the `_V6` maps through the agent's map
/// handles, prefilter bits with them (the agent does not program IPv6 from
/// a manifest yet).
pub fn program(dataplane: &mut XdpTestRun) -> Result<()> {
    let maps = &mut dataplane.maps;
    let base = u32::try_from(maps.maglev.capacity())
        .context("Maglev chunks")?
        .checked_sub(64)
        .context("Maglev table array too small")?;
    let place = MaglevPlace {
        base,
        size: MAGLEV_SIZE,
        wide: false,
    };
    let slots = BACKENDS.len() as u16;
    let table: Vec<u16> = (0..MAGLEV_SIZE as u16).map(|i| i % slots).collect();
    ensure!(
        maps.maglev.write(&[(place, &table)]).is_empty(),
        "Maglev table write failed"
    );
    for (frontend_id, vip, port, proto, served) in FRONTENDS {
        let backends: &[Ipv6Addr] = if served { &BACKENDS } else { &[] };
        let value = ServiceValue {
            frontend_id,
            backend_count: backends.len() as u32,
            flags: if port == 0 {
                SVC_F_VIP_MARKER
            } else {
                SVC_F_NONE
            },
            affinity_timeout_s: if vip == AFFINITY_VIP { AFFINITY_TIMEOUT_S } else { 0 },
            maglev_base: 0,
            maglev_size: 0,
        }
        .with_maglev(served.then_some(place));
        let target = if proto == PROTO_TCP { TARGET_PORTS[0] } else { TARGET_PORTS[1] };
        for (slot, addr) in (0u32..).zip(backends) {
            let key = BackendKey { frontend_id, slot };
            let endpoint = SocketAddrV6::new(*addr, target, 0, 0);
            let backend = BackendValueV6::new(endpoint, 0, BACKEND_F_READY, 200 + slot);
            maps.prefilter.put_backend(&key, &backend);
            maps.backends_v6.insert(key, backend, 0).context("IPv6 backend")?;
        }
        let key = ServiceKeyV6::new(vip, port, proto);
        maps.prefilter.put_service_v6(&key);
        maps.services_v6.insert(key, value, 0).context("IPv6 frontend")?;
    }
    Ok(())
}

/// An IPv6 template frame from the next input bytes.
pub fn template(input: &mut Cursor<'_>) -> Vec<u8> {
    let kind = input.u8() % 3;
    let pick = |selector: u8, random: [u8; 16]| -> Ipv6Addr {
        match selector % 6 {
            0 => CLIENT,
            1 => VIP,
            2 => EMPTY_VIP,
            3 => AFFINITY_VIP,
            4 => BACKENDS[usize::from(random[0]) % BACKENDS.len()],
            _ => random.into(),
        }
    };
    let (src_sel, src_random) = (input.u8(), input.array::<16>());
    let (dst_sel, dst_random) = (input.u8(), input.array::<16>());
    let src = pick(src_sel, src_random);
    let dst = pick(dst_sel.wrapping_add(1), dst_random);
    let sport = port(input.u8().wrapping_add(4), input.u16());
    let dport = port(input.u8(), input.u16());
    let udp = kind != 0;
    let csum = match input.u8() % 3 {
        1 => Csum::Partial,
        2 if udp => Csum::Zero,
        _ => Csum::Full,
    };
    // Up to one more than the parser follows.
    let exts: Vec<Ext> = (0..input.u8() % 6)
        .map(|_| {
            let (which, param) = (input.u8(), input.u8());
            match which % 6 {
                0 => Ext::HopByHop,
                1 => Ext::Routing,
                2 => Ext::DestOptions,
                // Offset 0 without more fragments: an atomic fragment.
                3 => Ext::Fragment {
                    offset: u16::from(param & 0x7f),
                    more: param & 0x80 != 0,
                },
                4 => Ext::Other(51),
                _ => Ext::Other(param),
            }
        })
        .collect();
    // FIN, SYN, RST, PSH, ACK.
    let tcp_flags = input.u8() & 0x1f;
    let payload_len = usize::from(input.u8());
    let payload = input.bytes(payload_len).to_vec();
    let packet = Packet6 {
        src,
        sport,
        dst,
        dport,
        proto: if udp { Proto::Udp } else { Proto::Tcp },
        csum: if kind == 2 { Csum::Full } else { csum },
        exts,
        tcp_flags,
        payload,
    };
    let mut frame = packet.build();
    if kind == 2 {
        icmpv6_echo(&mut frame, &packet);
    }
    frame
}

/// Turns a built UDP frame into an ICMPv6 echo request of the same length:
/// the upper-layer number and the 8-byte header, with its checksum.
fn icmpv6_echo(frame: &mut [u8], packet: &Packet6) {
    let l4 = ETH_LEN + IPV6_LEN + 8 * packet.exts.len();
    let next_at = match packet.exts.len() {
        0 => ETH_LEN + 6,
        n => ETH_LEN + IPV6_LEN + 8 * (n - 1),
    };
    frame[next_at] = PROTO_ICMPV6;
    let [id_hi, id_lo] = packet.sport.to_be_bytes();
    let [seq_hi, seq_lo] = packet.dport.to_be_bytes();
    frame[l4..l4 + 8].copy_from_slice(&[ICMPV6_ECHO_REQUEST, 0, 0, 0, id_hi, id_lo, seq_hi, seq_lo]);
    let checksum = !rfc1071::residual6(
        packet.src.octets(),
        packet.dst.octets(),
        PROTO_ICMPV6,
        &frame[l4..],
    );
    frame[l4 + 2..l4 + 4].copy_from_slice(&checksum.to_be_bytes());
}

/// The parsed fields of an IPv6 TCP/UDP frame the datapath follows to its
/// L4 header (a fragment is never followed; a chain of more than four
/// extension headers is not).
struct Parsed {
    proto: u8,
    /// The IPv6 payload length and the bytes of extension headers in it.
    payload_len: usize,
    ext_len: usize,
    src: [u8; 16],
    dst: [u8; 16],
    l4: usize,
}

/// Extension headers the datapath follows (`IPV6_EXT_MAX`).
const EXT_MAX: usize = 4;

fn parse(frame: &[u8]) -> Option<Parsed> {
    let ip = ETH_LEN;
    if frame.len() < ip + IPV6_LEN || frame[12..14] != [0x86, 0xdd] || frame[ip] >> 4 != 6 {
        return None;
    }
    let payload_len = usize::from(u16::from_be_bytes([frame[ip + 4], frame[ip + 5]]));
    let mut next = frame[ip + 6];
    let mut l4 = ip + IPV6_LEN;
    let mut followed = false;
    for _ in 0..=EXT_MAX {
        if next == PROTO_TCP || next == PROTO_UDP {
            followed = true;
            break;
        }
        match next {
            0 | 43 | 60 => {
                let header = frame.get(l4..l4 + 2)?;
                next = header[0];
                l4 += (usize::from(header[1]) + 1) * 8;
            }
            44 => {
                let header = frame.get(l4..l4 + 8)?;
                if u16::from_be_bytes([header[2], header[3]]) & 0xfff9 != 0 {
                    return None;
                }
                next = header[0];
                l4 += 8;
            }
            _ => return None,
        }
    }
    let l4_header = if next == PROTO_TCP { 20 } else { 8 };
    let ext_len = l4 - ip - IPV6_LEN;
    if !followed || frame.len() < l4 + l4_header || payload_len < ext_len {
        return None;
    }
    Some(Parsed {
        proto: next,
        payload_len,
        ext_len,
        src: frame[ip + 8..ip + 24].try_into().ok()?,
        dst: frame[ip + 24..ip + 40].try_into().ok()?,
        l4,
    })
}

/// Offsets of the source and destination address in the frame.
const SRC: std::ops::Range<usize> = ETH_LEN + 8..ETH_LEN + 24;
const DST: std::ops::Range<usize> = ETH_LEN + 24..ETH_LEN + 40;

/// A passed frame that is a refusal rather than the input or a
/// translation: another length, or an ICMPv6 / RST-only TCP frame built
/// from a non-ICMPv6, non-RST input.
pub fn is_refusal(input: &[u8], out: &[u8]) -> bool {
    if out.len() != input.len() {
        return true;
    }
    // The TCP flags of a TCP frame (`parse` checked the whole header is there).
    let tcp_flags = |frame: &[u8]| {
        parse(frame)
            .filter(|p| p.proto == PROTO_TCP)
            .map(|p| frame[p.l4 + 13])
    };
    let icmp_now = out.get(ETH_LEN + 6) == Some(&PROTO_ICMPV6)
        && input.get(ETH_LEN + 6) != Some(&PROTO_ICMPV6);
    let rst_now = matches!(
        (tcp_flags(input), tcp_flags(out)),
        (Some(before), Some(after)) if before & 0x04 == 0 && after & 0x04 != 0
    );
    icmp_now || rst_now
}

pub fn check_pass(input: &[u8], out: &[u8]) {
    assert_eq!(out.len(), input.len(), "a passed frame changed length");
    if out == input {
        return;
    }
    let p = parse(input).expect("only IPv6 TCP/UDP frames the parser follows may be rewritten");
    let check_at = p.l4 + if p.proto == PROTO_TCP { 16 } else { 6 };
    let changed: Vec<usize> = (0..input.len()).filter(|&i| input[i] != out[i]).collect();
    let src_side = |i: usize| SRC.contains(&i) || (p.l4..p.l4 + 2).contains(&i);
    let dst_side = |i: usize| DST.contains(&i) || (p.l4 + 2..p.l4 + 4).contains(&i);
    let checksum = |i: usize| (check_at..check_at + 2).contains(&i);
    assert!(
        changed
            .iter()
            .all(|&i| src_side(i) || dst_side(i) || checksum(i)),
        "bytes outside addresses, ports and the L4 checksum changed: {changed:?}"
    );
    let l4_header = if p.proto == PROTO_TCP { 20 } else { 8 };
    assert!(
        p.payload_len >= p.ext_len + l4_header,
        "rewrote a packet whose payload length ({}) does not cover its L4 header",
        p.payload_len
    );
    let dnat = changed.iter().any(|&i| dst_side(i));
    let reverse = changed.iter().any(|&i| src_side(i));
    assert!(!(dnat && reverse), "both sides rewritten: {changed:?}");
    let out_src: [u8; 16] = out[SRC].try_into().expect("16 bytes");
    let out_dst: [u8; 16] = out[DST].try_into().expect("16 bytes");
    let out_sport = u16::from_be_bytes([out[p.l4], out[p.l4 + 1]]);
    let out_dport = u16::from_be_bytes([out[p.l4 + 2], out[p.l4 + 3]]);
    if dnat {
        let to = Ipv6Addr::from(out_dst);
        assert!(BACKENDS.contains(&to), "DNAT to a non-backend {to}");
        assert!(TARGET_PORTS.contains(&out_dport), "DNAT to port {out_dport}");
    }
    if reverse {
        let from = Ipv6Addr::from(out_src);
        assert!(VIPS.contains(&from), "reverse NAT from {from}");
        assert!(
            SERVICE_PORTS.contains(&out_sport),
            "reverse NAT from port {out_sport}"
        );
    }
    // L4 checksums can be judged only over a segment the frame holds whole.
    let end = ETH_LEN + IPV6_LEN + p.payload_len;
    if end > input.len() {
        return;
    }
    let l4_len = (p.payload_len - p.ext_len) as u32;
    let segment_in = &input[p.l4..end];
    let segment_out = &out[p.l4..end];
    let sums = L4Sums {
        udp: p.proto == PROTO_UDP,
        field_in: u16::from_be_bytes([input[check_at], input[check_at + 1]]),
        field_out: u16::from_be_bytes([out[check_at], out[check_at + 1]]),
        seed_in: rfc1071::seed6(p.src, p.dst, p.proto, l4_len),
        seed_out: rfc1071::seed6(out_src, out_dst, p.proto, l4_len),
        residual_in: rfc1071::residual6(p.src, p.dst, p.proto, segment_in),
        residual_out: rfc1071::residual6(out_src, out_dst, p.proto, segment_out),
    };
    let context = format!(
        "payload_len {}, extension headers {} bytes, frame {}, changed {changed:?}",
        p.payload_len,
        p.ext_len,
        input.len()
    );
    check_l4(&sums, &context);
}

/// A refusal: TCP RST or ICMPv6 destination unreachable from the
/// ClusterSetIP to the client, checksums valid.
pub fn check_refusal(input: &[u8], out: &[u8]) {
    let p = parse(input).expect("only IPv6 TCP/UDP frames are refused");
    let vip = Ipv6Addr::from(p.dst);
    assert!(VIPS.contains(&vip), "refusal for a non-VIP destination {vip}");
    assert_eq!(
        &out[..12],
        &input[..12],
        "refusal keeps the Ethernet header (the node's stack routes it to the client)"
    );
    let (ip, rest) = Ipv6Header::from_slice(&out[ETH_LEN..]).expect("refusal: IPv6 header");
    assert_eq!(
        (Ipv6Addr::from(ip.source), Ipv6Addr::from(ip.destination)),
        (vip, Ipv6Addr::from(p.src)),
        "refusal addresses"
    );
    let payload = rest
        .get(..usize::from(ip.payload_length))
        .expect("refusal: whole payload");
    if ip.next_header == IpNumber::TCP {
        verify6(out, Csum::Full).unwrap_or_else(|error| panic!("refusal: {error:#}"));
        assert!(
            out.len() <= input.len(),
            "RST longer than the segment it refuses"
        );
        assert!(payload[13] & 0x04 != 0, "a refusal is a RST");
    } else if ip.next_header == IpNumber::IPV6_ICMP {
        assert_eq!(payload[0], 1, "ICMPv6 destination unreachable");
        assert_eq!(
            rfc1071::residual6(ip.source, ip.destination, PROTO_ICMPV6, payload),
            0xffff,
            "ICMPv6 checksum"
        );
    } else {
        panic!("refusal with next header {:?}", ip.next_header);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        let path = format!("{}/seeds/xdp/{name}", env!("CARGO_MANIFEST_DIR"));
        super::super::frame_of(&std::fs::read(&path).expect("seed"))
    }

    #[test]
    fn seeds_build_the_frames_they_are_named_for() {
        let syn = verify6(&seed("v6-tcp-syn-vip-80"), Csum::Full).expect("IPv6 TCP");
        assert_eq!((syn.dst, syn.dport, syn.src), (VIP, 80, CLIENT));
        let chain = seed("v6-tcp-vip-ext-chain");
        assert_eq!(parse(&chain).expect("followed").ext_len, 24);
        assert!(parse(&seed("v6-udp-vip-fragment")).is_none(), "a fragment");
        assert!(parse(&seed("v6-udp-vip-atomic-fragment")).is_some());
        assert!(parse(&seed("v6-tcp-vip-chain-too-long")).is_none());
        let echo = seed("v6-icmpv6-echo-vip");
        let l4 = ETH_LEN + IPV6_LEN + 8;
        assert_eq!(echo[l4], ICMPV6_ECHO_REQUEST);
        assert_eq!(
            rfc1071::residual6(CLIENT.octets(), VIP.octets(), PROTO_ICMPV6, &echo[l4..]),
            0xffff,
            "a valid ICMPv6 checksum"
        );
    }

    /// The harness's `_V6` maps translate: a SYN to the ClusterSetIP goes
    /// to a backend, checksums valid (root: `BPF_PROG_TEST_RUN`).
    #[test]
    fn the_programmed_ipv6_frontend_translates() {
        if !mcs_tests::is_root() {
            eprintln!("#### SKIPPED: needs root (BPF_PROG_TEST_RUN) ####");
            return;
        }
        let harness = super::super::load();
        for name in ["v6-tcp-syn-vip-80", "v6-tcp-vip-ext-chain", "v6-tcp-affinity-vip"] {
            let frame = seed(name);
            let (verdict, out) = harness.run(&frame).expect("test run");
            assert_eq!(verdict, super::super::XDP_PASS, "{name}");
            let seen = verify6(&out, Csum::Full).expect("valid checksums");
            assert!(BACKENDS.contains(&seen.dst), "{name}: to {}", seen.dst);
            super::super::check(&frame, verdict, &out);
        }
    }
}
