//! Keeps the miss prefilter (`mcs_common::prefilter`, map `MCS_FILTER_V1`)
//! a superset of what the datapath needs: a clear bit lets a packet skip
//! conntrack and the service table, so a missing bit would break traffic.
//!
//! Members ([`Member`]) are a role and an address:
//! * referenced: a ClusterSetIP of a service entry (destination role) or
//!   the address of a backend slot (source role), counted per map key so a
//!   delete is exact;
//! * lingering: no longer referenced by a map entry, but conntrack may
//!   still hold flows through it — TCP flows of a removed backend or
//!   service keep being translated (see docs/reliability.md, "Stale UDP").
//!   A lingering member is released only by a [`Prefilter::sweep`] that
//!   scanned conntrack, found no entry through it, and started at least
//!   [`GRACE`] after the member lost its last reference (an XDP program
//!   that read the backend just before its delete inserts its conntrack
//!   entries within microseconds).
//!
//! A bit is set while at least one member hashes to it. Bits are set before
//! the map entry that needs them is written. After an agent restart the
//! members are rebuilt from the adopted maps, conntrack included
//! ([`Prefilter::rebuild`]).
//!
//! The agent writes the bitmap through a shared mapping of the array (the
//! map is `BPF_F_MMAPABLE`): setting a bit costs no system call.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{Array, IterableMap as _, MapData};
use mcs_common::{
    BackendKey, BackendValue, CtKey, CtValue, ServiceKey,
    byte_order::net_addr,
    prefilter::{self, PREFILTER_WORDS, Role},
};

/// How long a member lingers at least after its last reference went.
pub const GRACE: Duration = Duration::from_secs(1);
/// Conntrack scans for the sweep at most this often.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// A member of the filter: an address in the role a packet is tested on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    pub role: Role,
    /// The address, network order (as the maps and the packet hold it).
    pub addr: u32,
}

impl Member {
    pub const fn new(role: Role, addr: Ipv4Addr) -> Self {
        Self {
            role,
            addr: net_addr(addr),
        }
    }

    /// A ClusterSetIP: tested against the packet's destination.
    pub const fn destination(addr: Ipv4Addr) -> Self {
        Self::new(Role::Destination, addr)
    }

    /// A backend: tested against the packet's source (replies).
    pub const fn source(addr: Ipv4Addr) -> Self {
        Self::new(Role::Source, addr)
    }

    /// The member a service entry needs: its ClusterSetIP.
    pub const fn of_service(key: &ServiceKey) -> Self {
        Self {
            role: Role::Destination,
            addr: key.addr,
        }
    }

    /// The member a backend slot needs: the backend's address.
    pub const fn of_backend(value: &BackendValue) -> Self {
        Self {
            role: Role::Source,
            addr: value.addr,
        }
    }

    /// The member a conntrack entry needs: its destination for a forward
    /// entry (a ClusterSetIP), its source for a reply entry (a backend).
    pub const fn of_flow(key: &CtKey, value: &CtValue) -> Self {
        if value.is_reply() {
            Self {
                role: Role::Source,
                addr: key.saddr,
            }
        } else {
            Self {
                role: Role::Destination,
                addr: key.daddr,
            }
        }
    }

    /// The member's bit in the bitmap.
    pub const fn bit(self) -> u32 {
        prefilter::bit(self.addr, self.role)
    }
}

/// `(role, address in network order)`, as callers wrote members before
/// they were a struct.
impl From<(Role, u32)> for Member {
    fn from((role, addr): (Role, u32)) -> Self {
        Self { role, addr }
    }
}

/// A bit to set or clear in the bitmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitChange {
    Set(u32),
    Clear(u32),
}

/// The member bookkeeping (pure: no map).
#[derive(Clone, Debug, Default)]
pub struct Members {
    refs: HashMap<Member, u32>,
    lingering: HashMap<Member, Instant>,
    bits: HashMap<u32, u32>,
}

impl Members {
    fn add(&mut self, member: Member) -> Option<BitChange> {
        let bit = member.bit();
        let count = self.bits.entry(bit).or_insert(0);
        *count += 1;
        (*count == 1).then_some(BitChange::Set(bit))
    }

