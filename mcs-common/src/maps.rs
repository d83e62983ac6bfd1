//! The one table of maps ([`MAPS`]): every map the agent pins, with its
//! kind, key and value sizes, default capacity, what sizes it at run time
//! ([`Capacity`]) and flags. Everything else follows from it:
//! * [`names::ALL`] is the table's names in its order;
//! * `mcs-ebpf/src/maps.rs` declares each map from its row (capacity and
//!   flags) with a compile-time check of name, kind, key and value;
//! * `mcs-agent/src/dataplane/layout.rs` (`EXPECTED`) checks pinned maps
//!   against the rows before adopting them;
//! * the agent's map handles take every map of the table (a root test in
//!   `tests/tests/pinning.rs` holds the loaded object, the table and the
//!   handles to each other).

use core::mem::size_of;

use crate::{
    AbiInfo, AffinityKey, AffinityKeyV6, AffinityValue, AffinityValueV6, BackendKey, BackendValue,
    BackendValueV6, ClockValue, CtKey, CtKeyV6, CtValue, CtValueV6, DropReason, FrontendStats,
    MaglevChunk, NameValue, ServiceKey, ServiceKeyV6, ServiceValue, SockRevKey, SockRevKeyV6,
    SockRevValue, SockRevValueV6, prefilter::PREFILTER_WORDS,
};

/// Map names as they appear in the ELF object, in bpffs and to `bpftool`.
/// Kernel map names are at most 15 characters.
pub mod names {
    /// `_V2`: the value names the frontend's Maglev table (`_V1` had none).
    pub const SERVICES: &str = "MCS_SVC_V2";
    /// `_V2`: preallocated (`_V1` was `BPF_F_NO_PREALLOC`).
    pub const BACKENDS: &str = "MCS_BACKEND_V2";
    pub const CONNTRACK: &str = "MCS_CT_V1";
    pub const FRONTEND_STATS: &str = "MCS_SVC_STATS";
    pub const DROPS: &str = "MCS_DROPS";
    pub const FRONTEND_META: &str = "MCS_SVC_META";
    pub const CLUSTERS: &str = "MCS_CLUSTERS";
    /// `_V2`: one flat array of every table (`_V1` was a hash map of
    /// fixed-size tables).
    pub const MAGLEV: &str = "MCS_MAGLEV_V2";
    pub const AFFINITY: &str = "MCS_AFFINITY_V1";
    pub const BACKEND_STATS: &str = "MCS_BE_STATS";
    /// `_V2`: entries carry their protocol and last use (aged out).
    pub const SOCK_REVNAT: &str = "MCS_SOCK_REV_V2";
    /// `_V2`: one shared (atomic) array; `MCS_SOCK_STATS` was per CPU.
    pub const SOCK_STATS: &str = "MCS_SOCKSTAT_V2";
    /// Miss prefilter bitmap (`crate::prefilter`).
    pub const PREFILTER: &str = "MCS_FILTER_V1";
    /// Layout version of the pinned set; its own layout never changes.
    pub const ABI: &str = "MCS_ABI";
    /// Jiffies → nanoseconds for entry timestamps ([`crate::ClockValue`]).
    pub const CLOCK: &str = "MCS_CLOCK";
    /// IPv6 frontends (the same values and frontend ids as [`SERVICES`]).
    pub const SERVICES_V6: &str = "MCS_SVC_V6";
    /// The slots of IPv6 frontends.
    pub const BACKENDS_V6: &str = "MCS_BACKEND_V6";
    /// IPv6 conntrack.
    pub const CONNTRACK_V6: &str = "MCS_CT_V6";
    /// IPv6 ClientIP affinity.
    pub const AFFINITY_V6: &str = "MCS_AFFINITY_V6";
    /// IPv6 sockets' reverse translations (socket LB).
    pub const SOCK_REVNAT_V6: &str = "MCS_SOCK_REV_V6";
    /// Every map the agent pins, in the order of [`super::MAPS`].
    pub const ALL: [&str; super::MAPS.len()] = {
        let mut all = [""; super::MAPS.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = super::MAPS[i].name;
            i += 1;
        }
        all
    };
}

