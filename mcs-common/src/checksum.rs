//! Incremental Internet checksum updates for NAT (RFC 1071 / RFC 1624).
//!
//! All 16-bit words are taken exactly as they sit in the packet and loaded
//! with native byte order; the ones-complement sum is byte-order independent
//! as long as every operand is treated the same way, so the datapath never
//! byte-swaps. Addresses are `u32` loaded the same way.
//!
//! Two kinds of L4 checksum field reach an XDP hook (see
//! `docs/checksums.md`):
//! * **full**: the finished, complemented checksum. Updated with
//!   `C' = ~(~C + ~m + m')` for every changed word (addresses and ports).
//! * **partial** (`CHECKSUM_PARTIAL` skbs, e.g. pod traffic on veth with TX
//!   offload on): the field holds the folded, *non-complemented* pseudo-header
//!   sum, which the kernel or NIC finishes later over the whole segment. Only
//!   the pseudo-header words (the addresses) may be changed, with
//!   `F' = fold(F + ~m + m')`; ports must not be folded in because the final
//!   sum covers the new port anyway.

/// Folds a 32-bit ones-complement accumulator to 16 bits (end-around carry).
#[inline(always)]
pub const fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[inline(always)]
const fn add_u32_words(acc: u32, value: u32) -> u32 {
    acc + (value & 0xffff) + (value >> 16)
}

#[inline(always)]
const fn add_replaced_u32(acc: u32, old: u32, new: u32) -> u32 {
    add_u32_words(add_u32_words(acc, !old), new)
}

/// Updates a full (complemented) checksum for a changed 32-bit word pair.
#[inline(always)]
pub const fn full_replace_u32(check: u16, old: u32, new: u32) -> u16 {
    !fold(add_replaced_u32(!check as u32 & 0xffff, old, new))
}

/// Updates a full (complemented) checksum for a changed 16-bit word.
#[inline(always)]
pub const fn full_replace_u16(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check as u32 & 0xffff) + (!old as u32 & 0xffff) + new as u32)
}

/// Updates a partial (non-complemented pseudo-header seed) checksum field
/// for a changed address.
#[inline(always)]
pub const fn partial_replace_u32(field: u16, old: u32, new: u32) -> u16 {
    fold(add_replaced_u32(field as u32, old, new))
}

/// The folded, non-complemented IPv4 pseudo-header sum: what a
/// `CHECKSUM_PARTIAL` packet carries in its L4 checksum field.
/// `l4_len` is in host order.
#[inline(always)]
pub const fn pseudo_header_seed(saddr: u32, daddr: u32, proto: u8, l4_len: u16) -> u16 {
    let proto_word = u16::from_ne_bytes([0, proto]) as u32;
    let len_word = u16::from_ne_bytes(l4_len.to_be_bytes()) as u32;
    fold(add_u32_words(
        add_u32_words(proto_word + len_word, saddr),
        daddr,
    ))
}

/// Whether an L4 checksum field looks like a partial (pseudo-header seed)
/// checksum. A full checksum equals the seed only by chance (1 in 65536);
/// such a packet is then treated as partial and gets a wrong checksum that
/// the receiver drops, like any corrupted packet — documented, not hidden.
#[inline(always)]
pub const fn is_partial(field: u16, saddr: u32, daddr: u32, proto: u8, l4_len: u16) -> bool {
    field == pseudo_header_seed(saddr, daddr, proto, l4_len)
}

/// The L4 checksum field after rewriting one side's address `old_addr` →
/// `new_addr` and port `old_port` → `new_port` of an IPv4 TCP/UDP packet
/// (`saddr`/`daddr` before the rewrite, `l4_len` in host order), when the
/// field may be partial (a hook on a veth, which cannot see the socket
/// buffer's checksum state): the one decision such a hook takes for every
/// translated packet, kept here so the host (tests, fuzzing) runs exactly
/// the same arithmetic.
/// * partial field (pseudo-header seed): only the address changes it;
/// * otherwise as [`l4_rewrite_full`].
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "mirrors the packet fields one to one"
)]
pub const fn l4_rewrite(
    check: u16,
    proto: u8,
    saddr: u32,
    daddr: u32,
    l4_len: u16,
    old_addr: u32,
    new_addr: u32,
    old_port: u16,
    new_port: u16,
) -> u16 {
    if is_partial(check, saddr, daddr, proto, l4_len) {
        partial_replace_u32(check, old_addr, new_addr)
    } else {
        l4_rewrite_full(check, proto, old_addr, new_addr, old_port, new_port)
    }
}