    fn remove(&mut self, member: Member) -> Option<BitChange> {
        let bit = member.bit();
        let count = self.bits.get_mut(&bit)?;
        *count -= 1;
        if *count == 0 {
            self.bits.remove(&bit);
            Some(BitChange::Clear(bit))
        } else {
            None
        }
    }

    /// One more map entry needs `member`.
    pub fn reference(&mut self, member: Member) -> Option<BitChange> {
        let refs = self.refs.entry(member).or_insert(0);
        *refs += 1;
        if *refs > 1 || self.lingering.remove(&member).is_some() {
            return None; // already a member
        }
        self.add(member)
    }

    /// One map entry needing `member` went; the member lingers when it was
    /// the last one.
    pub fn release(&mut self, member: Member, now: Instant) {
        match self.refs.get_mut(&member) {
            Some(refs) if *refs > 1 => *refs -= 1,
            Some(_) => {
                self.refs.remove(&member);
                self.lingering.insert(member, now);
            }
            None => {}
        }
    }

    /// A member that only conntrack needs (rebuild after adoption).
    pub fn linger(&mut self, member: Member, now: Instant) -> Option<BitChange> {
        if self.refs.contains_key(&member) || self.lingering.contains_key(&member) {
            return None;
        }
        self.lingering.insert(member, now);
        self.add(member)
    }

    /// Whether a sweep could release something at `now`.
    pub fn sweep_due(&self, now: Instant) -> bool {
        self.lingering
            .values()
            .any(|since| now.saturating_duration_since(*since) >= GRACE)
    }

    /// Releases lingering members that lost their last reference at least
    /// [`GRACE`] before `scan_started` and that no conntrack entry of the
    /// scan (`live`) needs.
    pub fn sweep(&mut self, live: &HashSet<Member>, scan_started: Instant) -> Vec<BitChange> {
        let released: Vec<Member> = self
            .lingering
            .iter()
            .filter(|(member, since)| {
                scan_started.saturating_duration_since(**since) >= GRACE && !live.contains(member)
            })
            .map(|(member, _)| *member)
            .collect();
        released
            .into_iter()
            .filter_map(|member| {
                self.lingering.remove(&member);
                self.remove(member)
            })
            .collect()
    }

    pub fn is_member(&self, member: &Member) -> bool {
        self.refs.contains_key(member) || self.lingering.contains_key(member)
    }

    pub fn lingering(&self) -> usize {
        self.lingering.len()
    }

    /// Every set bit.
    pub fn bits(&self) -> impl Iterator<Item = u32> + '_ {
        self.bits.keys().copied()
    }
}

/// The map keys already counted, so a rewrite of an entry is not counted
/// twice and a delete releases exactly what the put referenced.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    pub members: Members,
    services: HashSet<ServiceKey>,
    /// The member each backend slot references.
    backends: HashMap<BackendKey, Member>,
}

impl Tracker {
    /// Before a service entry is written.
    pub fn put_service(&mut self, key: &ServiceKey) -> Option<BitChange> {
        if self.services.insert(*key) {
            self.members.reference(Member::of_service(key))
        } else {
            None
        }
    }

    /// After a service entry was deleted.
    pub fn delete_service(&mut self, key: &ServiceKey, now: Instant) {
        if self.services.remove(key) {
            self.members.release(Member::of_service(key), now);
        }
    }

    /// Before a backend slot is written.
    pub fn put_backend(
        &mut self,
        key: &BackendKey,
        value: &BackendValue,
        now: Instant,
    ) -> Option<BitChange> {
        let member = Member::of_backend(value);
        match self.backends.insert(*key, member) {
            Some(old) if old == member => None,
            old => {
                let change = self.members.reference(member);
                if let Some(old) = old {
                    self.members.release(old, now);
                }
                change
            }
        }
    }

