//! The datapath's NAT checksum arithmetic (`mcs_common::checksum`, in
//! particular `l4_rewrite`, which the XDP program calls for every
//! translated packet) against recomputation from scratch.
//!
//! Input: protocol, checksum mode, side, addresses, ports, an IPv4 header
//! and an L4 segment, all from the fuzzer's bytes. The segment's checksum
//! field is set per mode — full (correct), partial (pseudo-header seed),
//! zero (UDP without checksum) or arbitrary — and the rewrite is applied
//! exactly as `mcs-ebpf/src/xdp/nat.rs` applies it (native-order loads of
//! the wire bytes). Then:
//! * the IPv4 header checksum still verifies;
//! * a full checksum verifies over the new pseudo header and segment (and
//!   is never 0 for UDP);
//! * a partial field is the seed of the new addresses;
//! * a zero UDP field stays zero;
//! * an arbitrary (wrong) field stays wrong by exactly the same amount;
//! * `sum_bytes`, `fold` and `pseudo_header_seed` agree with the
//!   big-endian recomputation.

use mcs_common::checksum::{
    fold, full_replace_u32, is_partial, l4_rewrite, pseudo_header_seed, sum_bytes,
};
use mcs_tests::packet::rfc1071;

use crate::Cursor;

const TCP: u8 = 6;
const UDP: u8 = 17;

