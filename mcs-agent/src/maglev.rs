//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights,
//! and the size of each frontend's table.
//!
//! The lookup table is built here, in userspace, and written into the
//! table array `MCS_MAGLEV_V2` (see `reconcile`); the datapath only reads
//! `table[hash % M]`.
//!
//! Table size ([`table_size`]): Maglev's rule of thumb, the smallest prime
//! M ≥ 100 × N for N backends (each backend's share then within 1 % of
//! 1/N), capped at `MAGLEV_MAX_TABLE_SIZE`, so a one-backend service costs
//! 101 entries where a large one costs 16 381. The disruption bound below
//! holds between two tables *of the same size*; a table of another size
//! is a new permutation (flows in conntrack keep their backend, new flows
//! of clients without an affinity entry may move). So a frontend keeps its
//! size while it suits its backend count ([`keeps`]: not below the rule,
//! not above the rule for twice the backends), and grows with headroom for
//! half as many backends again: scaling one backend at a time from 10 to
//! 40 resizes three times, not thirty.
//!
//! Properties (checked by the property tests below, at every table size a
//! frontend of 1 to 300 backends gets):
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

use std::net::IpAddr;

use mcs_common::MAGLEV_MAX_TABLE_SIZE;

/// Table entries per backend (Maglev's rule of thumb).
pub const ENTRIES_PER_BACKEND: u32 = 100;

/// The smallest prime ≥ `n` (`n` ≥ 2).
fn next_prime(n: u32) -> u32 {
    let is_prime = |m: u32| {
        m >= 2
            && (2..)
                .take_while(|d| d * d <= m)
                .all(|d| !m.is_multiple_of(d))
    };
    (n.max(2)..)
        .find(|m| is_prime(*m))
        .unwrap_or(MAGLEV_MAX_TABLE_SIZE)
}

/// The rule's size for `backends` (≥ 1): the smallest prime ≥ 100 ×
/// backends, capped.
pub fn rule_size(backends: usize) -> u32 {
    let wanted = u32::try_from(backends.max(1))
        .unwrap_or(u32::MAX)
        .saturating_mul(ENTRIES_PER_BACKEND);
    if wanted >= MAGLEV_MAX_TABLE_SIZE {
        MAGLEV_MAX_TABLE_SIZE
    } else {
        next_prime(wanted).min(MAGLEV_MAX_TABLE_SIZE)
    }
}

/// Whether a table of `size` entries still suits `backends`: not below the
/// rule, and not above the rule for twice as many.
pub fn keeps(size: u32, backends: usize) -> bool {
    rule_size(backends) <= size && size <= rule_size(backends.saturating_mul(2))
}

/// The table size of a frontend with `backends` (≥ 1) whose table has
/// `current` entries now (`None`: no table yet): kept while it suits, else
/// grown with headroom for half as many backends again, or shrunk to the
/// rule.
pub fn table_size(backends: usize, current: Option<u32>) -> u32 {
    match current {
        Some(size) if keeps(size, backends) => size,
        Some(size) if size < rule_size(backends) => rule_size(backends + backends / 2),
        _ => rule_size(backends),
    }
}

/// A backend's identity for table building, with its weight (> 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub addr: IpAddr,
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
    match member.addr {
        IpAddr::V4(addr) => (u64::from(u32::from(addr)) << 16) | u64::from(member.port),
        // 144 bits folded into 64: the high half mixed first, so addresses
        // differing in either half (or the port) permute differently.
        IpAddr::V6(addr) => {
            let bits = u128::from(addr);
            let folded = mix64((bits >> 64) as u64) ^ (bits as u64);
            folded.rotate_left(16) ^ u64::from(member.port)
        }
    }
}