/// Program names (the Rust function names in `mcs-ebpf`).
pub mod programs {
    /// XDP on a virtual device: partial checksums told apart by value.
    pub const XDP: &str = "mcs_xdp";
    /// XDP on a physical NIC: every received checksum is full.
    pub const XDP_NIC: &str = "mcs_xdp_nic";
    /// tc on a pod interface, from the pod: the whole translation.
    pub const TC_INGRESS: &str = "mcs_tc_ingress";
    /// tc on a pod interface, to the pod: reverse NAT of replies.
    pub const TC_EGRESS: &str = "mcs_tc_egress";
    pub const CONNECT4: &str = "mcs_connect4";
    pub const SENDMSG4: &str = "mcs_sendmsg4";
    pub const RECVMSG4: &str = "mcs_recvmsg4";
    pub const GETPEERNAME4: &str = "mcs_getpeername4";
    pub const CONNECT6: &str = "mcs_connect6";
    pub const SENDMSG6: &str = "mcs_sendmsg6";
    pub const RECVMSG6: &str = "mcs_recvmsg6";
    pub const GETPEERNAME6: &str = "mcs_getpeername6";
    /// Reads the kernel's jiffies for the agent's clock calibration
    /// (`BPF_PROG_TEST_RUN` only; never attached).
    pub const CLOCK_PROBE: &str = "mcs_clock_probe";
    /// The socket-LB programs, in attach order.
    pub const SOCKET: [&str; 8] = [
        CONNECT4,
        SENDMSG4,
        RECVMSG4,
        GETPEERNAME4,
        CONNECT6,
        SENDMSG6,
        RECVMSG6,
        GETPEERNAME6,
    ];
    /// Every program of the agent's object.
    pub const ALL: [&str; 13] = [
        XDP,
        XDP_NIC,
        TC_INGRESS,
        TC_EGRESS,
        CONNECT4,
        SENDMSG4,
        RECVMSG4,
        GETPEERNAME4,
        CONNECT6,
        SENDMSG6,
        RECVMSG6,
        GETPEERNAME6,
        CLOCK_PROBE,
    ];
}

// Default capacities: the object's sizes, which the agent overrides at
// load from its flags (`mcs-agent run --frontends-max` and the others).

/// Frontends (ClusterSetIP × port × protocol, and two port-0 markers per
/// ClusterSetIP); frontend ids index the per-frontend counters.
pub const MAX_FRONTENDS: u32 = 1 << 17;
/// Backend slots over all frontends.
pub const MAX_BACKEND_SLOTS: u32 = 1 << 18;
/// Socket-LB reverse translations (LRU): one per socket and backend.
pub const MAX_SOCK_REVNAT: u32 = 1 << 18;
/// Distinct backend endpoints (address, port) over all frontends; indexes
/// the per-backend counters.
pub const MAX_BACKENDS: u32 = 1 << 16;
/// Session-affinity entries (LRU): one per client and frontend.
pub const MAX_AFFINITY: u32 = 1 << 17;
/// Conntrack entries (LRU; each flow uses two: forward and reply).
pub const MAX_CONNTRACK: u32 = 1 << 19;
/// Chunks of the Maglev table array (8 bytes each): 160 bytes per default
/// backend slot (a table takes about 100 bytes per backend, see the
/// agent's table sizes).
pub const MAX_MAGLEV_CHUNKS: u32 = MAX_BACKEND_SLOTS / 8 * 160;
/// IPv6 frontends, backend slots, conntrack and affinity entries: their
/// own capacities, so a node without IPv6 services does not pay the IPv4
/// sizes twice (the `_V6` maps are preallocated too). Small defaults until
/// the agent programs IPv6 frontends and sizes them by flags.
pub const MAX_FRONTENDS_V6: u32 = 1 << 11;
pub const MAX_BACKEND_SLOTS_V6: u32 = 1 << 12;
pub const MAX_CONNTRACK_V6: u32 = 1 << 14;
pub const MAX_AFFINITY_V6: u32 = 1 << 11;
pub const MAX_SOCK_REVNAT_V6: u32 = 1 << 14;
/// Source clusters the agent can name (cluster id 0 means "unknown").
pub const MAX_CLUSTERS: u32 = 256;

