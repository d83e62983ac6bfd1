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
//! map is `BPF_F_MMAPABLE`): setting a bit costs no system call. The
//! bookkeeping of members and bits is pure, in `members.rs`.
//!
//! IPv6 addresses are members by their fold, the same 32 bits the
//! datapath tests (`mcs_common::prefilter`).

mod members;

use std::{
    collections::{HashMap, HashSet},
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{Array, IterableMap as _, MapData};
use mcs_common::{
    BackendKey, BackendValue, BackendValueOf, BackendValueV6, CtKey, CtKeyV6, CtValue, CtValueV6,
    ServiceKey, ServiceKeyV6,
    byte_order::NetAddr,
    prefilter::{self, PREFILTER_WORDS},
};

pub use members::{BitChange, GRACE, Member, Members, Tracker};

/// What the IPv6 maps hold, for [`Prefilter::rebuild`].
#[derive(Clone, Debug, Default)]
pub struct MapContents6 {
    pub services: Vec<ServiceKeyV6>,
    pub backends: Vec<(BackendKey, BackendValueV6)>,
    pub conntrack: Vec<(CtKeyV6, CtValueV6)>,
}

/// Conntrack scans for the sweep at most this often.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

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

    pub fn put_service_v6(&mut self, key: &ServiceKeyV6) {
        let change = self.tracker.put_service_v6(key);
        self.apply(change);
    }

    pub fn delete_service_v6(&mut self, key: &ServiceKeyV6) {
        self.tracker.delete_service_v6(key, Instant::now());
    }

    /// A slot of either family ([`Tracker::put_backend`]).
    pub fn put_backend<A: NetAddr>(&mut self, key: &BackendKey, value: &BackendValueOf<A>) {
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
        v6: MapContents6,
    ) {
        let now = Instant::now();
        let mut tracker = Tracker::default();
        for key in services {
            tracker.put_service(&key);
        }
        for key in &v6.services {
            tracker.put_service_v6(key);
        }
        for (key, value) in backends {
            tracker.put_backend(&key, &value, now);
        }
        for (key, value) in &v6.backends {
            tracker.put_backend(key, value, now);
        }
        for (key, value) in conntrack {
            tracker.members.linger(Member::of_flow(&key, &value), now);
        }
        for (key, value) in &v6.conntrack {
            tracker.members.linger(Member::of_flow(key, value), now);
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
