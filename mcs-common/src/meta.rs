//! What the agent and operators read beside the lookups: counters, drop
//! reasons, names, the layout version and the datapath clock.

use core::mem::size_of;

/// Longest name stored in [`NameValue`].
pub const NAME_LEN: usize = 120;

/// Layout version of all pinned maps; stored in `MCS_ABI` and bumped with
/// any change to a key or value.
pub const ABI_VERSION: u32 = 1;

/// "MCS1" in ASCII.
pub const ABI_MAGIC: u32 = 0x4d43_5331;

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
/// The agent writes it at start (entry 0 of `MCS_CLOCK`); all zero (not
/// calibrated) makes the datapath call the clock helper instead.
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

/// Why the XDP program dropped a packet (index into `MCS_DROPS`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A packet to a ClusterSetIP that has no usable backend.
    NoBackend = 0,
    /// An IP fragment to a ClusterSetIP (ports are unknown; not supported).
    Fragment = 1,
    /// A packet to a ClusterSetIP too short for its headers, or one the tc
    /// hook could not rewrite (a kernel helper refused).
    Malformed = 2,
    /// Conntrack insert failed (map full).
    CtFull = 3,
    /// Backend slot missing while the count says it exists (update race).
    BackendMissing = 4,
    /// No usable backend and no reject reply possible (e.g. IP options).
    NoBackendUnreplied = 5,
    /// Not a drop: an IPv6 packet to a ClusterSetIP whose extension header
    /// chain the datapath does not follow (an unknown extension header, or
    /// too long a chain), passed on untranslated.
    Ipv6ChainUnfollowed = 6,
}

impl DropReason {
    pub const COUNT: u32 = 7;
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        Self::NoBackend,
        Self::Fragment,
        Self::Malformed,
        Self::CtFull,
        Self::BackendMissing,
        Self::NoBackendUnreplied,
        Self::Ipv6ChainUnfollowed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::NoBackend => "no_backend",
            Self::Fragment => "fragment",
            Self::Malformed => "malformed",
            Self::CtFull => "conntrack_full",
            Self::BackendMissing => "backend_missing",
            Self::NoBackendUnreplied => "no_backend_unreplied",
            Self::Ipv6ChainUnfollowed => "ipv6_chain_unfollowed",
        }
    }
}

const _: () = assert!(size_of::<AbiInfo>() == 8);
const _: () = assert!(size_of::<ClockValue>() == 16);
const _: () = assert!(size_of::<FrontendStats>() == 32);
const _: () = assert!(size_of::<NameValue>() == 128);

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::String;

    use super::*;

    #[test]
    fn name_value_truncates_on_char_boundary() {
        let long: String = "é".repeat(100);
        let value = NameValue::new(&long);
        assert!(value.len as usize <= NAME_LEN);
        assert_eq!(value.as_str().chars().count(), NAME_LEN / 2);
        assert_eq!(NameValue::new("ns/web:http").as_str(), "ns/web:http");
    }

    #[test]
    fn drop_reasons_index_their_counters() {
        for (index, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{}", reason.name());
        }
    }
}
