//! Service lookup and backend selection: one implementation of the rules for
//! every hook (XDP today, socket LB later).

use mcs_common::{
    BackendKey, BackendValue, ServiceKey, ServiceValue,
    flow::{flow_hash, reduce},
};

use crate::maps::{MCS_BACKEND_V1, MCS_SVC_V1};

/// The frontend of `addr:port/proto` (all network order), if it is one.
#[inline(always)]
pub fn lookup_service(addr: u32, port: u16, proto: u8) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once; the agent replaces entries
    // whole, so a concurrent update yields the old or the new value.
    unsafe { MCS_SVC_V1.get(&key).copied() }
}

/// Why no backend could be chosen.
pub enum SelectError {
    /// The frontend has no backend at all.
    NoBackend,
    /// The slot the hash chose is missing (the agent is mid-update).
    SlotMissing,
}

/// Picks the backend of a new flow. Today: a hash of the 5-tuple over the
/// frontend's slots, so the same flow maps to the same backend while the
/// backend set is unchanged.
#[inline(always)]
pub fn select_backend(
    service: &ServiceValue,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
) -> Result<BackendValue, SelectError> {
    if service.backend_count == 0 {
        return Err(SelectError::NoBackend);
    }
    let slot = reduce(flow_hash(saddr, daddr, sport, dport, proto), service.backend_count);
    let key = BackendKey {
        frontend_id: service.frontend_id,
        slot,
    };
    // SAFETY: copied out at once (see `lookup_service`).
    unsafe { MCS_BACKEND_V1.get(&key).copied() }.ok_or(SelectError::SlotMissing)
}
