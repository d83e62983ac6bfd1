//! What must be written for one frontend, as a pure function of what is
//! applied and what is desired: an ordered list of [`Write`]s that keeps
//! the reconciler's guarantees (see the module above) at every step.
//!
//! Order of an upsert: counters reset (a reused id), name, slots (new and
//! changed ones; the old table still points only at slots that exist), the
//! Maglev table, the service entry (count, flags, where the table is), and
//! last the slots beyond the new count. A new frontend thus becomes visible
//! only after its name, slots and table exist.
//!
//! The table is written over the frontend's current one when the size
//! ([`crate::maglev::table_size`]) and entry width stay (every entry goes
//! from one existing slot to another), else at a new place the service
//! entry then switches to (the execute step places it, see
//! [`super::tables`]); the old place is released once no service entry
//! points at it.
//!
//! A removal ([`removal`]) goes the other way: service entry first, then
//! slots and name (and the table's place is released).
//!
//! Backend counter ids and cluster ids are shared by all frontends and are
//! allocated by the execute step ([`super::execute`]) when it writes a slot.

use std::{collections::BTreeSet, net::IpAddr, ops::Range};

use mcs_common::{
    BackendKey, NameValue, SVC_F_AFFINITY, SVC_F_NONE, SVC_F_VIP_MARKER, ServiceValue, maglev_wide,
};

use super::{
    Applied,
    layout::{FamilyServiceKey, Table, maglev_table, service_key, stable_layout},
};
use crate::{
    desired::{Backend, Frontend, FrontendKind, FrontendSpec, IpFamily},
    maglev,
};

/// One map operation of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Write {
    /// Zero a frontend's counters (its id was used before).
    ResetStats(u32),
    PutName(u32, NameValue),
    /// The execute step turns the backend into the slot's value, with its
    /// cluster id and counter id.
    PutSlot(BackendKey, Backend),
    /// The execute step places it (over the current table, or at a new
    /// place).
    PutTable(u32, Table),
    /// The execute step fills in where the table is (none without
    /// backends).
    PutService(FamilyServiceKey, ServiceValue),
    DeleteService(FamilyServiceKey),
    /// A slot of the family's slot map.
    DeleteSlot(IpFamily, BackendKey),
    DeleteName(u32),
}

/// What a frontend has before the plan.
#[derive(Clone, Copy, Debug)]
pub(super) enum Current<'a> {
    /// Nothing yet: a newly allocated id, whose counters need a reset if
    /// the id was used before (or the stats maps were not fresh).
    New { id: u32, reset_stats: bool },
    /// What was written for it (in part, when `dirty`).
    Applied(&'a Applied),
}

/// The writes for one frontend and what the maps hold once all succeeded.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) writes: Vec<Write>,
    pub(super) applied: Applied,
    pub(super) is_new: bool,
    /// Backends that stop serving the frontend (for the conntrack janitor).
    pub(super) retired: Vec<Backend>,
}

/// Whether `applied` is exactly what `spec` asks for: nothing to write.
pub(super) fn is_current(applied: &Applied, spec: &FrontendSpec) -> bool {
    !applied.dirty
        && !applied.table_stale
        && applied.staged.is_none()
        && applied.kind == spec.kind
        && applied.affinity_timeout == spec.affinity_timeout
        && applied.name == stored_name(spec).as_str()
        && stable_layout(&applied.backends, &spec.backends) == applied.backends
}

/// The name stored for operators: a service port's; none for a
/// ClusterSetIP marker (it serves no traffic and `dump` does not show it;
/// two per ClusterSetIP, their names would be most of the name map).
fn stored_name(spec: &FrontendSpec) -> NameValue {
    match spec.kind {
        FrontendKind::Service => NameValue::new(&spec.name),
        FrontendKind::VipMarker => NameValue::EMPTY,
    }
}

fn wide_for(backends: usize) -> bool {
    maglev_wide(u32::try_from(backends).unwrap_or(u32::MAX))
}