/// `BPF_F_NO_PREALLOC`: a hash map allocated as entries are added.
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// `BPF_F_MMAPABLE`: an array the agent maps into memory.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The kernel map types mcs uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// `BPF_MAP_TYPE_HASH`.
    Hash,
    /// `BPF_MAP_TYPE_LRU_HASH`.
    LruHash,
    /// `BPF_MAP_TYPE_ARRAY` (`u32` keys).
    Array,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY` (`u32` keys).
    PerCpuArray,
}

/// What sizes a map at run time: each capacity but `Fixed` is a flag of
/// `mcs-agent run`, and every map of one capacity gets the same number of
/// entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Capacity {
    /// The object's size, always.
    Fixed,
    /// Frontends: the service map, names and per-frontend counters.
    Frontends,
    /// Backend slots over all frontends.
    BackendSlots,
    /// Distinct backends (the per-backend counters).
    Backends,
    /// Chunks of the Maglev table array.
    MaglevChunks,
    /// Conntrack entries.
    Conntrack,
    /// Session-affinity entries.
    Affinity,
    /// Socket-LB reverse translations.
    SockRevnat,
    /// IPv6 frontends (`MCS_SVC_V6`; their ids and counters are within
    /// [`Capacity::Frontends`]).
    FrontendsV6,
    /// IPv6 backend slots.
    BackendSlotsV6,
    /// IPv6 conntrack entries.
    ConntrackV6,
    /// IPv6 session-affinity entries.
    AffinityV6,
    /// IPv6 sockets' reverse translations.
    SockRevnatV6,
}

/// One row of [`MAPS`]: what a map must look like, in the object and when
/// pinned by an earlier agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDef {
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    /// The object's (default) capacity; the agent sizes every map but the
    /// `Fixed` ones at load.
    pub max_entries: u32,
    /// Which capacity sizes it.
    pub capacity: Capacity,
    /// `BPF_F_*` creation flags (preallocation, mmap).
    pub flags: u32,
}

impl MapDef {
    const fn new<K, V>(name: &'static str, kind: MapKind, capacity: Capacity) -> Self {
        Self {
            name,
            kind,
            key_size: size_of::<K>() as u32,
            value_size: size_of::<V>() as u32,
            max_entries: default_entries(capacity),
            capacity,
            flags: 0,
        }
    }

    const fn fixed<K, V>(name: &'static str, kind: MapKind, max_entries: u32) -> Self {
        let mut def = Self::new::<K, V>(name, kind, Capacity::Fixed);
        def.max_entries = max_entries;
        def
    }

    const fn with_flags(mut self, flags: u32) -> Self {
        self.flags = flags;
        self
    }

    /// Whether a declaration of map `name` as a `kind` from `K` to `V` is
    /// this row (the eBPF side's compile-time check).
    pub const fn declares<K, V>(&self, name: &str, kind: MapKind) -> bool {
        str_eq(self.name, name)
            && self.kind as u8 == kind as u8
            && self.key_size as usize == size_of::<K>()
            && self.value_size as usize == size_of::<V>()
    }
}

/// The object's size of each run-time capacity.
pub const fn default_entries(capacity: Capacity) -> u32 {
    match capacity {
        Capacity::Fixed => 1,
        Capacity::Frontends => MAX_FRONTENDS,
        Capacity::BackendSlots => MAX_BACKEND_SLOTS,
        Capacity::Backends => MAX_BACKENDS,
        Capacity::MaglevChunks => MAX_MAGLEV_CHUNKS,
        Capacity::Conntrack => MAX_CONNTRACK,
        Capacity::Affinity => MAX_AFFINITY,
        Capacity::SockRevnat => MAX_SOCK_REVNAT,
        Capacity::FrontendsV6 => MAX_FRONTENDS_V6,
        Capacity::BackendSlotsV6 => MAX_BACKEND_SLOTS_V6,
        Capacity::ConntrackV6 => MAX_CONNTRACK_V6,
        Capacity::AffinityV6 => MAX_AFFINITY_V6,
        Capacity::SockRevnatV6 => MAX_SOCK_REVNAT_V6,
    }
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The rows of [`MAPS`] by map, for the eBPF declarations.
pub mod def {
    use super::*;

    pub const ABI: MapDef = MapDef::fixed::<u32, AbiInfo>(names::ABI, MapKind::Array, 1);
    /// Per CPU: every packet of a flow updates its backend's counters (the
    /// bench's counter calibration: shared atomic counters cost more per
    /// packet once two CPUs update the same one).
    pub const BACKEND_STATS: MapDef = MapDef::new::<u32, FrontendStats>(
        names::BACKEND_STATS,
        MapKind::PerCpuArray,
        Capacity::Backends,
    );
    pub const SOCK_REVNAT: MapDef = MapDef::new::<SockRevKey, SockRevValue>(
        names::SOCK_REVNAT,
        MapKind::LruHash,
        Capacity::SockRevnat,
    );
    /// Shared, updated atomically: socket LB counts once per connection
    /// (or datagram destination), not per packet, so contention is rare and
    /// a per-CPU copy would multiply the memory by the CPUs for nothing.
    pub const SOCK_STATS: MapDef =
        MapDef::new::<u32, FrontendStats>(names::SOCK_STATS, MapKind::Array, Capacity::Frontends);
    pub const SERVICES: MapDef = MapDef::new::<ServiceKey, ServiceValue>(
        names::SERVICES,
        MapKind::Hash,
        Capacity::Frontends,
    );
    /// Preallocated: a cold sync writes every slot of every frontend, and an
    /// insert that pops a preallocated element is about twice as fast as
    /// one that allocates; the memory is fixed at creation and a write can
    /// never fail for lack of memory later.
    pub const BACKENDS: MapDef = MapDef::new::<BackendKey, BackendValue>(
        names::BACKENDS,
        MapKind::Hash,
        Capacity::BackendSlots,
    );
    /// Common LRU lists: per-CPU lists (`BPF_F_NO_COMMON_LRU`) measured
    /// slower per insert in the bench and split the capacity per CPU.
    pub const CONNTRACK: MapDef =
        MapDef::new::<CtKey, CtValue>(names::CONNTRACK, MapKind::LruHash, Capacity::Conntrack);
    /// Per CPU: every packet updates its frontend's counters (see
    /// [`BACKEND_STATS`]).
    pub const FRONTEND_STATS: MapDef = MapDef::new::<u32, FrontendStats>(
        names::FRONTEND_STATS,
        MapKind::PerCpuArray,
        Capacity::Frontends,
    );
    pub const DROPS: MapDef =
        MapDef::fixed::<u32, u64>(names::DROPS, MapKind::PerCpuArray, DropReason::COUNT);
    pub const FRONTEND_META: MapDef =
        MapDef::new::<u32, NameValue>(names::FRONTEND_META, MapKind::Hash, Capacity::Frontends)
            .with_flags(BPF_F_NO_PREALLOC);
    pub const CLUSTERS: MapDef =
        MapDef::fixed::<u32, NameValue>(names::CLUSTERS, MapKind::Array, MAX_CLUSTERS);
    /// Every frontend's table at the chunk its service entry names: an
    /// array, so the verifier inlines the lookup; mmapable, so the agent
    /// writes tables without a system call each.
    pub const MAGLEV: MapDef =
        MapDef::new::<u32, MaglevChunk>(names::MAGLEV, MapKind::Array, Capacity::MaglevChunks)
            .with_flags(BPF_F_MMAPABLE);
    pub const AFFINITY: MapDef = MapDef::new::<AffinityKey, AffinityValue>(
        names::AFFINITY,
        MapKind::LruHash,
        Capacity::Affinity,
    );
    /// An array, so the verifier inlines its lookups; mmapable, so the agent
    /// sets and clears bits without a system call each.
    pub const PREFILTER: MapDef =
        MapDef::fixed::<u32, u64>(names::PREFILTER, MapKind::Array, PREFILTER_WORDS)
            .with_flags(BPF_F_MMAPABLE);
    pub const CLOCK: MapDef = MapDef::fixed::<u32, ClockValue>(names::CLOCK, MapKind::Array, 1);

    // IPv6: maps of their own, so IPv4 entries keep their size, with
    // capacities of their own (`MAX_*_V6`); the maps indexed by frontend or
    // backend id (counters, names, Maglev tables) are shared by both
    // families.

    /// As [`SERVICES`], keyed by an IPv6 ClusterSetIP.
    pub const SERVICES_V6: MapDef = MapDef::new::<ServiceKeyV6, ServiceValue>(
        names::SERVICES_V6,
        MapKind::Hash,
        Capacity::FrontendsV6,
    );
    /// As [`BACKENDS`]: the slots of IPv6 frontends hold IPv6 backends.
    pub const BACKENDS_V6: MapDef = MapDef::new::<BackendKey, BackendValueV6>(
        names::BACKENDS_V6,
        MapKind::Hash,
        Capacity::BackendSlotsV6,
    );
    /// As [`CONNTRACK`].
    pub const CONNTRACK_V6: MapDef = MapDef::new::<CtKeyV6, CtValueV6>(
        names::CONNTRACK_V6,
        MapKind::LruHash,
        Capacity::ConntrackV6,
    );
    /// As [`AFFINITY`].
    pub const AFFINITY_V6: MapDef = MapDef::new::<AffinityKeyV6, AffinityValueV6>(
        names::AFFINITY_V6,
        MapKind::LruHash,
        Capacity::AffinityV6,
    );
    /// As [`SOCK_REVNAT`], for IPv6 sockets (IPv4-mapped addresses
    /// included).
    pub const SOCK_REVNAT_V6: MapDef = MapDef::new::<SockRevKeyV6, SockRevValueV6>(
        names::SOCK_REVNAT_V6,
        MapKind::LruHash,
        Capacity::SockRevnatV6,
    );
}

/// Every map the agent pins, in a stable order.
pub const MAPS: [MapDef; 20] = [
    def::ABI,
    def::BACKEND_STATS,
    def::SOCK_REVNAT,
    def::SOCK_STATS,
    def::SERVICES,
    def::BACKENDS,
    def::CONNTRACK,
    def::FRONTEND_STATS,
    def::DROPS,
    def::FRONTEND_META,
    def::CLUSTERS,
    def::MAGLEV,
    def::AFFINITY,
    def::PREFILTER,
    def::CLOCK,
    def::SERVICES_V6,
    def::BACKENDS_V6,
    def::CONNTRACK_V6,
    def::AFFINITY_V6,
    def::SOCK_REVNAT_V6,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit_and_are_unique() {
        for (i, name) in names::ALL.iter().enumerate() {
            assert!(name.len() <= 15, "{name} is longer than 15 bytes");
            assert!(name.starts_with("MCS_"), "{name}");
            assert!(!names::ALL[..i].contains(name), "{name} twice");
        }
    }

    #[test]
    fn array_keys_are_u32_and_rows_check_declarations() {
        for def in MAPS {
            if matches!(def.kind, MapKind::Array | MapKind::PerCpuArray) {
                assert_eq!(def.key_size, 4, "{}", def.name);
            }
        }
        assert!(def::CONNTRACK.declares::<CtKey, CtValue>("MCS_CT_V1", MapKind::LruHash));
        assert_eq!(def::CONNTRACK.max_entries, MAX_CONNTRACK);
        assert_eq!(def::ABI.max_entries, 1);
        assert!(!def::CONNTRACK.declares::<CtKey, CtValue>("MCS_CT_V0", MapKind::LruHash));
        assert!(!def::CONNTRACK.declares::<CtKey, CtValue>("MCS_CT_V1", MapKind::Hash));
        assert!(!def::CONNTRACK.declares::<CtKey, [u8; 32]>("MCS_CT_V1", MapKind::LruHash));
        assert!(!def::CONNTRACK.declares::<u32, CtValue>("MCS_CT_V1", MapKind::LruHash));
    }
}
