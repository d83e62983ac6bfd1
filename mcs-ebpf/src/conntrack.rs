//! Conntrack: one LRU entry per direction of a translated flow, shared by
//! every packet hook (XDP on veths and NICs, tc on pod interfaces).
//!
//! A TCP SYN without ACK opens a connection: it never follows an existing
//! forward entry ([`opens_connection`]); the flow is balanced afresh over the
//! frontend's current backends and both entries are written again
//! ([`create`], after [`forget_reply`] of a changed backend). So whatever
//! conntrack holds — a finished flow of a backend removed while no agent
//! ran, a pod address reused by another service — a new connection goes to
//! a current backend. A retransmitted SYN gets the same backend from Maglev
//! while the backend set is unchanged. Every other packet follows its entry,
//! so established and closing flows to a removed or terminating backend may
//! finish; entries expire by protocol state, collected by the agent's
//! janitor (`mcs-agent/src/conntrack/`).
//!
//! Generic over the family ([`Family`]): IPv4 flows live in `MCS_CT_V1`,
//! IPv6 flows in `MCS_CT_V6`, under the same rules.

use mcs_common::{
    BackendValueOf, CT_F_FIN, CT_F_REPLY, CT_F_RST, CT_F_SEEN_NON_SYN, CT_F_SYN, CtKeyOf,
    CtValueOf, ServiceValue,
};