/// The L4 checksum field after the same rewrite when the field is known to
/// be a full checksum (packets received from a physical NIC): no guess, so
/// no residual 1-in-65536 case.
/// * UDP without checksum (0) stays without;
/// * address and port folded in; a UDP result of 0 is sent as 0xffff (0
///   would mean "no checksum").
#[inline(always)]
pub const fn l4_rewrite_full(
    check: u16,
    proto: u8,
    old_addr: u32,
    new_addr: u32,
    old_port: u16,
    new_port: u16,
) -> u16 {
    const PROTO_UDP: u8 = 17;
    if proto == PROTO_UDP && check == 0 {
        0
    } else {
        let updated = full_replace_u16(
            full_replace_u32(check, old_addr, new_addr),
            old_port,
            new_port,
        );
        if proto == PROTO_UDP && updated == 0 {
            0xffff
        } else {
            updated
        }
    }
}

// The same rewrite for an address of either family ([`NetAddr`]): what the
// datapath runs, IPv4 and IPv6 alike. IPv6 has no header checksum; its
// pseudo header (RFC 8200 §8.1) sums like IPv4's, over 128-bit addresses
// and the upper-layer length.

/// The folded, non-complemented pseudo-header sum of either family.
#[inline(always)]
pub fn pseudo_header_seed_of<A: NetAddr>(saddr: A, daddr: A, proto: u8, l4_len: u16) -> u16 {
    let proto_word = u16::from_ne_bytes([0, proto]) as u32;
    let len_word = u16::from_ne_bytes(l4_len.to_be_bytes()) as u32;
    fold(daddr.add_words(saddr.add_words(proto_word + len_word)))
}

/// [`l4_rewrite`] for either family.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "mirrors the packet fields one to one"
)]
pub fn l4_rewrite_of<A: NetAddr>(
    check: u16,
    proto: u8,
    saddr: A,
    daddr: A,
    l4_len: u16,
    old_addr: A,
    new_addr: A,
    old_port: u16,
    new_port: u16,
) -> u16 {
    if check == pseudo_header_seed_of(saddr, daddr, proto, l4_len) {
        fold(new_addr.add_words(old_addr.complement().add_words(check as u32)))
    } else {
        l4_rewrite_full_of(check, proto, old_addr, new_addr, old_port, new_port)
    }
}

/// [`l4_rewrite_full`] for either family: every changed word folded in
/// at once.
#[inline(always)]
pub fn l4_rewrite_full_of<A: NetAddr>(
    check: u16,
    proto: u8,
    old_addr: A,
    new_addr: A,
    old_port: u16,
    new_port: u16,
) -> u16 {
    const PROTO_UDP: u8 = 17;
    if proto == PROTO_UDP && check == 0 {
        return 0;
    }
    let acc = (!check as u32 & 0xffff) + (!old_port as u32 & 0xffff) + new_port as u32;
    let updated = !fold(new_addr.add_words(old_addr.complement().add_words(acc)));
    if proto == PROTO_UDP && updated == 0 {
        0xffff
    } else {
        updated
    }
}

/// Adds the 16-bit words of `bytes` (loaded natively; an odd last byte
/// padded with zero) to a ones-complement accumulator, unfolded. For the
/// headers the datapath writes whole (`N` of a few dozen bytes: no
/// overflow), with a length the verifier sees.
#[inline(always)]
pub const fn sum_words<const N: usize>(mut acc: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        acc += u16::from_ne_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    if N % 2 == 1 {
        acc += u16::from_ne_bytes([bytes[N - 1], 0]) as u32;
    }
    acc
}

/// The checksum field for data whose words sum to `sum` (with the field
/// zeroed): the folded sum, complemented.
#[inline(always)]
pub const fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// Full RFC 1071 checksum of `data` (words loaded natively). Host-side
/// helper for tests and fuzzing; the datapath only updates incrementally.
pub fn sum_bytes(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for word in &mut chunks {
        acc = acc.wrapping_add(u16::from_ne_bytes([word[0], word[1]]) as u32);
        acc = (acc & 0xffff) + (acc >> 16);
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add(u16::from_ne_bytes([*last, 0]) as u32);
    }
    acc
}

