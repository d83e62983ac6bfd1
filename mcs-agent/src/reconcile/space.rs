//! Room in the Maglev table array (`MCS_MAGLEV_V2`): a range of chunks per
//! table, handed out best fit (the smallest free range that holds it, at
//! its start), merged with its neighbours when released.
//!
//! A released range is not handed out again before [`GRACE`] has passed: a
//! packet that read its frontend's service entry just before the entry
//! moved to another range may still read the old one (the datapath reads
//! the entry, then the table; each program run takes microseconds).

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    ops::Range,
    time::{Duration, Instant},
};

/// How long a released range stays unused.
pub const GRACE: Duration = Duration::from_secs(1);

/// A range given twice, or beyond the capacity (adoption of pinned maps).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("table range {0:?} overlaps another one or lies beyond the table array")]
pub struct BadRange(pub Range<u32>);

#[derive(Clone, Debug)]
pub(super) struct TableSpace {
    capacity: u32,
    /// Free ranges: start → length (merged: never two adjacent).
    free: BTreeMap<u32, u32>,
    /// The same, by (length, start), for best fit.
    by_length: BTreeSet<(u32, u32)>,
    /// Released ranges with when: reusable once [`GRACE`] has passed.
    quarantine: VecDeque<(Instant, u32, u32)>,
    /// Chunks handed out and not released.
    used: u64,
}

impl TableSpace {
    /// An empty array of `capacity` chunks.
    pub(super) fn new(capacity: u32) -> Self {
        let mut space = Self {
            capacity,
            free: BTreeMap::new(),
            by_length: BTreeSet::new(),
            quarantine: VecDeque::new(),
            used: 0,
        };
        space.insert_free(0, capacity);
        space
    }

    /// An array of `capacity` chunks where `taken` are in use already (read
    /// back from pinned maps).
    pub(super) fn with_taken(
        capacity: u32,
        taken: impl IntoIterator<Item = Range<u32>>,
    ) -> Result<Self, BadRange> {
        let mut taken: Vec<Range<u32>> = taken.into_iter().filter(|r| !r.is_empty()).collect();
        taken.sort_by_key(|range| range.start);
        let mut space = Self::new(0);
        space.capacity = capacity;
        let mut at = 0;
        for range in taken {
            if range.start < at || range.end > capacity {
                return Err(BadRange(range));
            }
            space.insert_free(at, range.start - at);
            space.used += u64::from(range.end - range.start);
            at = range.end;
        }
        space.insert_free(at, capacity - at);
        Ok(space)
    }

    fn insert_free(&mut self, start: u32, len: u32) {
        if len > 0 {
            self.free.insert(start, len);
            self.by_length.insert((len, start));
        }
    }

    fn remove_free(&mut self, start: u32, len: u32) {
        self.free.remove(&start);
        self.by_length.remove(&(len, start));
    }

    /// Returns quarantined ranges older than [`GRACE`] to the free ranges.
    fn expire(&mut self, now: Instant) {
        while let Some(&(released, start, len)) = self.quarantine.front() {
            if now.saturating_duration_since(released) < GRACE {
                break;
            }
            self.quarantine.pop_front();
            self.free_range(start, len);
        }
    }

    /// Merges `start..start + len` into the free ranges.
    fn free_range(&mut self, mut start: u32, mut len: u32) {
        if let Some((&before, &before_len)) = self.free.range(..start).next_back()
            && before + before_len == start
        {
            self.remove_free(before, before_len);
            start = before;
            len += before_len;
        }
        if let Some(&after_len) = self.free.get(&(start + len)) {
            self.remove_free(start + len, after_len);
            len += after_len;
        }
        self.insert_free(start, len);
    }

    /// The first chunk of `len` (> 0) free chunks, or `None` when no free
    /// range is that long.
    pub(super) fn allocate(&mut self, len: u32, now: Instant) -> Option<u32> {
        self.expire(now);
        let &(found, start) = self.by_length.range((len, 0)..).next()?;
        self.remove_free(start, found);
        self.insert_free(start + len, found - len);
        self.used += u64::from(len);
        Some(start)
    }

    /// Hands `start..start + len` back; reusable after [`GRACE`].
    pub(super) fn release(&mut self, start: u32, len: u32, now: Instant) {
        if len == 0 {
            return;
        }
        self.used = self.used.saturating_sub(u64::from(len));
        self.quarantine.push_back((now, start, len));
    }

    pub(super) fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Chunks handed out and not released.
    pub(super) fn used(&self) -> u64 {
        self.used
    }
}

