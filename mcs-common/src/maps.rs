//! Map names, capacities, keys and values.

use core::mem::size_of;

/// Layout version of all pinned maps; stored in [`MAP_ABI`] and bumped with
/// any change to a key or value below.
pub const ABI_VERSION: u32 = 1;

/// Map names as they appear in the ELF object, in bpffs and to `bpftool`.
/// Kernel map names are at most 15 characters.
pub mod names {
    pub const SERVICES: &str = "MCS_SVC_V1";
    /// `_V2`: preallocated (`_V1` was `BPF_F_NO_PREALLOC`).
    pub const BACKENDS: &str = "MCS_BACKEND_V2";
    pub const CONNTRACK: &str = "MCS_CT_V1";
    pub const FRONTEND_STATS: &str = "MCS_SVC_STATS";
    pub const DROPS: &str = "MCS_DROPS";
    pub const FRONTEND_META: &str = "MCS_SVC_META";
    pub const CLUSTERS: &str = "MCS_CLUSTERS";
    pub const MAGLEV: &str = "MCS_MAGLEV_V1";
    pub const AFFINITY: &str = "MCS_AFFINITY_V1";
    pub const BACKEND_STATS: &str = "MCS_BE_STATS";
    pub const SOCK_REVNAT: &str = "MCS_SOCK_REV_V1";
    pub const SOCK_STATS: &str = "MCS_SOCK_STATS";
    /// Miss prefilter bitmap (`crate::prefilter`).
    pub const PREFILTER: &str = "MCS_FILTER_V1";
    /// Layout version of the pinned set; its own layout never changes.
    pub const ABI: &str = "MCS_ABI";
    /// Jiffies → nanoseconds for entry timestamps ([`super::ClockValue`]).
    pub const CLOCK: &str = "MCS_CLOCK";
    /// Every map the agent pins, in a stable order.
    pub const ALL: [&str; 15] = [
        ABI,
        BACKEND_STATS,
        SOCK_REVNAT,
        SOCK_STATS,
        SERVICES,
        BACKENDS,
        CONNTRACK,
        FRONTEND_STATS,
        DROPS,
        FRONTEND_META,
        CLUSTERS,
        MAGLEV,
        AFFINITY,
        PREFILTER,
        CLOCK,
    ];
}

/// Program names (the Rust function names in `mcs-ebpf`).
pub mod programs {
    pub const XDP: &str = "mcs_xdp";
    pub const CONNECT4: &str = "mcs_connect4";
    pub const SENDMSG4: &str = "mcs_sendmsg4";
    pub const RECVMSG4: &str = "mcs_recvmsg4";
    pub const GETPEERNAME4: &str = "mcs_getpeername4";
    /// Reads the kernel's jiffies for the agent's clock calibration
    /// (`BPF_PROG_TEST_RUN` only; never attached).
    pub const CLOCK_PROBE: &str = "mcs_clock_probe";
    /// The socket-LB programs, in attach order.
    pub const SOCKET: [&str; 4] = [CONNECT4, SENDMSG4, RECVMSG4, GETPEERNAME4];
}