/// The writes taking `frontend` from `current` to `spec`. `prebuilt`: the
/// Maglev table of `spec.backends` in their given order at the size a new
/// frontend gets, if the caller built it already; used when everything is
/// rewritten and the size matches.
pub(super) fn upsert(
    frontend: &Frontend,
    current: Current<'_>,
    spec: &FrontendSpec,
    prebuilt: Option<Table>,
) -> Plan {
    let (known, id, reset_stats) = match current {
        Current::New { id, reset_stats } => (None, id, reset_stats),
        Current::Applied(applied) => (Some(applied), applied.id, false),
    };
    let is_new = known.is_none();
    // A new frontend, or one a failed write left incomplete: all of it.
    let rewrite_all = known.is_none_or(|known| known.dirty);
    let old: &[Backend] = known.map_or(&[], |known| &known.backends);
    let layout = if rewrite_all {
        spec.backends.clone()
    } else {
        stable_layout(old, &spec.backends)
    };
    let name = stored_name(spec);
    let named = spec.kind == FrontendKind::Service;
    let mut writes = Vec::new();

    if reset_stats {
        writes.push(Write::ResetStats(id));
    }
    if named && (rewrite_all || known.is_some_and(|known| known.name != name.as_str())) {
        writes.push(Write::PutName(id, name));
    }
    // 1. Slots (new and changed ones; the old table still points only at
    //    slots that exist).
    for (slot, backend) in layout.iter().enumerate() {
        if !rewrite_all && old.get(slot) == Some(backend) {
            continue;
        }
        writes.push(Write::PutSlot(slot_key(id, slot as u32), backend.clone()));
    }
    // 2. The table, before the count can grow: over the current one when
    //    it keeps its size and width, else at a new place.
    let members = |list: &[Backend]| -> Vec<(IpAddr, u16, u32)> {
        list.iter().map(|b| (b.addr, b.port, b.weight)).collect()
    };
    let current_table = known.and_then(|known| known.table);
    let size = maglev::table_size(layout.len(), current_table.map(|table| table.size));
    let wide = wide_for(layout.len());
    let moves = !layout.is_empty() && !current_table.is_some_and(|table| table.fits(size, wide));
    let table_stale = known.is_some_and(|known| known.table_stale);
    let table_changed = rewrite_all || table_stale || moves || members(old) != members(&layout);
    if table_changed && !layout.is_empty() {
        let table = match prebuilt {
            // A full rewrite lays the backends out in spec order.
            Some(table) if rewrite_all && table.size == size => table,
            _ => maglev_table(&layout, size),
        };
        writes.push(Write::PutTable(id, table));
    }
    // 3. The service entry (and with it where the table is).
    let affinity_timeout = known.and_then(|known| known.affinity_timeout);
    let table_dropped = layout.is_empty() && current_table.is_some();
    if rewrite_all
        || moves
        || table_dropped
        || old.len() != layout.len()
        || affinity_timeout != spec.affinity_timeout
    {
        writes.push(Write::PutService(
            service_key(frontend),
            service_value(id, spec, layout.len() as u32),
        ));
    }
    // 4. The slots the new state no longer uses.
    let slot_high = known.map_or(0, |known| known.slot_high);
    writes.extend(delete_slots(
        frontend.family(),
        id,
        layout.len() as u32..slot_high,
    ));

    let kept: BTreeSet<(IpAddr, u16)> = layout.iter().map(|b| (b.addr, b.port)).collect();
    let retired = old
        .iter()
        .filter(|b| !kept.contains(&(b.addr, b.port)))
        .cloned()
        .collect();
    Plan {
        writes,
        applied: Applied {
            id,
            kind: spec.kind,
            affinity_timeout: spec.affinity_timeout,
            name: name.as_str().to_owned(),
            slot_high: layout.len() as u32,
            backends: layout,
            dirty: false,
            table_stale: false,
            // Where the execute step placed it.
            table: None,
            staged: None,
        },
        is_new,
        retired,
    }
}

/// The writes removing everything of frontend id `id`: its service entry
/// (when it has one) first, so the datapath stops choosing it (and its
/// table's place can be released); then its slots `0..slot_high` and its
/// name (when `named`). Adoption recognises what an interrupted removal
/// left by the slots and name that outlive the service entry. `slot_high`:
/// per family (an orphaned id may have left slots in either slot map).
pub(super) fn removal(
    service: Option<FamilyServiceKey>,
    id: u32,
    slot_high: [u32; 2],
    named: bool,
) -> Vec<Write> {
    service
        .map(Write::DeleteService)
        .into_iter()
        .chain(delete_slots(IpFamily::V4, id, 0..slot_high[0]))
        .chain(delete_slots(IpFamily::V6, id, 0..slot_high[1]))
        .chain(named.then_some(Write::DeleteName(id)))
        .collect()
}

fn delete_slots(family: IpFamily, id: u32, slots: Range<u32>) -> impl Iterator<Item = Write> {
    slots.map(move |slot| Write::DeleteSlot(family, slot_key(id, slot)))
}

fn slot_key(frontend_id: u32, slot: u32) -> BackendKey {
    BackendKey { frontend_id, slot }
}

fn service_value(id: u32, spec: &FrontendSpec, backend_count: u32) -> ServiceValue {
    let mut flags = match spec.kind {
        FrontendKind::Service => SVC_F_NONE,
        FrontendKind::VipMarker => SVC_F_VIP_MARKER,
    };
    if spec.affinity_timeout.is_some() {
        flags |= SVC_F_AFFINITY;
    }
    ServiceValue {
        frontend_id: id,
        backend_count,
        flags,
        affinity_timeout_s: spec.affinity_timeout.unwrap_or(0),
        maglev_base: 0,
        maglev_size: 0,
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
