//! Map definitions. BTF-defined (`#[btf_map]`) so `bpftool map dump` prints
//! typed keys and values. Names match `mcs_common::names`.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::btf_map,
};
use mcs_common::{
    AbiInfo, AffinityKey, AffinityValue, BackendKey, BackendValue, ClockValue, CtKey, CtValue,
    DropReason, FrontendStats, MAX_AFFINITY, MAX_BACKEND_SLOTS, MAX_BACKENDS, MAX_CLUSTERS,
    MAX_CONNTRACK, MAX_FRONTENDS, MAX_SOCK_REVNAT, MaglevTable, NameValue, ServiceKey,
    ServiceValue, SockRevKey, SockRevValue,
    prefilter::{self, PREFILTER_WORDS, Role},
};

const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;
const MMAPABLE: usize = BPF_F_MMAPABLE as usize;

/// Miss prefilter bitmap (see `mcs_common::prefilter`). An array, so the
/// verifier inlines its lookups (no helper call, no hashing); mmapable, so
/// the agent sets and clears bits without a system call each.
#[btf_map]
pub static MCS_FILTER_V1: Array<u64, { PREFILTER_WORDS as usize }, MMAPABLE> = Array::new();

/// Whether `addr` may be a member of `role` (false: certainly not).
#[inline(always)]
pub fn prefilter_may_contain(addr: u32, role: Role) -> bool {
    let bit = prefilter::bit(addr, role);
    match MCS_FILTER_V1.get(prefilter::word(bit)) {
        Some(word) => *word & prefilter::mask(bit) != 0,
        // Cannot happen (the word index is in range); fail open.
        None => true,
    }
}

/// ClusterSetIP:port/proto → frontend.
#[btf_map]
pub static MCS_SVC_V1: HashMap<ServiceKey, ServiceValue, { MAX_FRONTENDS as usize }> =
    HashMap::new();

/// (frontend, slot) → backend. Preallocated: a cold sync writes every slot
/// of every frontend, and an insert that pops a preallocated element is
/// about twice as fast as one that allocates (the bench's cold sync); the
/// map's memory is fixed at creation (`docs/operations.md`) and a write can
/// never fail for lack of memory later.
#[btf_map]
pub static MCS_BACKEND_V2: HashMap<BackendKey, BackendValue, { MAX_BACKEND_SLOTS as usize }> =
    HashMap::new();

/// Frontend id → Maglev lookup table (replaced whole by the agent).
#[btf_map]
pub static MCS_MAGLEV_V1: HashMap<u32, MaglevTable, { MAX_FRONTENDS as usize }, NO_PREALLOC> =
    HashMap::new();

/// ClientIP session affinity: (frontend, client) → backend.
#[btf_map]
pub static MCS_AFFINITY_V1: LruHashMap<AffinityKey, AffinityValue, { MAX_AFFINITY as usize }> =
    LruHashMap::new();

/// Flow state for both directions of every translated flow.
#[btf_map]
pub static MCS_CT_V1: LruHashMap<CtKey, CtValue, { MAX_CONNTRACK as usize }> = LruHashMap::new();

/// Per-frontend counters, indexed by frontend id.
#[btf_map]
pub static MCS_SVC_STATS: PerCpuArray<FrontendStats, { MAX_FRONTENDS as usize }> =
    PerCpuArray::new();

/// Per-backend counters, indexed by backend id.
#[btf_map]
pub static MCS_BE_STATS: PerCpuArray<FrontendStats, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// Socket LB: (socket, backend) → ClusterSetIP, for replies and getpeername.
#[btf_map]
pub static MCS_SOCK_REV_V1: LruHashMap<SockRevKey, SockRevValue, { MAX_SOCK_REVNAT as usize }> =
    LruHashMap::new();

/// Socket-LB counters per frontend (`new_flows` = connections/datagram
/// destinations translated, `no_backend` = refused).
#[btf_map]
pub static MCS_SOCK_STATS: PerCpuArray<FrontendStats, { MAX_FRONTENDS as usize }> =
    PerCpuArray::new();

/// Layout version of this map set (written by the agent, checked on adoption).
#[btf_map]
pub static MCS_ABI: Array<AbiInfo, 1> = Array::new();

/// Drops by reason, indexed by `DropReason`.
#[btf_map]
pub static MCS_DROPS: PerCpuArray<u64, { DropReason::COUNT as usize }> = PerCpuArray::new();

/// Frontend id → `namespace/name:port` (written by the agent, for operators).
#[btf_map]
pub static MCS_SVC_META: HashMap<u32, NameValue, { MAX_FRONTENDS as usize }, NO_PREALLOC> =
    HashMap::new();

/// Cluster id → cluster name (written by the agent, for operators).
#[btf_map]
pub static MCS_CLUSTERS: Array<NameValue, { MAX_CLUSTERS as usize }> = Array::new();

/// Jiffies → coarse-clock nanoseconds, written by the agent
/// (`mcs_common::ClockValue`).
#[btf_map]
pub static MCS_CLOCK: Array<ClockValue, 1> = Array::new();

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