use crate::byte_order::NetAddr;

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    /// Full checksum of an IPv4 header (checksum field zeroed by caller).
    fn header_checksum(header: &[u8]) -> u16 {
        !fold(sum_bytes(0, header))
    }

    #[test]
    fn full_update_matches_recomputation() {
        let mut header = [
            0x45, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 0x40, 6, 0, 0, 10, 1, 0, 2, 10, 96, 0, 10,
        ];
        let check = header_checksum(&header);
        let old = addr([10, 96, 0, 10]);
        let new = addr([10, 2, 1, 7]);
        header[16..20].copy_from_slice(&new.to_ne_bytes());
        let expected = header_checksum(&header);
        assert_eq!(full_replace_u32(check, old, new), expected);
    }

    #[test]
    fn port_update_matches_recomputation() {
        let mut data = [0x12u8, 0x34, 0x00, 0x50, 0xde, 0xad, 0xbe, 0xef, 0x01];
        let check = !fold(sum_bytes(0, &data));
        let old = u16::from_ne_bytes([0x00, 0x50]);
        let new = u16::from_ne_bytes([0x1f, 0x90]);
        data[2..4].copy_from_slice(&new.to_ne_bytes());
        assert_eq!(
            full_replace_u16(check, old, new),
            !fold(sum_bytes(0, &data))
        );
    }

    #[test]
    fn partial_update_equals_seed_of_new_addresses() {
        let (s, d, n) = (
            addr([10, 1, 0, 2]),
            addr([10, 96, 0, 10]),
            addr([10, 2, 1, 7]),
        );
        let seed = pseudo_header_seed(s, d, 6, 40);
        assert!(is_partial(seed, s, d, 6, 40));
        assert_eq!(
            partial_replace_u32(seed, d, n),
            pseudo_header_seed(s, n, 6, 40)
        );
    }

    #[test]
    fn l4_rewrite_handles_partial_full_and_zero_udp() {
        let (s, d, n) = (
            addr([10, 1, 0, 2]),
            addr([10, 96, 0, 10]),
            addr([10, 2, 1, 7]),
        );
        let (old_port, new_port) = (80u16.to_be(), 8080u16.to_be());
        // Partial: the seed follows the address, the port is left out.
        let seed = pseudo_header_seed(s, d, 6, 40);
        assert_eq!(
            l4_rewrite(seed, 6, s, d, 40, d, n, old_port, new_port),
            pseudo_header_seed(s, n, 6, 40)
        );
        // UDP without checksum stays without.
        assert_eq!(l4_rewrite(0, 17, s, d, 40, d, n, old_port, new_port), 0);
        // Full: address and port folded in.
        let full = 0x1234;
        assert_eq!(
            l4_rewrite(full, 6, s, d, 40, d, n, old_port, new_port),
            full_replace_u16(full_replace_u32(full, d, n), old_port, new_port)
        );
    }

    #[test]
    fn full_rewrite_never_guesses() {
        let (s, d, n) = (
            addr([10, 1, 0, 2]),
            addr([10, 96, 0, 10]),
            addr([10, 2, 1, 7]),
        );
        let (old_port, new_port) = (80u16.to_be(), 8080u16.to_be());
        // A full checksum that happens to equal the pseudo-header seed: the
        // guessing rewrite takes it for partial, the full one does not.
        let seed = pseudo_header_seed(s, d, 6, 40);
        let full = l4_rewrite_full(seed, 6, d, n, old_port, new_port);
        assert_eq!(
            full,
            full_replace_u16(full_replace_u32(seed, d, n), old_port, new_port)
        );
        assert_ne!(
            full,
            l4_rewrite(seed, 6, s, d, 40, d, n, old_port, new_port)
        );
        // UDP: no checksum stays none, and a checksum is never sent as 0
        // (which would mean "none").
        assert_eq!(l4_rewrite_full(0, 17, d, n, old_port, new_port), 0);
        assert!((1..=u16::MAX).all(|c| l4_rewrite_full(c, 17, d, n, old_port, new_port) != 0));
    }

    #[test]
    fn sum_words_matches_sum_bytes_and_finishes_a_header() {
        let header: [u8; 20] = [
            0x45, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 0x40, 6, 0, 0, 10, 1, 0, 2, 10, 96, 0, 10,
        ];
        assert_eq!(fold(sum_words(0, &header)), fold(sum_bytes(0, &header)));
        assert_eq!(finish(sum_words(0, &header)), header_checksum(&header));
        // A header with its checksum in place sums to all ones.
        let mut checked = header;
        checked[10..12].copy_from_slice(&finish(sum_words(0, &header)).to_ne_bytes());
        assert_eq!(fold(sum_words(0, &checked)), 0xffff);
        // Odd lengths pad the last byte with zero, as RFC 1071 says.
        let odd = [0x12u8, 0x34, 0x56];
        assert_eq!(fold(sum_words(7, &odd)), fold(sum_bytes(7, &odd)));
    }

    #[test]
    fn seed_matches_linux_layout() {
        // Pseudo header bytes: saddr, daddr, 0, proto, len (network order).
        let (s, d) = ([192, 168, 1, 1], [10, 0, 0, 1]);
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&s);
        bytes[4..8].copy_from_slice(&d);
        bytes[9] = 17;
        bytes[10..12].copy_from_slice(&1234u16.to_be_bytes());
        assert_eq!(
            pseudo_header_seed(addr(s), addr(d), 17, 1234),
            fold(sum_bytes(0, &bytes))
        );
    }

    #[test]
    fn the_generic_rewrite_is_the_ipv4_one() {
        let mut x = 0x1234_5678u32;
        let mut next = || {
            x = crate::flow::mix32(x.wrapping_add(0x9e37_79b9));
            x
        };
        for _ in 0..10_000 {
            let (s, d, n) = (next(), next(), next());
            let (check, ports) = (next() as u16, next());
            let (op, np) = (ports as u16, (ports >> 16) as u16);
            let proto = if check & 1 == 0 { 6 } else { 17 };
            assert_eq!(
                pseudo_header_seed_of(s, d, proto, 40),
                pseudo_header_seed(s, d, proto, 40)
            );
            assert_eq!(
                l4_rewrite_full_of(check, proto, d, n, op, np),
                l4_rewrite_full(check, proto, d, n, op, np)
            );
            let seed = pseudo_header_seed(s, d, proto, 40);
            for check in [check, seed] {
                assert_eq!(
                    l4_rewrite_of(check, proto, s, d, 40, d, n, op, np),
                    l4_rewrite(check, proto, s, d, 40, d, n, op, np)
                );
            }
        }
    }

    /// An IPv6 TCP segment's checksum over its pseudo header, recomputed.
    fn ipv6_checksum(src: &[u8; 16], dst: &[u8; 16], segment: &[u8]) -> u16 {
        let mut pseudo = [0u8; 40];
        pseudo[..16].copy_from_slice(src);
        pseudo[16..32].copy_from_slice(dst);
        pseudo[32..36].copy_from_slice(&(segment.len() as u32).to_be_bytes());
        pseudo[39] = 6;
        !fold(sum_bytes(sum_bytes(0, &pseudo), segment))
    }

    fn addr6(bytes: &[u8; 16]) -> crate::byte_order::Addr6 {
        crate::byte_order::net_addr6((*bytes).into())
    }

    #[test]
    fn ipv6_rewrite_matches_recomputation() {
        let src = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let vip = [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa];
        let pod = [
            0xfd, 0, 1, 1, 0, 1, 0, 0, 0xab, 0xcd, 0, 0, 0, 0, 0x10, 0x10,
        ];
        let mut segment = [0u8; 24];
        segment[..2].copy_from_slice(&40000u16.to_be_bytes());
        segment[2..4].copy_from_slice(&80u16.to_be_bytes());
        segment[13] = 0x02;
        segment[20..].copy_from_slice(b"data");
        let check = ipv6_checksum(&src, &vip, &segment);
        segment[2..4].copy_from_slice(&8080u16.to_be_bytes());
        let expected = ipv6_checksum(&src, &pod, &segment);
        let (op, np) = (80u16.to_be(), 8080u16.to_be());
        let (s, d, n) = (addr6(&src), addr6(&vip), addr6(&pod));
        assert_eq!(l4_rewrite_full_of(check, 6, d, n, op, np), expected);
        assert_eq!(l4_rewrite_of(check, 6, s, d, 24, d, n, op, np), expected);
        // Partial: the seed of the new addresses.
        let seed = pseudo_header_seed_of(s, d, 6, 24);
        assert_eq!(
            l4_rewrite_of(seed, 6, s, d, 24, d, n, op, np),
            pseudo_header_seed_of(s, n, 6, 24)
        );
        // The seed is the pseudo header's folded sum.
        let mut pseudo = [0u8; 40];
        pseudo[..16].copy_from_slice(&src);
        pseudo[16..32].copy_from_slice(&vip);
        pseudo[32..36].copy_from_slice(&24u32.to_be_bytes());
        pseudo[39] = 6;
        assert_eq!(seed, fold(sum_bytes(0, &pseudo)));
    }
}