/// Maximum number of frontends (ClusterSetIP × port × protocol).
pub const MAX_FRONTENDS: u32 = 1 << 17;
/// Maximum number of backend slots over all frontends.
pub const MAX_BACKEND_SLOTS: u32 = 1 << 18;
/// Entries of a frontend's Maglev lookup table (prime). 2 KiB per frontend
/// with backends: 10 000 service ports cost 20 MiB of kernel memory. With N
/// backends each owns ⌊M/N⌋ or ⌈M/N⌉ entries (share error ≤ 1/M absolute;
/// ≤ 1 % relative up to 10 backends, ≤ 10 % at 100).
pub const MAGLEV_TABLE_SIZE: usize = 1021;
/// Maximum backends of one frontend (each needs at least one table entry).
pub const MAX_BACKENDS_PER_FRONTEND: u32 = MAGLEV_TABLE_SIZE as u32;
/// Socket-LB reverse translations (LRU): one per socket and backend.
pub const MAX_SOCK_REVNAT: u32 = 1 << 18;
/// Distinct backend endpoints (address, port) over all frontends; indexes
/// the per-backend counters.
pub const MAX_BACKENDS: u32 = 1 << 16;
/// Session-affinity entries (LRU): one per client and frontend.
pub const MAX_AFFINITY: u32 = 1 << 17;
/// Conntrack entries (LRU; each flow uses two: forward and reply).
pub const MAX_CONNTRACK: u32 = 1 << 19;
/// Source clusters the agent can name (cluster id 0 means "unknown").
pub const MAX_CLUSTERS: u32 = 256;
/// Longest name stored in [`NameValue`].
pub const NAME_LEN: usize = 120;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Frontend key: a ClusterSetIP, a service port and its protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// ClusterSetIP, network order.
    pub addr: u32,
    /// Service port, network order.
    pub port: u16,
    /// IP protocol number ([`PROTO_TCP`] or [`PROTO_UDP`]).
    pub proto: u8,
    pub _pad: u8,
}

/// A frontend: its id (index into per-frontend maps) and how many backend
/// slots it has. `backend_count == 0` means "known service, no endpoint".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    pub frontend_id: u32,
    pub backend_count: u32,
    /// `SVC_F_*` bits.
    pub flags: u32,
    /// ClientIP session affinity timeout (with [`SVC_F_AFFINITY`]).
    pub affinity_timeout_s: u32,
}

/// One backend slot of a frontend; slots are `0..backend_count`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub frontend_id: u32,
    pub slot: u32,
}

/// A backend endpoint: pod IP and target port, possibly in another cluster.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendValue {
    /// Pod IP, network order.
    pub addr: u32,
    /// Target port, network order.
    pub port: u16,
    pub _pad: u16,
    /// Index into [`names::CLUSTERS`].
    pub cluster_id: u32,
    /// `BACKEND_F_*` bits.
    pub flags: u32,
    /// Index into the per-backend counters (same for every frontend the
    /// endpoint backs).
    pub backend_id: u32,
    pub _pad2: u32,
}

/// Socket-LB reverse key: a socket and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    pub cookie: u64,
    /// Backend address and port, network order.
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// What the application must see instead of the backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevValue {
    /// ClusterSetIP and service port, network order.
    pub vip: u32,
    pub vport: u16,
    pub _pad: u16,
    pub frontend_id: u32,
    pub _pad2: u32,
}

/// The layout version of the pinned maps, checked before adoption.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbiInfo {
    /// [`ABI_MAGIC`]: tells an mcs map set from anything else.
    pub magic: u32,
    /// [`ABI_VERSION`] of the agent that created the maps.
    pub version: u32,
}

/// How the datapath turns jiffies into the coarse monotonic clock's
/// nanoseconds (`CLOCK_MONOTONIC_COARSE`, what `bpf_ktime_get_coarse_ns`
/// returns): `jiffies × ns_per_jiffy + offset_ns`, wrapping. Reading jiffies
/// is one load (the verifier inlines `bpf_jiffies64`), where the clock
/// helper is a call: the bench measured it at a third of a conntrack hit.
/// The agent writes it at start (entry 0 of [`names::CLOCK`]); all zero
/// (not calibrated) makes the datapath call the clock helper instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockValue {
    /// The tick length (`clock_getres(CLOCK_MONOTONIC_COARSE)`); 0 = not
    /// calibrated.
    pub ns_per_jiffy: u64,
    pub offset_ns: u64,
}

impl ClockValue {
    /// The coarse clock's nanoseconds at `jiffies`.
    #[inline(always)]
    pub const fn ns_at(&self, jiffies: u64) -> u64 {
        jiffies
            .wrapping_mul(self.ns_per_jiffy)
            .wrapping_add(self.offset_ns)
    }
}