    /// After a backend slot was deleted.
    pub fn delete_backend(&mut self, key: &BackendKey, now: Instant) {
        if let Some(member) = self.backends.remove(key) {
            self.members.release(member, now);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrefilterError {
    #[error("the prefilter map has {0} words (expected {PREFILTER_WORDS})")]
    Size(u32),
    #[error("cannot read the prefilter map's information")]
    Info(#[source] aya::maps::MapError),
    #[error("cannot map the prefilter bitmap into memory")]
    Mmap(#[source] io::Error),
}

/// A shared mapping of the bitmap array.
struct Bitmap {
    words: NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics;
// it stays valid until `drop` unmaps it.
unsafe impl Send for Bitmap {}
// SAFETY: as above.
unsafe impl Sync for Bitmap {}

impl Bitmap {
    fn map(data: &MapData) -> Result<Self, PrefilterError> {
        let info = data.info().map_err(PrefilterError::Info)?;
        if info.max_entries() != PREFILTER_WORDS {
            return Err(PrefilterError::Size(info.max_entries()));
        }
        let len = PREFILTER_WORDS as usize * size_of::<u64>();
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: maps `len` bytes of the array's value area (the kernel
        // checks the length against the map); the pointer is only used
        // through atomics and unmapped in `drop`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(PrefilterError::Mmap(io::Error::last_os_error()));
        }
        let words = NonNull::new(ptr.cast::<AtomicU64>())
            .ok_or_else(|| PrefilterError::Mmap(io::Error::other("mmap returned null")))?;
        Ok(Self { words, len })
    }

    fn word(&self, index: u32) -> &AtomicU64 {
        let index = (index % PREFILTER_WORDS) as usize;
        // SAFETY: `index` < PREFILTER_WORDS, inside the mapping; page
        // aligned, so every u64 is aligned.
        unsafe { &*self.words.as_ptr().add(index) }
    }

    fn apply(&self, change: BitChange) {
        match change {
            BitChange::Set(bit) => {
                self.word(prefilter::word(bit))
                    .fetch_or(prefilter::mask(bit), Ordering::SeqCst);
            }
            BitChange::Clear(bit) => {
                self.word(prefilter::word(bit))
                    .fetch_and(!prefilter::mask(bit), Ordering::SeqCst);
            }
        }
    }

    fn is_set(&self, bit: u32) -> bool {
        self.word(prefilter::word(bit)).load(Ordering::SeqCst) & prefilter::mask(bit) != 0
    }
}

impl Drop for Bitmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; no reference outlives
        // `self`.
        unsafe {
            libc::munmap(self.words.as_ptr().cast(), self.len);
        }
    }
}

/// The prefilter map and its bookkeeping.
pub struct Prefilter {
    bitmap: Bitmap,
    tracker: Tracker,
    last_sweep: Option<Instant>,
    // Keeps the map (and so the mapping's backing) open.
    _map: Array<MapData, u64>,
}

impl Prefilter {
    pub fn new(map: Array<MapData, u64>) -> Result<Self, PrefilterError> {
        Ok(Self {
            bitmap: Bitmap::map(map.map())?,
            tracker: Tracker::default(),
            last_sweep: None,
            _map: map,
        })
    }

    fn apply(&self, change: Option<BitChange>) {
        if let Some(change) = change {
            self.bitmap.apply(change);
        }
    }

    pub fn put_service(&mut self, key: &ServiceKey) {
        let change = self.tracker.put_service(key);
        self.apply(change);
    }

    pub fn delete_service(&mut self, key: &ServiceKey) {
        self.tracker.delete_service(key, Instant::now());
    }

    pub fn put_backend(&mut self, key: &BackendKey, value: &BackendValue) {
        let change = self.tracker.put_backend(key, value, Instant::now());
        self.apply(change);
    }

    pub fn delete_backend(&mut self, key: &BackendKey) {
        self.tracker.delete_backend(key, Instant::now());
    }

    /// Rebuilds the members from what the maps hold and rewrites the whole
    /// bitmap (every word goes from a superset of the needs straight to the
    /// new superset, so an attached program never sees a needed bit clear).
    pub fn rebuild(
        &mut self,
        services: impl IntoIterator<Item = ServiceKey>,
        backends: impl IntoIterator<Item = (BackendKey, BackendValue)>,
        conntrack: impl IntoIterator<Item = (CtKey, CtValue)>,
    ) {
        let now = Instant::now();
        let mut tracker = Tracker::default();
        for key in services {
            tracker.put_service(&key);
        }
        for (key, value) in backends {
            tracker.put_backend(&key, &value, now);
        }
        for (key, value) in conntrack {
            tracker.members.linger(Member::of_flow(&key, &value), now);
        }
        let mut words: HashMap<u32, u64> = HashMap::new();
        for bit in tracker.members.bits() {
            *words.entry(prefilter::word(bit)).or_insert(0) |= prefilter::mask(bit);
        }
        for index in 0..PREFILTER_WORDS {
            let value = words.get(&index).copied().unwrap_or(0);
            self.bitmap.word(index).store(value, Ordering::SeqCst);
        }
        self.tracker = tracker;
    }

    /// Whether [`Prefilter::sweep`] has something to release and the last
    /// sweep is long enough ago.
    pub fn sweep_due(&self, now: Instant) -> bool {
        self.last_sweep
            .is_none_or(|last| now.saturating_duration_since(last) >= SWEEP_INTERVAL)
            && self.tracker.members.sweep_due(now)
    }

    /// Releases lingering members that the conntrack entries scanned from
    /// `scan_started` on no longer need. Returns how many bits were cleared.
    pub fn sweep(&mut self, live: &HashSet<Member>, scan_started: Instant) -> usize {
        self.last_sweep = Some(scan_started);
        let changes = self.tracker.members.sweep(live, scan_started);
        for change in &changes {
            self.bitmap.apply(*change);
        }
        changes.len()
    }

    /// Whether the bitmap has the bit of `member` set.
    pub fn contains(&self, member: impl Into<Member>) -> bool {
        self.bitmap.is_set(member.into().bit())
    }

    pub fn lingering(&self) -> usize {
        self.tracker.members.lingering()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        PutService(u8, u8),
        DeleteService(u8, u8),
        PutBackend(u8, u8),
        DeleteBackend(u8),
        /// Conntrack gains a flow through a currently referenced member.
        Flow(bool, u8),
        /// Conntrack loses a flow.
        FlowEnds(u8),
        /// Time passes (seconds).
        Wait(u8),
        Sweep,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few addresses, so keys share them and bits collide.
        prop_oneof![
            (0..6u8, 0..3u8).prop_map(|(a, p)| Op::PutService(a, p)),
            (0..6u8, 0..3u8).prop_map(|(a, p)| Op::DeleteService(a, p)),
            (0..8u8, 0..6u8).prop_map(|(s, a)| Op::PutBackend(s, a)),
            (0..8u8).prop_map(Op::DeleteBackend),
            (any::<bool>(), 0..6u8).prop_map(|(r, a)| Op::Flow(r, a)),
            (0..16u8).prop_map(Op::FlowEnds),
            (0..3u8).prop_map(Op::Wait),
            Just(Op::Sweep),
        ]
    }

    fn addr(a: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 96, 0, a)
    }

    fn bits_of(members: &HashSet<Member>) -> HashSet<u32> {
        members.iter().map(|member| member.bit()).collect()
    }

    proptest! {
        /// Every member the maps or conntrack need has its bit set (no false
        /// negatives), and a sweep after everything lingered long enough
        /// leaves exactly the needed bits (deletions are exact).
        #[test]
        fn bits_cover_every_need_and_sweeps_are_exact(ops in proptest::collection::vec(op(), 1..80)) {
            let start = Instant::now();
            let mut now = start;
            let mut tracker = Tracker::default();
            let mut bits: HashSet<u32> = HashSet::new();
            let mut services: HashSet<ServiceKey> = HashSet::new();
            let mut backends: HashMap<BackendKey, Ipv4Addr> = HashMap::new();
            let mut flows: Vec<Member> = Vec::new();
            let apply = |bits: &mut HashSet<u32>, change: Option<BitChange>| match change {
                Some(BitChange::Set(bit)) => { bits.insert(bit); }
                Some(BitChange::Clear(bit)) => { bits.remove(&bit); }
                None => {}
            };
            for op in ops {
                match op {
                    Op::PutService(a, p) => {
                        let key = ServiceKey::new(addr(a), u16::from(p), 6);
                        apply(&mut bits, tracker.put_service(&key));
                        services.insert(key);
                    }
                    Op::DeleteService(a, p) => {
                        let key = ServiceKey::new(addr(a), u16::from(p), 6);
                        services.remove(&key);
                        tracker.delete_service(&key, now);
                    }
                    Op::PutBackend(s, a) => {
                        let key = BackendKey { frontend_id: 0, slot: u32::from(s) };
                        let value = BackendValue::new(SocketAddrV4::new(addr(a + 100), 0), 0, 0, 0);
                        apply(&mut bits, tracker.put_backend(&key, &value, now));
                        backends.insert(key, value.addr());
                    }
                    Op::DeleteBackend(s) => {
                        let key = BackendKey { frontend_id: 0, slot: u32::from(s) };
                        backends.remove(&key);
                        tracker.delete_backend(&key, now);
                    }
                    Op::Flow(reply, a) => {
                        // The datapath creates flows only through members
                        // the maps reference at that moment.
                        let (role, address) = if reply { (Role::Source, addr(a + 100)) } else { (Role::Destination, addr(a)) };
                        let referenced = match role {
                            Role::Destination => services.iter().any(|k| k.addr() == address),
                            Role::Source => backends.values().any(|b| *b == address),
                        };
                        if referenced {
                            flows.push(Member::new(role, address));
                        }
                    }
                    Op::FlowEnds(i) => {
                        if !flows.is_empty() {
                            flows.remove(usize::from(i) % flows.len());
                        }
                    }
                    Op::Wait(s) => now += Duration::from_secs(u64::from(s)),
                    Op::Sweep => {
                        let live: HashSet<Member> = flows.iter().copied().collect();
                        for change in tracker.members.sweep(&live, now) {
                            apply(&mut bits, Some(change));
                        }
                    }
                }
                let mut needed: HashSet<Member> = flows.iter().copied().collect();
                needed.extend(services.iter().map(|k| Member::destination(k.addr())));
                needed.extend(backends.values().map(|a| Member::source(*a)));
                for member in &needed {
                    prop_assert!(tracker.members.is_member(member), "{member:?} dropped");
                    prop_assert!(bits.contains(&member.bit()), "{member:?} has no bit");
                }
                let tracked: HashSet<u32> = tracker.members.bits().collect();
                prop_assert_eq!(&tracked, &bits);
            }
            // Long after: a sweep leaves exactly what is needed.
            now += GRACE;
            let live: HashSet<Member> = flows.iter().copied().collect();
            for change in tracker.members.sweep(&live, now) {
                apply(&mut bits, Some(change));
            }
            let mut referenced: HashSet<Member> = services.iter().map(|k| Member::destination(k.addr())).collect();
            referenced.extend(backends.values().map(|a| Member::source(*a)));
            // Only what conntrack alone needs still lingers.
            prop_assert_eq!(tracker.members.lingering(), live.difference(&referenced).count());
            let needed: HashSet<Member> = referenced.union(&live).copied().collect();
            prop_assert_eq!(bits, bits_of(&needed));
        }
    }

    #[test]
    fn a_released_member_lingers_through_the_grace_period() {
        let start = Instant::now();
        let mut members = Members::default();
        let member = Member::source(Ipv4Addr::new(10, 101, 1, 7));
        assert!(matches!(members.reference(member), Some(BitChange::Set(_))));
        members.release(member, start);
        // Not needed by conntrack, but released only after the grace.
        assert!(members.sweep(&HashSet::new(), start).is_empty());
        assert!(!members.sweep_due(start));
        assert!(members.sweep_due(start + GRACE));
        // Needed by conntrack: kept.
        let live = HashSet::from([member]);
        assert!(members.sweep(&live, start + GRACE).is_empty());
        assert_eq!(
            members.sweep(&HashSet::new(), start + GRACE),
            vec![BitChange::Clear(member.bit())]
        );
        assert!(!members.is_member(&member));
    }
}