use crate::{
    family::Family,
    maps::now_ns,
    packet::{TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
};

/// Refresh `last_seen_ns` at most this often, to keep hot flows from
/// bouncing the entry's cache line between CPUs on every packet.
const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

#[inline(always)]
fn ct_flags(tcp_flags: u8) -> u32 {
    let mut flags = 0;
    if tcp_flags & TCP_FLAG_SYN != 0 {
        flags |= CT_F_SYN;
    } else {
        flags |= CT_F_SEEN_NON_SYN;
    }
    if tcp_flags & TCP_FLAG_FIN != 0 {
        flags |= CT_F_FIN;
    }
    if tcp_flags & TCP_FLAG_RST != 0 {
        flags |= CT_F_RST;
    }
    flags
}

/// Whether a packet with these TCP flags opens a connection (SYN without
/// ACK). UDP packets carry no flags: never.
#[inline(always)]
pub fn opens_connection(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
}

/// A conntrack key. The key is zeroed whole first: LLVM turns a 3-byte
/// padding literal into a call to a `memset` subprogram, two 8-byte stores
/// are cheaper.
#[inline(always)]
pub fn key<F: Family>(saddr: F, daddr: F, sport: u16, dport: u16, proto: u8) -> CtKeyOf<F> {
    // SAFETY: `CtKeyOf` holds only integers; all zeroes is a valid value.
    let mut key: CtKeyOf<F> = unsafe { core::mem::zeroed() };
    key.saddr = saddr;
    key.daddr = daddr;
    key.sport = sport;
    key.dport = dport;
    key.proto = proto;
    key
}

#[inline(always)]
pub fn lookup<F: Family>(key: &CtKeyOf<F>) -> Option<*mut CtValueOf<F>> {
    F::ct_lookup(key)
}

/// Whether a looked-up entry is a flow's reply direction.
#[inline(always)]
pub fn is_reply<F: Family>(entry: *mut CtValueOf<F>) -> bool {
    // SAFETY: `entry` came from a lookup in this program run; the flags
    // only ever gain bits, never the reply bit.
    unsafe { (*entry).is_reply() }
}

/// Records the packet on its entry and returns a copy of the entry.
#[inline(always)]
pub fn touch<F: Family>(entry: *mut CtValueOf<F>, tcp_flags: u8) -> CtValueOf<F> {
    // SAFETY: `entry` came from a lookup in this program run. Concurrent
    // writers only set timestamps and OR flag bits; a lost update there is
    // harmless (the next packet writes again).
    unsafe {
        let mut value = *entry;
        let now = now_ns();
        let new_flags = value.flags | ct_flags(tcp_flags);
        if new_flags != value.flags || now.wrapping_sub(value.last_seen_ns) > TOUCH_INTERVAL_NS {
            value.flags = new_flags;
            value.last_seen_ns = now;
            (*entry).flags = new_flags;
            (*entry).last_seen_ns = now;
        }
        value
    }
}

/// Whether a SYN-ACK that met reply entry `entry` answers another
/// connection than the entry's flow: the flow is past its handshake (the
/// backend already sent more than a SYN-ACK) or closed, and a SYN through
/// the ClusterSetIP would have written the entry afresh. So the SYN went to
/// the backend directly (a pod reusing its port towards the pod address)
/// and its answer must not come back from the ClusterSetIP.
#[inline(always)]
pub fn answers_another_connection<F: Family>(entry: *mut CtValueOf<F>, tcp_flags: u8) -> bool {
    const SYN_ACK: u8 = TCP_FLAG_SYN | TCP_FLAG_ACK;
    // SAFETY: `entry` came from a lookup in this program run.
    tcp_flags & SYN_ACK == SYN_ACK
        && unsafe {
            (*entry).is_reply() && (*entry).flags & (CT_F_SEEN_NON_SYN | CT_F_FIN | CT_F_RST) != 0
        }
}

/// Deletes both entries of the finished flow whose reply entry `entry` is
/// at `reply_key`, so the new connection's packets pass untranslated.
#[inline(always)]
pub fn forget_flow<F: Family>(reply_key: &CtKeyOf<F>, entry: *mut CtValueOf<F>) {
    // SAFETY: `entry` came from a lookup in this program run; copied out
    // before the deletes.
    let (nat_addr, nat_port) = unsafe { ((*entry).nat_addr, (*entry).nat_port) };
    let forward = key(
        reply_key.daddr,
        nat_addr,
        reply_key.dport,
        nat_port,
        reply_key.proto,
    );
    F::ct_remove(&forward);
    F::ct_remove(reply_key);
}

/// What a SYN needs of the forward entry of an earlier flow of its tuple:
/// the entry's backend and flags (copied out, not the whole entry: the
/// stack is tight with IPv6 entries).
pub struct Earlier<F> {
    pub backend_addr: F,
    pub backend_port: u16,
    pub flags: u32,
}

/// The earlier flow a SYN meets at forward entry `entry` (`None`: it is a
/// reply entry, not a flow this SYN opens again).
#[inline(always)]
pub fn earlier<F: Family>(entry: *mut CtValueOf<F>) -> Option<Earlier<F>> {
    // SAFETY: `entry` came from a lookup in this program run; copied out.
    unsafe {
        (!(*entry).is_reply()).then(|| Earlier {
            backend_addr: (*entry).backend_addr,
            backend_port: (*entry).backend_port,
            flags: (*entry).flags,
        })
    }
}

/// Whether a flow that had entry `old` and is now balanced to `backend`
/// is a new flow for the counters: another backend, or the tuple of a
/// finished flow used again (not a retransmitted SYN).
#[inline(always)]
pub fn is_new_flow<F: Family>(old: &Earlier<F>, backend: &BackendValueOf<F>) -> bool {
    old.backend_addr != backend.addr
        || old.backend_port != backend.port
        || old.flags & (CT_F_FIN | CT_F_RST) != 0
}

/// Deletes the reply entry of the flow `key` had with `old` when the flow
/// now goes to another backend (a reply entry is keyed by its backend, so
/// the new one does not replace it).
#[inline(always)]
pub fn forget_reply<F: Family>(key: &CtKeyOf<F>, old: &Earlier<F>, backend: &BackendValueOf<F>) {
    if old.backend_addr != backend.addr || old.backend_port != backend.port {
        let reply_key = self::key(
            old.backend_addr,
            key.saddr,
            old.backend_port,
            key.sport,
            key.proto,
        );
        F::ct_remove(&reply_key);
    }
}

/// Records a new flow: the reply entry first, so a reply can never arrive
/// before the kernel knows how to translate it. Replaces the entries of an
/// earlier flow of the same tuple whole (its flags included).
#[inline(always)]
pub fn create<F: Family>(
    key: &CtKeyOf<F>,
    service: &ServiceValue,
    backend: &BackendValueOf<F>,
    tcp_flags: u8,
) -> Result<(), i32> {
    let now = now_ns();
    let flags = ct_flags(tcp_flags);
    let reply_key = self::key(backend.addr, key.saddr, backend.port, key.sport, key.proto);
    // One value, rewritten for the forward entry after the reply's insert
    // (the map copies it): an IPv6 entry is 64 bytes of a tight stack.
    let mut value = CtValueOf {
        nat_addr: key.daddr,
        nat_port: key.dport,
        _pad: 0,
        flags: flags | CT_F_REPLY,
        frontend_id: service.frontend_id,
        backend_addr: backend.addr,
        backend_port: backend.port,
        _pad2: 0,
        backend_id: backend.backend_id,
        _pad3: 0,
        last_seen_ns: now,
    };
    F::ct_insert(&reply_key, &value)?;
    value.nat_addr = backend.addr;
    value.nat_port = backend.port;
    value.flags = flags;
    F::ct_insert(key, &value)
}