/// "MCS1" in ASCII.
pub const ABI_MAGIC: u32 = 0x4d43_5331;

/// Conntrack key: the 5-tuple exactly as the packet carries it. Forward
/// entries are keyed client→ClusterSetIP, reply entries backend→client.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Conntrack value: the address and port to write into the packet.
/// For a forward entry that is the backend (destination); for a reply entry
/// the ClusterSetIP and service port (source).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtValue {
    pub nat_addr: u32,
    pub nat_port: u16,
    pub _pad: u16,
    /// `CT_F_*` bits.
    pub flags: u32,
    pub frontend_id: u32,
    /// Backend (pod) address of this flow, network order; lets the agent
    /// find and remove flows of a backend that went away.
    pub backend_addr: u32,
    pub backend_port: u16,
    pub _pad2: u16,
    /// Per-backend counter index of the flow's backend.
    pub backend_id: u32,
    pub _pad3: u32,
    /// `bpf_ktime_get_ns()` of the last packet.
    pub last_seen_ns: u64,
}

/// Per-frontend counters (per-CPU array indexed by frontend id), also used
/// per backend (indexed by backend id; `no_backend` unused there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Packets of new flows refused (TCP RST / ICMP unreachable) or
    /// dropped because the frontend had no usable backend.
    pub no_backend: u64,
}

/// A printable name stored for operators (`dump`, `bpftool`): the
/// `namespace/name:port` of a frontend or the name of a source cluster.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameValue {
    pub len: u32,
    pub _pad: u32,
    pub bytes: [u8; NAME_LEN],
}

impl NameValue {
    pub const EMPTY: Self = Self {
        len: 0,
        _pad: 0,
        bytes: [0; NAME_LEN],
    };

    /// Stores `name`, truncated to [`NAME_LEN`] bytes on a char boundary.
    pub fn new(name: &str) -> Self {
        let mut end = name.len().min(NAME_LEN);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let mut value = Self::EMPTY;
        value.bytes[..end].copy_from_slice(&name.as_bytes()[..end]);
        value.len = end as u32;
        value
    }

    pub fn as_str(&self) -> &str {
        let len = (self.len as usize).min(NAME_LEN);
        core::str::from_utf8(&self.bytes[..len]).unwrap_or("<invalid utf-8>")
    }
}

/// `ServiceValue::flags`: no option.
pub const SVC_F_NONE: u32 = 0;
/// `ServiceValue::flags`: port-0 marker saying the address is a ClusterSetIP.
pub const SVC_F_VIP_MARKER: u32 = 1 << 0;
/// `ServiceValue::flags`: `sessionAffinity: ClientIP`.
pub const SVC_F_AFFINITY: u32 = 1 << 1;

/// `BackendValue::flags`: the endpoint is ready (serves new flows).
pub const BACKEND_F_READY: u32 = 1 << 0;
/// `BackendValue::flags`: serving but terminating; used only while the
/// frontend has no ready endpoint (KEP-1669 fallback).
pub const BACKEND_F_TERMINATING: u32 = 1 << 1;

/// A frontend's Maglev lookup table: entry `hash % M` is a backend slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    pub slots: [u16; MAGLEV_TABLE_SIZE],
    pub _pad: u16,
}

/// Session-affinity key: frontend and client address (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey {
    pub frontend_id: u32,
    pub client_addr: u32,
}

/// The backend a client is bound to, and when it last opened a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_addr: u32,
    pub backend_port: u16,
    pub _pad: u16,
    pub slot: u32,
    pub _pad2: u32,
    pub last_used_ns: u64,
}