/// For the consistency checks: what is free, waiting and used.
#[cfg(any(test, feature = "testing"))]
impl TableSpace {
    /// Free and quarantined ranges, sorted by start.
    pub(super) fn unused(&self) -> Vec<Range<u32>> {
        let mut ranges: Vec<Range<u32>> = self
            .free
            .iter()
            .map(|(start, len)| *start..start + len)
            .chain(
                self.quarantine
                    .iter()
                    .map(|(_, start, len)| *start..start + len),
            )
            .collect();
        ranges.sort_by_key(|range| range.start);
        ranges
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Allocate(u32),
        /// Release the n-th range in use.
        Release(usize),
        /// Let time pass (milliseconds).
        Wait(u64),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                (1u32..40).prop_map(Op::Allocate),
                any::<usize>().prop_map(Op::Release),
                (0u64..1500).prop_map(Op::Wait),
            ],
            0..200,
        )
    }

    proptest! {
        /// Against a model (the ranges in use): ranges never overlap and
        /// stay inside the array; allocation fails only when no free range
        /// is long enough; a released range is not handed out before the
        /// grace period; used, free and waiting chunks always add up to the
        /// capacity, and free ranges are merged.
        #[test]
        fn ranges_are_disjoint_bounded_and_reused_after_grace(
            capacity in 0u32..300,
            taken in prop::collection::vec((0u32..300, 1u32..20), 0..6),
            ops in ops(),
        ) {
            // Adopted ranges: keep the ones that fit without overlap.
            let mut used: BTreeMap<u32, u32> = BTreeMap::new();
            for (start, len) in taken {
                let end = start + len;
                if end <= capacity && used.iter().all(|(s, l)| end <= *s || start >= s + l) {
                    used.insert(start, len);
                }
            }
            let mut space = TableSpace::with_taken(capacity, used.iter().map(|(s, l)| *s..s + l))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut now = Instant::now();
            let mut waiting: Vec<(Instant, u32, u32)> = Vec::new();
            for op in ops {
                match op {
                    Op::Allocate(len) => match space.allocate(len, now) {
                        Some(start) => {
                            prop_assert!(start + len <= capacity);
                            for (s, l) in &used {
                                prop_assert!(start + len <= *s || start >= s + l, "overlap");
                            }
                            for (at, s, l) in &waiting {
                                let overlaps = start < s + l && *s < start + len;
                                prop_assert!(!overlaps || now.duration_since(*at) >= GRACE,
                                    "reused within the grace period");
                            }
                            used.insert(start, len);
                        }
                        None => {
                            let longest = space.unused().iter()
                                .map(|r| r.end - r.start).max().unwrap_or(0);
                            // Nothing free that long (quarantined ranges
                            // may be, but must wait).
                            let free_longest = space.free.values().copied().max().unwrap_or(0);
                            prop_assert!(free_longest < len, "refused with {} free", free_longest);
                            prop_assert!(longest >= free_longest);
                        }
                    },
                    Op::Release(n) => {
                        if used.is_empty() {
                            continue;
                        }
                        let (&start, &len) = used.iter().nth(n % used.len()).expect("in range");
                        used.remove(&start);
                        space.release(start, len, now);
                        waiting.push((now, start, len));
                    }
                    Op::Wait(ms) => now += Duration::from_millis(ms),
                }
                let in_use: u64 = used.values().map(|l| u64::from(*l)).sum();
                prop_assert_eq!(space.used(), in_use);
                let unused = space.unused();
                let unused_total: u64 = unused.iter().map(|r| u64::from(r.end - r.start)).sum();
                prop_assert_eq!(in_use + unused_total, u64::from(capacity));
                for pair in unused.windows(2) {
                    prop_assert!(pair[0].end <= pair[1].start, "unused ranges overlap");
                }
                let free: Vec<(u32, u32)> = space.free.iter().map(|(s, l)| (*s, *l)).collect();
                for pair in free.windows(2) {
                    prop_assert!(pair[0].0 + pair[0].1 < pair[1].0, "free ranges not merged");
                }
                prop_assert_eq!(space.by_length.len(), space.free.len());
            }
        }
    }

    #[test]
    fn best_fit_keeps_large_ranges_whole() {
        let now = Instant::now();
        let mut space = TableSpace::new(100);
        let a = space.allocate(10, now).expect("a");
        let b = space.allocate(30, now).expect("b");
        let _c = space.allocate(10, now).expect("c");
        space.release(a, 10, now);
        space.release(b, 30, now);
        let later = now + GRACE;
        // The 10-chunk hole takes a 10-chunk table; the rest stays whole.
        assert_eq!(space.allocate(10, later), Some(a));
        assert_eq!(space.allocate(80 - 10, later), None);
        assert_eq!(space.allocate(50, later), Some(50));
    }

    #[test]
    fn adoption_refuses_overlaps_and_ranges_beyond_the_array() {
        assert_eq!(
            TableSpace::with_taken(10, [0..4, 3..6]).err(),
            Some(BadRange(3..6))
        );
        assert_eq!(
            TableSpace::with_taken(10, std::iter::once(8..12)).err(),
            Some(BadRange(8..12))
        );
        let space = TableSpace::with_taken(10, [6..8, 0..2]).expect("disjoint");
        assert_eq!(space.used(), 4);
        assert_eq!(space.unused(), [2..6, 8..10]);
    }
}
