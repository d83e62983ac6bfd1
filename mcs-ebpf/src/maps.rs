//! The maps, each declared from its row of `mcs_common::MAPS` (capacity and
//! flags come from the row; a compile-time check holds the static's name,
//! kind, key and value to it). BTF-defined (`#[btf_map]`) so `bpftool map
//! dump` prints typed keys and values. Key and value types live in
//! `mcs-common`.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::btf_map,
};
use mcs_common::{
    AbiInfo, AffinityKey, AffinityKeyV6, AffinityValue, AffinityValueV6, BackendKey, BackendValue,
    BackendValueV6, ClockValue, CtKey, CtKeyV6, CtValue, CtValueV6, DropReason, FrontendStats,
    MaglevChunk, MapKind, NameValue, ServiceKey, ServiceKeyV6, ServiceValue, SockRevKey,
    SockRevKeyV6, SockRevValue, SockRevValueV6,
    byte_order::NetAddr,
    def,
    prefilter::{self, Role},
};

/// Declares `NAME: Kind<K, V>` from the table row `def::ROW`: the static's
/// name is the map's name (aya and bpffs see it), capacity and flags are
/// the row's, and the build fails if name, kind, key or value differ from
/// the row. Arrays have `u32` keys.
macro_rules! abi_map {
    ($(#[$doc:meta])* $name:ident: $kind:ident<$key:ty, $value:ty> = $row:expr) => {
        abi_map!(@declare $(#[$doc])* $name: $kind<$key, $value>, $row,
            $kind<$key, $value, { $row.max_entries as usize }, { $row.flags as usize }>);
    };
    ($(#[$doc:meta])* $name:ident: $kind:ident<$value:ty> = $row:expr) => {
        abi_map!(@declare $(#[$doc])* $name: $kind<u32, $value>, $row,
            $kind<$value, { $row.max_entries as usize }, { $row.flags as usize }>);
    };
    (@declare $(#[$doc:meta])* $name:ident: $kind:ident<$key:ty, $value:ty>, $row:expr, $ty:ty) => {
        $(#[$doc])*
        #[btf_map]
        pub static $name: $ty = $kind::new();
        const _: () = assert!(
            $row.declares::<$key, $value>(stringify!($name), abi_map!(@kind $kind)),
            concat!(stringify!($name), " differs from its row of mcs_common::MAPS"),
        );
    };
    (@kind HashMap) => { MapKind::Hash };
    (@kind LruHashMap) => { MapKind::LruHash };
    (@kind Array) => { MapKind::Array };
    (@kind PerCpuArray) => { MapKind::PerCpuArray };
}

abi_map! {
    /// Miss prefilter bitmap (see `mcs_common::prefilter`). An array, so the
    /// verifier inlines its lookups (no helper call, no hashing); mmapable,
    /// so the agent sets and clears bits without a system call each.
    MCS_FILTER_V1: Array<u64> = def::PREFILTER
}

/// Whether `addr` (either family) may be a member of `role` (false:
/// certainly not).
#[inline(always)]
pub fn prefilter_may_contain<A: NetAddr>(addr: A, role: Role) -> bool {
    let bit = prefilter::bit_of(addr, role);
    match MCS_FILTER_V1.get(prefilter::word(bit)) {
        Some(word) => *word & prefilter::mask(bit) != 0,
        // Cannot happen (the word index is in range); fail open.
        None => true,
    }
}

abi_map! {
    /// ClusterSetIP:port/proto → frontend (with where its Maglev table is).
    MCS_SVC_V2: HashMap<ServiceKey, ServiceValue> = def::SERVICES
}
abi_map! {
    /// (frontend, slot) → backend; preallocated (see `def::BACKENDS`).
    MCS_BACKEND_V2: HashMap<BackendKey, BackendValue> = def::BACKENDS
}
abi_map! {
    /// Every frontend's Maglev table, at the chunk its service entry names
    /// (`mcs_common::maglev`).
    MCS_MAGLEV_V2: Array<MaglevChunk> = def::MAGLEV
}
abi_map! {
    /// ClientIP session affinity: (frontend, client) → backend.
    MCS_AFFINITY_V1: LruHashMap<AffinityKey, AffinityValue> = def::AFFINITY
}
abi_map! {
    /// Flow state for both directions of every translated flow.
    MCS_CT_V1: LruHashMap<CtKey, CtValue> = def::CONNTRACK
}
abi_map! {
    /// IPv6 ClusterSetIP:port/proto → frontend (ids shared with
    /// `MCS_SVC_V2`).
    MCS_SVC_V6: HashMap<ServiceKeyV6, ServiceValue> = def::SERVICES_V6
}
abi_map! {
    /// (IPv6 frontend, slot) → IPv6 backend.
    MCS_BACKEND_V6: HashMap<BackendKey, BackendValueV6> = def::BACKENDS_V6
}
abi_map! {
    /// ClientIP session affinity of IPv6 clients.
    MCS_AFFINITY_V6: LruHashMap<AffinityKeyV6, AffinityValueV6> = def::AFFINITY_V6
}
abi_map! {
    /// Flow state of IPv6 flows.
    MCS_CT_V6: LruHashMap<CtKeyV6, CtValueV6> = def::CONNTRACK_V6
}
abi_map! {
    /// Per-frontend counters, indexed by frontend id.
    MCS_SVC_STATS: PerCpuArray<FrontendStats> = def::FRONTEND_STATS
}
abi_map! {
    /// Per-backend counters, indexed by backend id.
    MCS_BE_STATS: PerCpuArray<FrontendStats> = def::BACKEND_STATS
}
abi_map! {
    /// Socket LB: (socket, backend) → ClusterSetIP, for replies and
    /// getpeername; aged out by the agent after `last_used_ns`.
    MCS_SOCK_REV_V2: LruHashMap<SockRevKey, SockRevValue> = def::SOCK_REVNAT
}
abi_map! {
    /// The same for IPv6 sockets, keyed by the address the socket sees
    /// (IPv4-mapped ones included).
    MCS_SOCK_REV_V6: LruHashMap<SockRevKeyV6, SockRevValueV6> = def::SOCK_REVNAT_V6
}
abi_map! {
    /// Socket-LB counters per frontend (`new_flows` = connections/datagram
    /// destinations translated, `no_backend` = refused), shared by all CPUs
    /// and updated atomically (see `def::SOCK_STATS`).
    MCS_SOCKSTAT_V2: Array<FrontendStats> = def::SOCK_STATS
}
abi_map! {
    /// Layout version of this map set (written by the agent, checked on
    /// adoption).
    MCS_ABI: Array<AbiInfo> = def::ABI
}
abi_map! {
    /// Drops by reason, indexed by `DropReason`.
    MCS_DROPS: PerCpuArray<u64> = def::DROPS
}
abi_map! {
    /// Frontend id → `namespace/name:port` (written by the agent, for
    /// operators).
    MCS_SVC_META: HashMap<u32, NameValue> = def::FRONTEND_META
}
abi_map! {
    /// Cluster id → cluster name (written by the agent, for operators).
    MCS_CLUSTERS: Array<NameValue> = def::CLUSTERS
}
abi_map! {
    /// Jiffies → coarse-clock nanoseconds, written by the agent
    /// (`mcs_common::ClockValue`).
    MCS_CLOCK: Array<ClockValue> = def::CLOCK
}

/// Monotonic time for flow and affinity timestamps, in the coarse clock's
/// nanoseconds (the last tick's time: timestamps only age entries by
/// seconds). Computed from jiffies, which the verifier inlines to one load;
/// the clock helper is a call, and calls are dear on some CPUs (a return
/// thunk per call). Falls back to the helper until the agent calibrated.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without preconditions (inlined by the verifier).
    let jiffies = unsafe { bpf_jiffies64() };
    match MCS_CLOCK.get(0) {
        Some(clock) if clock.ns_per_jiffy != 0 => clock.ns_at(jiffies),
        // SAFETY: helper without preconditions.
        _ => unsafe { bpf_ktime_get_coarse_ns() },
    }
}

/// Adds one to the drop counter of `reason`.
#[inline(always)]
pub fn count_drop(reason: DropReason) {
    if let Some(counter) = MCS_DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

/// Adds a packet (and optionally a new flow) to a frontend's counters.
#[inline(always)]
pub fn count_frontend(frontend_id: u32, bytes: u64, new_flow: bool) {
    if let Some(stats) = MCS_SVC_STATS.get_ptr_mut(frontend_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
            if new_flow {
                (*stats).new_flows += 1;
            }
        }
    }
}

/// Adds a packet (and optionally a new flow) to a backend's counters.
#[inline(always)]
pub fn count_backend(backend_id: u32, bytes: u64, new_flow: bool) {
    if let Some(stats) = MCS_BE_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
            if new_flow {
                (*stats).new_flows += 1;
            }
        }
    }
}

/// Counts a packet for a frontend without backends.
#[inline(always)]
pub fn count_no_backend(frontend_id: u32) {
    if let Some(stats) = MCS_SVC_STATS.get_ptr_mut(frontend_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { (*stats).no_backend += 1 };
    }
}
