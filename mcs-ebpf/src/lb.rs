//! Service lookup and backend selection: one implementation of the rules for
//! every hook (XDP, tc, socket LB) and both families (generic over
//! [`Family`]: the address type picks its maps).
//!
//! Selection of a new flow's backend:
//! 1. `sessionAffinity: ClientIP`: a live affinity entry for (frontend,
//!    client) whose backend still occupies its slot wins;
//! 2. otherwise the frontend's Maglev table at `hash % M` names the slot —
//!    the hash covers the 5-tuple, or only the client address (no ports)
//!    with affinity, so a client keeps its backend even when its affinity
//!    entry is gone (LRU eviction, agent restart). The table's place, size
//!    `M` and entry width come with the service entry; the entry is one
//!    inlined array read of `MCS_MAGLEV_V2` (`mcs_common::maglev`).

use mcs_common::{
    AffinityKeyOf, AffinityValueOf, BackendKey, BackendValueOf, MaglevChunk, SVC_F_AFFINITY,
    ServiceKeyOf, ServiceValue,
    flow::{flow_hash, reduce},
};

use crate::{
    family::Family,
    maps::{MCS_MAGLEV_V2, now_ns},
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// The frontend of `addr:port/proto` (all network order), if it is one.
#[inline(always)]
pub fn lookup_service<F: Family>(addr: F, port: u16, proto: u8) -> Option<ServiceValue> {
    F::service(&ServiceKeyOf::raw(addr, port, proto))
}

/// The backend slot that entry `hash % M` of the frontend's Maglev table
/// names (entries laid out as `mcs_common::maglev_position` says: eight
/// one-byte or four two-byte entries per chunk).
#[inline(always)]
fn maglev_slot(service: &ServiceValue, hash: u32) -> Option<u32> {
    if service.maglev_size == 0 {
        return None;
    }
    let index = reduce(hash, service.maglev_size);
    let base = service.maglev_base;
    if service.maglev_wide() {
        let chunk = MCS_MAGLEV_V2.get(base.wrapping_add(index >> 2))?;
        // SAFETY: a chunk is 8 bytes, 8-aligned in the map: four u16s.
        let entries = unsafe { &*(chunk as *const MaglevChunk).cast::<[u16; 4]>() };
        Some(u32::from(entries[(index & 3) as usize]))
    } else {
        let chunk = MCS_MAGLEV_V2.get(base.wrapping_add(index >> 3))?;
        Some(u32::from(chunk.bytes[(index & 7) as usize]))
    }
}

/// Why no backend could be chosen.
pub enum SelectError {
    /// The frontend has no usable backend.
    NoBackend,
    /// The table or slot the hash chose is missing (agent mid-update).
    SlotMissing,
}

/// Who asks for a backend, as each hook knows it.
pub struct Selector<F> {
    /// The client for ClientIP affinity: its address (XDP) or its network
    /// namespace (socket LB, where the address is not known yet).
    pub client: F,
    /// Spreads flows without affinity (a hash of the 5-tuple, or of the
    /// socket).
    pub flow_hash: u32,
    /// Spreads clients with affinity (a hash of client and frontend only),
    /// so a client keeps its backend even without its affinity entry.
    pub client_hash: u32,
}

impl<F: Family> Selector<F> {
    /// The packet hooks' view: a packet's 5-tuple (packet byte order). An
    /// IPv6 address enters the hashes by its fold.
    #[inline(always)]
    pub fn for_packet(saddr: F, daddr: F, sport: u16, dport: u16, proto: u8) -> Self {
        let (s, d) = (saddr.fold(), daddr.fold());
        Self {
            client: saddr,
            flow_hash: flow_hash(s, d, sport, dport, proto),
            client_hash: flow_hash(s, d, 0, dport, proto),
        }
    }
}

#[inline(always)]
fn backend_in_slot<F: Family>(frontend_id: u32, slot: u32) -> Option<BackendValueOf<F>> {
    F::backend(&BackendKey { frontend_id, slot })
}

/// Picks the backend of a new flow; returns it with its slot.
#[inline(always)]
pub fn select_backend<F: Family>(
    service: &ServiceValue,
    selector: &Selector<F>,
) -> Result<(BackendValueOf<F>, u32), SelectError> {
    if service.backend_count == 0 {
        return Err(SelectError::NoBackend);
    }
    let affinity = service.flags & SVC_F_AFFINITY != 0;
    let affinity_key = AffinityKeyOf {
        frontend_id: service.frontend_id,
        client_addr: selector.client,
    };
    // The clock only matters with affinity.
    let now = if affinity { now_ns() } else { 0 };
    if affinity && let Some(bound) = F::affinity_lookup(&affinity_key) {
        // SAFETY: pointer from a lookup in this run; fields are plain data
        // and a racing writer only stores a newer timestamp or binding.
        let entry = unsafe { *bound };
        let timeout = u64::from(service.affinity_timeout_s) * NS_PER_SEC;
        if now.wrapping_sub(entry.last_used_ns) <= timeout
            && let Some(backend) = backend_in_slot::<F>(service.frontend_id, entry.slot)
            && backend.addr == entry.backend_addr
            && backend.port == entry.backend_port
        {
            // SAFETY: as above.
            unsafe { (*bound).last_used_ns = now };
            return Ok((backend, entry.slot));
        }
    }

    let hash = if affinity {
        selector.client_hash
    } else {
        selector.flow_hash
    };
    let slot = maglev_slot(service, hash).ok_or(SelectError::SlotMissing)?;
    let backend =
        backend_in_slot::<F>(service.frontend_id, slot).ok_or(SelectError::SlotMissing)?;
    if affinity {
        let binding = AffinityValueOf {
            backend_addr: backend.addr,
            backend_port: backend.port,
            _pad: 0,
            slot,
            _pad2: F::SLOT_PAD,
            last_used_ns: now,
        };
        F::affinity_insert(&affinity_key, &binding);
    }
    Ok((backend, slot))
}