pub fn run(data: &[u8]) {
    let mut input = Cursor::new(data);
    let proto = if input.u8() & 1 == 0 { TCP } else { UDP };
    let mode = input.u8() % 4;
    let rewrite_destination = input.u8() & 1 == 0;
    let src: [u8; 4] = input.array();
    let dst: [u8; 4] = input.array();
    let new_addr: [u8; 4] = input.array();
    let new_port: [u8; 2] = input.array();
    let arbitrary_field: [u8; 2] = input.array();
    let mut header: [u8; 20] = input.array();
    let header_len = if proto == TCP { 20 } else { 8 };
    let payload_len = usize::from(input.u8()) * 4 + usize::from(input.u8() % 4);
    let mut segment = input.bytes(header_len).to_vec();
    segment.resize(header_len, 0);
    segment.extend_from_slice(input.bytes(payload_len));
    let rest = input.rest();
    let check_at = if proto == TCP { 16 } else { 6 };
    let l4_len = segment.len() as u16;
    if proto == UDP {
        segment[4..6].copy_from_slice(&l4_len.to_be_bytes());
    }

    sums_agree(rest);
    sums_agree(&segment);

    // The IPv4 header: version 4 (so never all zero: the ones-complement
    // ±0 ambiguity of an all-zero header cannot occur), any other bytes, the
    // addresses, a correct checksum.
    header[0] = 0x40 | (header[0] & 0x0f);
    header[12..16].copy_from_slice(&src);
    header[16..20].copy_from_slice(&dst);
    header[10..12].fill(0);
    let ip_check = !rfc1071::fold(rfc1071::sum(0, &header));
    header[10..12].copy_from_slice(&ip_check.to_be_bytes());
    assert!(rfc1071::header_verifies(&header));

    // The L4 checksum field, per mode.
    segment[check_at..check_at + 2].fill(0);
    let full = {
        let check = rfc1071::checksum(src, dst, proto, &segment);
        if proto == UDP && check == 0 {
            0xffff
        } else {
            check
        }
    };
    let seed = rfc1071::seed(src, dst, proto, l4_len);
    let field = match mode {
        0 => full,
        1 => seed,
        2 if proto == UDP => 0,
        _ => u16::from_be_bytes(arbitrary_field),
    };
    segment[check_at..check_at + 2].copy_from_slice(&field.to_be_bytes());
    let residual_before = rfc1071::residual(src, dst, proto, &segment);

    // The rewrite, exactly as nat.rs does it.
    let (saddr, daddr) = (u32::from_ne_bytes(src), u32::from_ne_bytes(dst));
    let (port_at, old_addr) = if rewrite_destination {
        (2, daddr)
    } else {
        (0, saddr)
    };
    let old_port = u16::from_ne_bytes([segment[port_at], segment[port_at + 1]]);
    let new_addr_ne = u32::from_ne_bytes(new_addr);
    let check = u16::from_ne_bytes([segment[check_at], segment[check_at + 1]]);
    let treated_partial = is_partial(check, saddr, daddr, proto, l4_len);
    let new_check = l4_rewrite(
        check,
        proto,
        saddr,
        daddr,
        l4_len,
        old_addr,
        new_addr_ne,
        old_port,
        u16::from_ne_bytes(new_port),
    );
    let ip_check_ne = u16::from_ne_bytes([header[10], header[11]]);
    let new_ip_check = full_replace_u32(ip_check_ne, old_addr, new_addr_ne);

    let (new_src, new_dst) = if rewrite_destination {
        (src, new_addr)
    } else {
        (new_addr, dst)
    };
    header[10..12].copy_from_slice(&new_ip_check.to_ne_bytes());
    header[12..16].copy_from_slice(&new_src);
    header[16..20].copy_from_slice(&new_dst);
    segment[port_at..port_at + 2].copy_from_slice(&new_port);
    segment[check_at..check_at + 2].copy_from_slice(&new_check.to_ne_bytes());
    let written = u16::from_be_bytes([segment[check_at], segment[check_at + 1]]);

    assert!(
        rfc1071::header_verifies(&header),
        "IPv4 header checksum broken by the rewrite: {header:02x?}"
    );
    // Which kind of field the datapath saw decides what must hold; a full
    // checksum that happens to equal the seed (1 in 65536) is taken for a
    // partial one — documented in docs/checksums.md, checked as partial.
    assert_eq!(
        treated_partial,
        field == seed,
        "partial detection disagrees with the independent seed"
    );
    if treated_partial {
        assert_eq!(
            written,
            rfc1071::seed(new_src, new_dst, proto, l4_len),
            "partial field must become the seed of the new addresses"
        );
    } else if proto == UDP && field == 0 {
        assert_eq!(written, 0, "UDP without checksum must stay without");
    } else if field == full {
        assert!(
            rfc1071::verifies(new_src, new_dst, proto, &segment),
            "full checksum does not verify after the rewrite"
        );
        assert!(proto != UDP || written != 0, "UDP checksum 0 means none");
    } else {
        // A wrong checksum stays exactly as wrong (never repaired, never
        // made wrong differently); ±0 are the same ones-complement value,
        // which also covers the UDP 0 → 0xffff substitution.
        let after = rfc1071::residual(new_src, new_dst, proto, &segment);
        let same = after == residual_before
            || (after == 0 && residual_before == 0xffff)
            || (after == 0xffff && residual_before == 0);
        assert!(
            same,
            "wrong checksum changed: {residual_before:#x} → {after:#x}"
        );
    }
}

/// mcs_common's native-order helpers agree with big-endian recomputation
/// (ones-complement sums are byte-order independent up to a byte swap).
fn sums_agree(bytes: &[u8]) {
    let native = fold(sum_bytes(0, bytes));
    let independent = rfc1071::fold(rfc1071::sum(0, bytes));
    assert_eq!(
        native.to_ne_bytes(),
        independent.to_be_bytes(),
        "sum_bytes disagrees over {} bytes",
        bytes.len()
    );
    if bytes.len() >= 10 {
        let src = [bytes[0], bytes[1], bytes[2], bytes[3]];
        let dst = [bytes[4], bytes[5], bytes[6], bytes[7]];
        let proto = bytes[8];
        let len = u16::from_be_bytes([bytes[9], bytes.get(10).copied().unwrap_or(0)]);
        let seed = pseudo_header_seed(u32::from_ne_bytes(src), u32::from_ne_bytes(dst), proto, len);
        assert_eq!(
            seed.to_ne_bytes(),
            rfc1071::seed(src, dst, proto, len).to_be_bytes(),
            "pseudo_header_seed disagrees"
        );
    }
}
