//! The miss prefilter: a bitmap over addresses that lets a packet which is
//! neither to a ClusterSetIP nor from a backend leave the XDP program after
//! two array reads instead of two hash lookups.
//!
//! One bitmap, two roles with their own hash seeds:
//! * **destination**: every ClusterSetIP (and the destination of every live
//!   forward conntrack entry) sets bit `bit(addr, Destination)`;
//! * **source**: every backend address (and the source of every live reply
//!   conntrack entry) sets bit `bit(addr, Source)`.
//!
//! A packet whose destination bit and source bit are both clear cannot
//! belong to mcs. A set bit may be a false positive (another address with
//! the same hash): that packet just takes the full path. The agent keeps
//! the bitmap a superset of what the maps need (`mcs-agent`
//! `dataplane/prefilter.rs`); a false negative would break traffic.
//!
//! IPv6 addresses share the bitmap: an address is tested by its 32-bit
//! fold ([`NetAddr::fold`], identity for IPv4), so one array read serves
//! both families and a node's bitmap holds all its addresses at once; a
//! fold collision only makes a false positive, like a bit collision.

use crate::{byte_order::NetAddr, flow::mix32};

/// log2 of the bitmap's bits: 2^24 bits = 2 MiB. With 300 000 addresses
/// set (100k ClusterSetIPs, their backends and conntrack peers) a test
/// meets a false positive with probability ≈ 1.8 %.
pub const PREFILTER_BITS_LOG2: u32 = 24;
/// 64-bit words of the bitmap (entries of its array map).
pub const PREFILTER_WORDS: u32 = 1 << (PREFILTER_BITS_LOG2 - 6);

/// Which side of a packet an address is tested on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// ClusterSetIPs: tested against the packet's destination.
    Destination,
    /// Backends: tested against the packet's source (replies).
    Source,
}

impl Role {
    #[inline(always)]
    const fn seed(self) -> u32 {
        match self {
            Role::Destination => 0x5bd1_e995,
            Role::Source => 0x27d4_eb2f,
        }
    }
}

/// Bit of `addr` (network order, as in the packet) in the bitmap.
#[inline(always)]
pub const fn bit(addr: u32, role: Role) -> u32 {
    mix32(addr ^ role.seed()) >> (32 - PREFILTER_BITS_LOG2)
}

/// Bit of an address of either family (its fold).
#[inline(always)]
pub fn bit_of<A: NetAddr>(addr: A, role: Role) -> u32 {
    bit(addr.fold(), role)
}

/// Word (array index) of a bit.
#[inline(always)]
pub const fn word(bit: u32) -> u32 {
    bit >> 6
}

/// Mask of a bit within its word.
#[inline(always)]
pub const fn mask(bit: u32) -> u64 {
    1u64 << (bit & 63)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn bits_stay_in_the_bitmap_and_roles_differ() {
        let mut same = 0;
        for i in 0..10_000u32 {
            let addr = 0x0a60_0000u32.wrapping_add(i).to_be();
            let (d, s) = (bit(addr, Role::Destination), bit(addr, Role::Source));
            assert!(word(d) < PREFILTER_WORDS && word(s) < PREFILTER_WORDS);
            same += u32::from(d == s);
        }
        assert!(same < 5, "roles collide too often: {same}");
    }

    #[test]
    fn consecutive_addresses_spread() {
        // 100k consecutive ClusterSetIPs set close to 100k distinct bits.
        let seen: BTreeSet<u32> = (0..100_000u32)
            .map(|i| bit(0x0a61_0000u32.wrapping_add(i).to_be(), Role::Destination))
            .collect();
        assert!(seen.len() > 99_000, "{} distinct bits", seen.len());
    }
}
