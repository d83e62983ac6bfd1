//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.
//!
//! The lookup table is built here, in userspace, and written to the
//! `MCS_MAGLEV_V1` map whole (one atomic map update per frontend); the
//! datapath only computes `table[hash % M]`.
//!
//! Properties (checked by the property tests below):
//! * every entry names a backend; with equal weights each backend owns
//!   ⌊M/N⌋ or ⌈M/N⌉ entries, so a backend's share is within ±1/M of 1/N;
//! * weighted backends own entries in proportion to their weights, within
//!   ±N/M (one entry per backend per round of the fill);
//! * removing one of N backends moves its ~1/N of the entries and only a
//!   small fraction of the others (bound asserted in the tests).
//!
//! Backends are identified by address and port, hashed with a fixed
//! function, so every node (and every restart) builds the same table for
//! the same backend set and a flow maps to the same backend everywhere.

use std::net::Ipv4Addr;

pub use mcs_common::MAGLEV_TABLE_SIZE;

/// A backend's identity for table building, with its weight (> 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
}

/// SplitMix64 finalizer: a fixed, well-mixed 64-bit hash.
const fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn identity(member: &Member) -> u64 {
    (u64::from(u32::from(member.addr)) << 16) | u64::from(member.port)
}

/// Builds a table of `size` entries (`size` must be prime) holding indices
/// into `members`. Returns an empty table when there are no members or all
/// weights are zero.
pub fn build_table(members: &[Member], size: usize) -> Vec<u16> {
    let active: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].weight > 0)
        .collect();
    if active.is_empty() || size == 0 {
        return Vec::new();
    }
    let size64 = size as u64;
    let permutations: Vec<(u64, u64)> = active
        .iter()
        .map(|&i| {
            let id = identity(&members[i]);
            let offset = mix64(id ^ 0x6d61_676c_6576_3031) % size64;
            let skip = mix64(id ^ 0x736b_6970_7065_7231) % (size64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_weight = u64::from(active.iter().map(|&i| members[i].weight).max().unwrap_or(1));

    const EMPTY: u16 = u16::MAX;
    let mut table = vec![EMPTY; size];
    // Each member's current position in its permutation, `(offset + n *
    // skip) % size`, advanced by one addition instead of a division.
    let mut position: Vec<u64> = permutations.iter().map(|(offset, _)| *offset).collect();
    let mut filled = 0;
    let mut round: u64 = 0;
    while filled < size {
        for (k, &member) in active.iter().enumerate() {
            // Weighted turns: a member with weight w takes w/max_weight of
            // the rounds, spread evenly.
            let weight = u64::from(members[member].weight);
            if weight != max_weight
                && (round + 1) * weight / max_weight == round * weight / max_weight
            {
                continue;
            }
            let skip = permutations[k].1;
            let advance = |at: u64| {
                let next = at + skip;
                if next >= size64 { next - size64 } else { next }
            };
            let mut candidate = position[k];
            while table[candidate as usize] != EMPTY {
                candidate = advance(candidate);
            }
            table[candidate as usize] = member as u16;
            position[k] = advance(candidate);
            filled += 1;
            if filled == size {
                break;
            }
        }
        round += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The straightforward build (one division per probe), verbatim: the
    /// faster build must produce exactly its tables.
    fn reference_table(members: &[Member], size: usize) -> Vec<u16> {
        let active: Vec<usize> = (0..members.len())
            .filter(|&i| members[i].weight > 0)
            .collect();
        if active.is_empty() || size == 0 {
            return Vec::new();
        }
        let size64 = size as u64;
        let permutations: Vec<(u64, u64)> = active
            .iter()
            .map(|&i| {
                let id = identity(&members[i]);
                let offset = mix64(id ^ 0x6d61_676c_6576_3031) % size64;
                let skip = mix64(id ^ 0x736b_6970_7065_7231) % (size64 - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_weight = u64::from(active.iter().map(|&i| members[i].weight).max().unwrap_or(1));

        const EMPTY: u16 = u16::MAX;
        let mut table = vec![EMPTY; size];
        let mut next = vec![0u64; active.len()];
        let mut filled = 0;
        let mut round: u64 = 0;
        while filled < size {
            for (k, &member) in active.iter().enumerate() {
                // Weighted turns: a member with weight w takes w/max_weight of
                // the rounds, spread evenly.
                let weight = u64::from(members[member].weight);
                if (round + 1) * weight / max_weight == round * weight / max_weight {
                    continue;
                }
                let (offset, skip) = permutations[k];
                let mut candidate = (offset + next[k] * skip) % size64;
                while table[candidate as usize] != EMPTY {
                    next[k] += 1;
                    candidate = (offset + next[k] * skip) % size64;
                }
                table[candidate as usize] = member as u16;
                next[k] += 1;
                filled += 1;
                if filled == size {
                    break;
                }
            }
            round += 1;
        }
        table
    }

    proptest! {
        #[test]
        fn tables_equal_the_straightforward_build(
            members in prop::collection::vec(
                (any::<u32>(), any::<u16>(), 0u32..5).prop_map(|(addr, port, weight)| Member {
                    addr: Ipv4Addr::from(addr),
                    port,
                    weight,
                }),
                0..40,
            ),
            size in prop::sample::select(vec![7usize, 251, MAGLEV_TABLE_SIZE]),
        ) {
            prop_assert_eq!(build_table(&members, size), reference_table(&members, size));
        }
    }

    const M: usize = MAGLEV_TABLE_SIZE;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                addr: Ipv4Addr::new(10, (i / 250) as u8, (i % 250) as u8, 7),
                port: 8080,
                weight: 1,
            })
            .collect()
    }

    fn counts(table: &[u16], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &entry in table {
            counts[entry as usize] += 1;
        }
        counts
    }

    #[test]
    fn table_size_is_prime() {
        assert!(
            (2..M)
                .take_while(|d| d * d <= M)
                .all(|d| !M.is_multiple_of(d))
        );
    }

    proptest! {
        #[test]
        fn equal_weights_give_equal_shares(n in 1usize..200) {
            let table = build_table(&members(n), M);
            prop_assert_eq!(table.len(), M);
            let counts = counts(&table, n);
            let (low, high) = (M / n, M.div_ceil(n));
            prop_assert!(counts.iter().all(|c| (low..=high).contains(c)), "{:?}", counts);
        }

        #[test]
        fn weights_are_honoured(weights in prop::collection::vec(1u32..8, 1..12)) {
            let mut list = members(weights.len());
            for (member, weight) in list.iter_mut().zip(&weights) {
                member.weight = *weight;
            }
            let table = build_table(&list, M);
            let total: u32 = weights.iter().sum();
            for (count, weight) in counts(&table, list.len()).iter().zip(&weights) {
                let share = *count as f64 / M as f64;
                let expected = f64::from(*weight) / f64::from(total);
                // One entry per member per round: error ≤ N/M, plus rounding.
                let tolerance = (list.len() as f64 + 1.0) / M as f64;
                prop_assert!((share - expected).abs() <= tolerance,
                    "weight {weight}: share {share:.4} vs {expected:.4}");
            }
        }

        #[test]
        fn removing_a_backend_disrupts_little(n in 2usize..40, removed_seed in any::<usize>()) {
            let before_members = members(n);
            let before = build_table(&before_members, M);
            let removed = removed_seed % n;
            let after_members: Vec<Member> = before_members.iter().enumerate()
                .filter(|(i, _)| *i != removed).map(|(_, m)| *m).collect();
            let after = build_table(&after_members, M);
            let owner_before = |e: usize| before_members[before[e] as usize];
            let owner_after = |e: usize| after_members[after[e] as usize];
            let moved = (0..M).filter(|&e| owner_before(e) != owner_after(e)).count();
            let survivors_moved = (0..M)
                .filter(|&e| before[e] as usize != removed && owner_before(e) != owner_after(e))
                .count();
            let removed_share = counts(&before, n)[removed];
            // The removed backend's entries all move; of the others, at most
            // 6 % of the table (Maglev's bound depends on N/M; measured max
            // at M = 1021, N < 40 is well below this).
            prop_assert!(moved >= removed_share);
            prop_assert!(survivors_moved * 100 <= 6 * M,
                "{survivors_moved} of {M} entries moved between surviving backends (n = {n})");
        }

        #[test]
        fn tables_are_deterministic(n in 1usize..50) {
            prop_assert_eq!(build_table(&members(n), M), build_table(&members(n), M));
        }
    }

    #[test]
    fn no_members_no_table() {
        assert!(build_table(&[], M).is_empty());
        let mut idle = members(2);
        idle.iter_mut().for_each(|m| m.weight = 0);
        assert!(build_table(&idle, M).is_empty());
    }
}