/// `CtValue::flags`: entry translates replies (source rewrite).
pub const CT_F_REPLY: u32 = 1 << 0;
/// `CtValue::flags`: a TCP SYN was seen for this flow.
pub const CT_F_SYN: u32 = 1 << 1;
/// `CtValue::flags`: a TCP FIN was seen.
pub const CT_F_FIN: u32 = 1 << 2;
/// `CtValue::flags`: a TCP RST was seen.
pub const CT_F_RST: u32 = 1 << 3;

/// Why the XDP program dropped a packet (index into [`names::DROPS`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A packet to a ClusterSetIP that has no usable backend.
    NoBackend = 0,
    /// An IP fragment to a ClusterSetIP (ports are unknown; not supported).
    Fragment = 1,
    /// A packet to a ClusterSetIP too short for its headers.
    Malformed = 2,
    /// Conntrack insert failed (map full).
    CtFull = 3,
    /// Backend slot missing while the count says it exists (update race).
    BackendMissing = 4,
    /// No usable backend and no reject reply possible (e.g. IP options).
    NoBackendUnreplied = 5,
}

impl DropReason {
    pub const COUNT: u32 = 6;
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        Self::NoBackend,
        Self::Fragment,
        Self::Malformed,
        Self::CtFull,
        Self::BackendMissing,
        Self::NoBackendUnreplied,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::NoBackend => "no_backend",
            Self::Fragment => "fragment",
            Self::Malformed => "malformed",
            Self::CtFull => "conntrack_full",
            Self::BackendMissing => "backend_missing",
            Self::NoBackendUnreplied => "no_backend_unreplied",
        }
    }
}

const _: () = assert!(size_of::<ServiceKey>() == 8);
const _: () = assert!(size_of::<ServiceValue>() == 16);
const _: () = assert!(size_of::<BackendKey>() == 8);
const _: () = assert!(size_of::<BackendValue>() == 24);
const _: () = assert!(size_of::<AbiInfo>() == 8);
const _: () = assert!(size_of::<ClockValue>() == 16);
const _: () = assert!(size_of::<SockRevKey>() == 16);
const _: () = assert!(size_of::<SockRevValue>() == 16);
const _: () = assert!(size_of::<CtKey>() == 16);
const _: () = assert!(size_of::<CtValue>() == 40);
const _: () = assert!(size_of::<FrontendStats>() == 32);
const _: () = assert!(size_of::<NameValue>() == 128);
const _: () = assert!(size_of::<MaglevTable>() == 2044);
const _: () = assert!(size_of::<AffinityKey>() == 8);
const _: () = assert!(size_of::<AffinityValue>() == 24);

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are `repr(C)`, contain only integers and have no
    // implicit padding (see the size assertions above).
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for BackendValue {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for FrontendStats {}
    unsafe impl aya::Pod for NameValue {}
    unsafe impl aya::Pod for MaglevTable {}
    unsafe impl aya::Pod for AbiInfo {}
    unsafe impl aya::Pod for ClockValue {}
    unsafe impl aya::Pod for SockRevKey {}
    unsafe impl aya::Pod for SockRevValue {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        // Sum of field sizes equals the struct size.
        assert_eq!(4 + 2 + 1 + 1, size_of::<ServiceKey>());
        assert_eq!(4 + 4 + 2 + 2 + 1 + 3, size_of::<CtKey>());
        assert_eq!(offset_of!(CtValue, last_seen_ns), 32);
        assert_eq!(offset_of!(BackendValue, cluster_id), 8);
    }

    #[test]
    fn names_fit_the_kernel_limit() {
        for name in names::ALL {
            assert!(name.len() <= 15, "{name} is longer than 15 bytes");
        }
    }

    #[test]
    fn name_value_truncates_on_char_boundary() {
        let long = "é".repeat(100);
        let value = NameValue::new(&long);
        assert!(value.len as usize <= NAME_LEN);
        assert_eq!(value.as_str().chars().count(), NAME_LEN / 2);
        assert_eq!(NameValue::new("ns/web:http").as_str(), "ns/web:http");
    }
}
