//! Packet parsing and rewriting of the real XDP program: each input becomes
//! an Ethernet frame run through `BPF_PROG_TEST_RUN` (the object embedded in
//! the agent; IPv4 maps programmed by the agent's reconciler, the `_V6`
//! maps written by [`v6::program`]). Needs root (CAP_BPF); without it the
//! target prints a loud SKIPPED line once and returns.
//!
//! Input: the first byte picks raw bytes (the frame is the rest of the
//! input) or a template of either family (bit 2: IPv6) — optionally
//! followed by byte mutations and a cut, so the fuzzer reaches deep paths
//! (DNAT, reverse NAT, refusals) and malformed ones:
//! * IPv4 ([`v4`]): a TCP/UDP frame with client, backend, ClusterSetIP or
//!   random addresses, service or random ports, full/partial/zero checksum,
//!   IP options, fragment bits, TCP flags, payload;
//! * IPv6 ([`v6`]): a TCP, UDP or ICMPv6 frame with the same choices of
//!   addresses (the IPv6 ClusterSetIPs) and ports, behind a chain of up to
//!   five extension headers (hop-by-hop, routing, destination options,
//!   fragment headers of any offset, others the parser does not follow).
//!
//! Invariants, from the input bytes alone:
//! * the verdict is PASS or DROP (refusals are passed to the node's stack,
//!   which routes them back to the client);
//! * a PASSed frame has the input's length and is either byte-identical or a
//!   translation: only one side's address and port changed (to a backend
//!   for DNAT, to a ClusterSetIP and service port for reverse NAT), plus the
//!   checksums; the IPv4 header checksum verifies if it did before; the
//!   L4 checksum verifies if it did before (full), is the new pseudo-header
//!   seed if it was the old one (partial), stays 0 for UDP without checksum,
//!   and stays exactly as wrong otherwise ([`check_l4`], both families);
//!   only a TCP/UDP packet the parser follows (no fragment, a followed
//!   extension-header chain) is ever rewritten;
//! * a passed refusal is no longer than the input, except an ICMP
//!   port unreachable: from the ClusterSetIP to the client, with valid
//!   checksums.

mod v4;
pub mod v6;

use std::cell::RefCell;

use mcs_agent::dataplane::{MapSizes, test_run::XdpTestRun};
use mcs_tests::is_root;

use crate::Cursor;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const SERVICE_PORTS: [u16; 2] = [80, 53];
const TARGET_PORTS: [u16; 2] = [8080, 5353];

fn load() -> XdpTestRun {
    // Small LRU maps: the fuzzer creates flows by the million.
    let mut dataplane = XdpTestRun::load(&MapSizes {
        conntrack: 4096,
        affinity: 1024,
        ..MapSizes::default()
    })
    .expect("load the XDP program");
    dataplane
        .apply_manifest(v4::MANIFEST)
        .expect("program the maps");
    v6::program(&mut dataplane).expect("program the IPv6 maps");
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
    let selector = input.u8();
    let mode = selector % 4;
    if mode == 0 {
        return input.rest().to_vec();
    }
    let mut frame = if selector & 4 == 0 {
        v4::template(&mut input)
    } else {
        v6::template(&mut input)
    };
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

/// A service or target port, or a random one.
fn port(selector: u8, random: u16) -> u16 {
    match selector % 6 {
        0 => 80,
        1 => 53,
        2 => 8080,
        3 => 5353,
        _ => random,
    }
}

fn check(input: &[u8], verdict: u32, out: &[u8]) {
    let v6 = input[12..14] == [0x86, 0xdd];
    match verdict {
        // A refusal (RST / ICMP port unreachable) is also passed: the node's
        // stack routes it back to the client.
        XDP_PASS if v6 && v6::is_refusal(input, out) => v6::check_refusal(input, out),
        XDP_PASS if v6 => v6::check_pass(input, out),
        XDP_PASS if v4::is_refusal(input, out) => v4::check_refusal(input, out),
        XDP_PASS => v4::check_pass(input, out),
        XDP_DROP => {}
        XDP_TX => panic!("XDP_TX is never used (refusals are passed to the stack)"),
        other => panic!("verdict {other} (expected PASS, DROP or TX)"),
    }
}

/// An L4 checksum field before and after a rewrite, with what it was
/// measured against (either family's pseudo header).
struct L4Sums {
    udp: bool,
    /// The field in the input and in the output.
    field_in: u16,
    field_out: u16,
    /// The partial-checksum seed of the input's and of the output's
    /// addresses.
    seed_in: u16,
    seed_out: u16,
    /// The folded sum over pseudo header and segment, before and after
    /// (0xffff: the checksum verifies).
    residual_in: u16,
    residual_out: u16,
}

/// The L4 checksum invariants of a rewrite (see the module docs).
fn check_l4(sums: &L4Sums, context: &str) {
    let L4Sums {
        udp,
        field_in,
        field_out,
        seed_in,
        seed_out,
        residual_in,
        residual_out,
    } = *sums;
    if field_in == seed_in {
        assert_eq!(
            field_out, seed_out,
            "partial checksum is not the seed of the new addresses ({context})"
        );
    } else if udp && field_in == 0 {
        assert_eq!(field_out, 0, "UDP without checksum got one ({context})");
    } else if residual_in == 0xffff {
        assert_eq!(
            residual_out, 0xffff,
            "full L4 checksum broken by the rewrite ({context})"
        );
        assert!(!udp || field_out != 0, "UDP checksum written as 0 ({context})");
    } else {
        let same = residual_out == residual_in
            || (residual_in == 0 && residual_out == 0xffff)
            || (residual_in == 0xffff && residual_out == 0);
        assert!(
            same,
            "a wrong L4 checksum changed: {residual_in:#x} → {residual_out:#x} ({context})"
        );
    }
}
