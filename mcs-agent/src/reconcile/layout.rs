//! Where a frontend's entries go: the slot layout of its backends, the
//! Maglev table over those slots, and its service key.

use std::collections::{BTreeMap, BTreeSet};

use std::net::IpAddr;

use mcs_common::{ServiceKey, ServiceKeyV6, maglev_wide};

use crate::{
    desired::{Backend, Frontend},
    maglev::{self, Member},
};

/// Slot layout for a new backend set that moves as few backends as
/// possible: a backend keeps its slot while that slot still exists; freed
/// and new slots are filled in sorted order. Identity is address and port
/// (weight or state changes rewrite the slot in place).
pub fn stable_layout(old: &[Backend], new: &[Backend]) -> Vec<Backend> {
    let identity = |b: &Backend| (b.addr, b.port);
    let wanted: BTreeMap<_, &Backend> = new.iter().map(|b| (identity(b), b)).collect();
    let mut slots: Vec<Option<Backend>> = vec![None; new.len()];
    let mut placed = BTreeSet::new();
    for (slot, backend) in old.iter().enumerate().take(new.len()) {
        if let Some(current) = wanted.get(&identity(backend)) {
            slots[slot] = Some((*current).clone());
            placed.insert(identity(backend));
        }
    }
    let mut rest = new.iter().filter(|b| !placed.contains(&identity(b)));
    for slot in &mut slots {
        if slot.is_none() {
            *slot = rest.next().cloned();
        }
    }
    slots.into_iter().flatten().collect()
}

/// A frontend's Maglev table: `size` entries (prime), each a slot number;
/// written with two-byte entries when `wide`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub size: u32,
    pub wide: bool,
    pub slots: Vec<u16>,
}

/// The Maglev table of `size` entries over a slot layout.
pub fn maglev_table(layout: &[Backend], size: u32) -> Table {
    let members: Vec<Member> = layout
        .iter()
        .map(|b| Member {
            addr: b.addr,
            port: b.port,
            weight: b.weight,
        })
        .collect();
    Table {
        size,
        wide: maglev_wide(u32::try_from(layout.len()).unwrap_or(u32::MAX)),
        slots: maglev::build_table(&members, size as usize),
    }
}

/// A service map key of either family: IPv4 frontends live in
/// `MCS_SVC_V2`, IPv6 ones in `MCS_SVC_V6`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FamilyServiceKey {
    V4(ServiceKey),
    V6(ServiceKeyV6),
}

/// The service map key of `frontend` (address and port as the packet carries them).
pub fn service_key(frontend: &Frontend) -> FamilyServiceKey {
    let (port, proto) = (frontend.port, frontend.protocol.number());
    match frontend.addr {
        IpAddr::V4(addr) => FamilyServiceKey::V4(ServiceKey::new(addr, port, proto)),
        IpAddr::V6(addr) => FamilyServiceKey::V6(ServiceKeyV6::new(addr, port, proto)),
    }
}