/// A member's permutation of a table of `size` slots: its first slot and
/// its step (never 0, so with a prime `size` it visits every slot).
fn permutation(member: &Member, size: u64) -> (u64, u64) {
    let id = identity(member);
    let offset = mix64(id ^ 0x6d61_676c_6576_3031) % size;
    let skip = mix64(id ^ 0x736b_6970_7065_7231) % (size - 1) + 1;
    (offset, skip)
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
        .map(|&i| permutation(&members[i], size64))
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
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    /// The straightforward fill (one division per probe), over the same
    /// permutations: the faster fill must produce exactly its tables.
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
            .map(|&i| permutation(&members[i], size64))
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
                (any::<u32>(), any::<u16>(), 0u32..5, any::<Option<u128>>()).prop_map(|(addr, port, weight, v6)| Member {
                    addr: v6.map_or(IpAddr::V4(Ipv4Addr::from(addr)), |v6| IpAddr::V6(v6.into())),
                    port,
                    weight,
                }),
                0..40,
            ),
            size in prop::sample::select(vec![7usize, 101, 251, 1009, MAGLEV_MAX_TABLE_SIZE as usize]),
        ) {
            prop_assert_eq!(build_table(&members, size), reference_table(&members, size));
        }
    }

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                addr: IpAddr::V4(Ipv4Addr::new(10, (i / 250) as u8, (i % 250) as u8, 7)),
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

    fn is_prime(m: u32) -> bool {
        m >= 2
            && (2..m)
                .take_while(|d| d * d <= m)
                .all(|d| !m.is_multiple_of(d))
    }

    #[test]
    fn sizes_follow_the_rule_and_are_prime() {
        assert!(is_prime(MAGLEV_MAX_TABLE_SIZE));
        for (backends, size) in [(1, 101), (2, 211), (3, 307), (10, 1009), (100, 10_007)] {
            assert_eq!(rule_size(backends), size, "{backends} backends");
        }
        for backends in 1..400 {
            let size = rule_size(backends);
            assert!(is_prime(size), "{size}");
            assert!(
                size >= 100 * backends as u32 || size == MAGLEV_MAX_TABLE_SIZE,
                "{backends}: {size}"
            );
            assert!(keeps(size, backends));
            assert_eq!(table_size(backends, None), size);
        }
        assert_eq!(rule_size(164), MAGLEV_MAX_TABLE_SIZE);
        assert_eq!(rule_size(1021), MAGLEV_MAX_TABLE_SIZE);
    }

    proptest! {
        /// The size changes only when the backend count leaves the window
        /// (below the rule, or over twice as many as the table was made
        /// for); growth leaves room for half as many backends again.
        #[test]
        fn sizes_hold_while_they_suit(start in 1usize..400, steps in prop::collection::vec(-3i32..4, 1..40)) {
            let mut backends = start;
            let mut size = table_size(backends, None);
            for step in steps {
                let next = (backends as i64 + i64::from(step)).clamp(1, 1021) as usize;
                let resized = table_size(next, Some(size));
                prop_assert!(keeps(resized, next), "{} for {}", resized, next);
                if keeps(size, next) {
                    prop_assert_eq!(resized, size, "kept while it suits");
                } else if size < rule_size(next) {
                    prop_assert_eq!(resized, rule_size(next + next / 2));
                }
                backends = next;
                size = resized;
            }
        }

        /// At every table size the rule gives: each of N backends owns
        /// ⌊M/N⌋ or ⌈M/N⌉ entries.
        #[test]
        fn equal_weights_give_equal_shares(n in 1usize..300) {
            let m = rule_size(n) as usize;
            let table = build_table(&members(n), m);
            prop_assert_eq!(table.len(), m);
            let counts = counts(&table, n);
            let (low, high) = (m / n, m.div_ceil(n));
            prop_assert!(counts.iter().all(|c| (low..=high).contains(c)), "{:?}", counts);
        }

        #[test]
        fn weights_are_honoured(weights in prop::collection::vec(1u32..8, 1..12)) {
            let mut list = members(weights.len());
            for (member, weight) in list.iter_mut().zip(&weights) {
                member.weight = *weight;
            }
            let m = rule_size(list.len()) as usize;
            let table = build_table(&list, m);
            let total: u32 = weights.iter().sum();
            for (count, weight) in counts(&table, list.len()).iter().zip(&weights) {
                let share = *count as f64 / m as f64;
                let expected = f64::from(*weight) / f64::from(total);
                // One entry per member per round: error ≤ N/M, plus rounding.
                let tolerance = (list.len() as f64 + 1.0) / m as f64;
                prop_assert!((share - expected).abs() <= tolerance,
                    "weight {weight}: share {share:.4} vs {expected:.4}");
            }
        }

        /// Removing one of N backends, at the size the table keeps for
        /// it (the size of N backends suits N - 1: [`keeps`]), moves the
        /// removed backend's entries and few others. The sizes are the
        /// rule's for 2 to 300 backends, capped ones included.
        #[test]
        fn removing_a_backend_disrupts_little(n in 2usize..300, removed_seed in any::<usize>()) {
            let m = rule_size(n) as usize;
            prop_assert_eq!(table_size(n - 1, Some(m as u32)) as usize, m);
            let before_members = members(n);
            let before = build_table(&before_members, m);
            let removed = removed_seed % n;
            let after_members: Vec<Member> = before_members.iter().enumerate()
                .filter(|(i, _)| *i != removed).map(|(_, m)| *m).collect();
            let after = build_table(&after_members, m);
            let owner_before = |e: usize| before_members[before[e] as usize];
            let owner_after = |e: usize| after_members[after[e] as usize];
            let moved = (0..m).filter(|&e| owner_before(e) != owner_after(e)).count();
            let survivors_moved = (0..m)
                .filter(|&e| before[e] as usize != removed && owner_before(e) != owner_after(e))
                .count();
            let removed_share = counts(&before, n)[removed];
            // The removed backend's entries all move; of the others, at most
            // 6 % of the table (Maglev's bound depends on N/M).
            prop_assert!(moved >= removed_share);
            prop_assert!(survivors_moved * 100 <= 6 * m,
                "{survivors_moved} of {m} entries moved between surviving backends (n = {n})");
        }

        #[test]
        fn tables_are_deterministic(n in 1usize..50) {
            let m = rule_size(n) as usize;
            prop_assert_eq!(build_table(&members(n), m), build_table(&members(n), m));
        }
    }

    #[test]
    fn no_members_no_table() {
        assert!(build_table(&[], 101).is_empty());
        let mut idle = members(2);
        idle.iter_mut().for_each(|m| m.weight = 0);
        assert!(build_table(&idle, 211).is_empty());
    }
}
