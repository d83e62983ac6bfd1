//! Reconciler: applies a [`DesiredState`] to the dataplane maps as a diff.
//!
//! Guarantees:
//! * never flushes: entries of unchanged frontends are not touched;
//! * a frontend whose backends change never has zero backends in between
//!   (new slots are written before the count changes, stale slots removed
//!   after);
//! * a new frontend becomes visible (service entry) only after its backends
//!   and name are written; a removed one disappears before its backends.
//!
//! The maps are reached through [`DataplaneWriter`], so the logic is tested
//! against [`memory::MemoryMaps`] without root.

use std::collections::{BTreeMap, BTreeSet};

use mcs_common::{
    BACKEND_F_READY, BACKEND_F_TERMINATING, BackendKey, BackendValue, MAGLEV_TABLE_SIZE,
    MAX_CLUSTERS, MAX_FRONTENDS, MaglevTable, NameValue, SVC_F_AFFINITY, SVC_F_NONE,
    SVC_F_VIP_MARKER, ServiceKey, ServiceValue,
};
use tracing::{instrument, warn};

use crate::{
    desired::{Backend, DesiredState, Frontend, FrontendKind, FrontendSpec},
    maglev::{self, Member},
};

/// A failed map operation.
#[derive(Debug, thiserror::Error)]
#[error("{op} on map {map} failed")]
pub struct WriteError {
    pub map: &'static str,
    pub op: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Write access to the dataplane maps.
pub trait DataplaneWriter {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), WriteError>;
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), WriteError>;
    fn put_backend(&mut self, key: &BackendKey, value: &BackendValue) -> Result<(), WriteError>;
    fn delete_backend(&mut self, key: &BackendKey) -> Result<(), WriteError>;
    fn put_frontend_name(&mut self, frontend_id: u32, name: &NameValue) -> Result<(), WriteError>;
    fn delete_frontend_name(&mut self, frontend_id: u32) -> Result<(), WriteError>;
    /// Zeroes a frontend's counters (an id is being reused).
    fn reset_frontend_stats(&mut self, frontend_id: u32) -> Result<(), WriteError>;
    fn put_cluster_name(&mut self, cluster_id: u32, name: &NameValue) -> Result<(), WriteError>;
    /// Replaces a frontend's Maglev table in one map update.
    fn put_maglev(&mut self, frontend_id: u32, table: &MaglevTable) -> Result<(), WriteError>;
    fn delete_maglev(&mut self, frontend_id: u32) -> Result<(), WriteError>;
}

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

/// The Maglev table of a slot layout (entries are slot numbers).
pub fn maglev_table(layout: &[Backend]) -> Box<MaglevTable> {
    let members: Vec<Member> = layout
        .iter()
        .map(|b| Member {
            addr: b.addr,
            port: b.port,
            weight: b.weight,
        })
        .collect();
    let mut table = Box::new(MaglevTable {
        slots: [0; MAGLEV_TABLE_SIZE],
        _pad: 0,
    });
    for (entry, slot) in table
        .slots
        .iter_mut()
        .zip(maglev::build_table(&members, MAGLEV_TABLE_SIZE))
    {
        *entry = slot;
    }
    table
}

pub fn service_key(frontend: &Frontend) -> ServiceKey {
    ServiceKey {
        addr: u32::from_ne_bytes(frontend.addr.octets()),
        port: frontend.port.to_be(),
        proto: frontend.protocol.number(),
        _pad: 0,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Applied {
    id: u32,
    kind: FrontendKind,
    affinity_timeout: Option<u32>,
    /// Backends in slot order, as written.
    backends: Vec<Backend>,
    /// Slots `0..slot_high` may exist in the map (covers failed updates).
    slot_high: u32,
    /// A write failed midway: rewrite everything next time.
    dirty: bool,
}

/// What one reconcile did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    pub map_writes: usize,
    pub errors: Vec<(Frontend, WriteError)>,
}

impl ApplyReport {
    pub fn changed(&self) -> bool {
        self.added + self.updated + self.removed > 0
    }
}

#[derive(Debug)]
pub struct Reconciler {
    applied: BTreeMap<Frontend, Applied>,
    next_id: u32,
    free_ids: Vec<u32>,
    clusters: BTreeMap<String, u32>,
}

impl Default for Reconciler {
    fn default() -> Self {
        Self::new()
    }
}

impl Reconciler {
    pub fn new() -> Self {
        Self {
            applied: BTreeMap::new(),
            next_id: 0,
            free_ids: Vec::new(),
            clusters: BTreeMap::new(),
        }
    }

    /// Number of frontends currently programmed.
    pub fn frontend_count(&self) -> usize {
        self.applied.len()
    }

    fn allocate_id(&mut self) -> Option<u32> {
        if let Some(id) = self.free_ids.pop() {
            return Some(id);
        }
        (self.next_id < MAX_FRONTENDS).then(|| {
            self.next_id += 1;
            self.next_id - 1
        })
    }

    /// Cluster id for `name` (0 = unknown or table full).
    fn cluster_id(&mut self, name: &str, maps: &mut impl DataplaneWriter, report: &mut ApplyReport) -> u32 {
        if name.is_empty() {
            return 0;
        }
        if let Some(id) = self.clusters.get(name) {
            return *id;
        }
        let used: BTreeSet<u32> = self.clusters.values().copied().collect();
        let Some(id) = (1..MAX_CLUSTERS).find(|id| !used.contains(id)) else {
            warn!(cluster = name, "cluster table full; backends shown without cluster name");
            return 0;
        };
        match maps.put_cluster_name(id, &NameValue::new(name)) {
            Ok(()) => {
                report.map_writes += 1;
                self.clusters.insert(name.to_owned(), id);
                id
            }
            Err(error) => {
                warn!(cluster = name, error = %error, "cannot record cluster name");
                0
            }
        }
    }

    /// Brings the maps from the last applied state to `desired`.
    #[instrument(skip_all, fields(frontends = desired.frontends.len()))]
    pub fn apply(&mut self, desired: &DesiredState, maps: &mut impl DataplaneWriter) -> ApplyReport {
        let mut report = ApplyReport::default();

        let removed: Vec<Frontend> = self
            .applied
            .keys()
            .filter(|frontend| !desired.frontends.contains_key(frontend))
            .copied()
            .collect();
        for frontend in removed {
            if let Err(error) = self.remove(&frontend, maps, &mut report) {
                report.errors.push((frontend, error));
            }
        }

        for (frontend, spec) in &desired.frontends {
            if let Err(error) = self.upsert(frontend, spec, maps, &mut report) {
                report.errors.push((*frontend, error));
            }
        }

        // Forget cluster ids nobody references any more.
        let referenced: BTreeSet<&str> = self
            .applied
            .values()
            .flat_map(|applied| applied.backends.iter().map(|b| b.cluster.as_str()))
            .collect();
        let stale: Vec<(String, u32)> = self
            .clusters
            .iter()
            .filter(|(name, _)| !referenced.contains(name.as_str()))
            .map(|(name, id)| (name.clone(), *id))
            .collect();
        for (name, id) in stale {
            if maps.put_cluster_name(id, &NameValue::EMPTY).is_ok() {
                report.map_writes += 1;
                self.clusters.remove(&name);
            }
        }
        report
    }

    fn remove(
        &mut self,
        frontend: &Frontend,
        maps: &mut impl DataplaneWriter,
        report: &mut ApplyReport,
    ) -> Result<(), WriteError> {
        let Some(applied) = self.applied.get_mut(frontend) else {
            return Ok(());
        };
        applied.dirty = true;
        let (id, slot_high) = (applied.id, applied.slot_high);
        maps.delete_service(&service_key(frontend))?;
        maps.delete_maglev(id)?;
        report.map_writes += 2;
        for slot in 0..slot_high {
            maps.delete_backend(&BackendKey {
                frontend_id: id,
                slot,
            })?;
            report.map_writes += 1;
        }
        maps.delete_frontend_name(id)?;
        report.map_writes += 1;
        self.applied.remove(frontend);
        self.free_ids.push(id);
        report.removed += 1;
        Ok(())
    }

    fn upsert(
        &mut self,
        frontend: &Frontend,
        spec: &FrontendSpec,
        maps: &mut impl DataplaneWriter,
        report: &mut ApplyReport,
    ) -> Result<(), WriteError> {
        let is_new = match self.applied.get(frontend) {
            Some(existing) => {
                if !existing.dirty
                    && existing.kind == spec.kind
                    && existing.affinity_timeout == spec.affinity_timeout
                    && stable_layout(&existing.backends, &spec.backends) == existing.backends
                {
                    return Ok(()); // unchanged: not a single write
                }
                false
            }
            None => {
                let Some(id) = self.allocate_id() else {
                    return Err(WriteError {
                        map: mcs_common::names::SERVICES,
                        op: "allocate frontend id",
                        source: format!("all {MAX_FRONTENDS} frontend ids in use").into(),
                    });
                };
                // Recorded before any write, so a failure below leaves the
                // id owned (and retried as dirty), never leaked.
                self.applied.insert(
                    *frontend,
                    Applied {
                        id,
                        kind: spec.kind,
                        affinity_timeout: None,
                        backends: Vec::new(),
                        slot_high: 0,
                        dirty: true,
                    },
                );
                true
            }
        };
        // What is known to be in the maps; the stored entry stays marked
        // dirty until every write below has succeeded.
        let Some(stored) = self.applied.get_mut(frontend) else {
            return Ok(()); // inserted or present above
        };
        let known = stored.clone();
        stored.dirty = true;
        let id = known.id;
        let rewrite_all = known.dirty;
        let layout = if rewrite_all {
            spec.backends.clone()
        } else {
            stable_layout(&known.backends, &spec.backends)
        };

        if is_new {
            maps.reset_frontend_stats(id)?;
            report.map_writes += 1;
        }
        if rewrite_all {
            maps.put_frontend_name(id, &NameValue::new(&spec.name))?;
            report.map_writes += 1;
        }
        // 1. Slots (new and changed ones; the old table still points only
        //    at slots that exist).
        for (slot, backend) in layout.iter().enumerate() {
            if !rewrite_all && known.backends.get(slot) == Some(backend) {
                continue;
            }
            let cluster_id = self.cluster_id(&backend.cluster, maps, report);
            if let Some(applied) = self.applied.get_mut(frontend) {
                applied.slot_high = applied.slot_high.max(slot as u32 + 1);
            }
            let flags = if backend.terminating {
                BACKEND_F_TERMINATING
            } else {
                BACKEND_F_READY
            };
            let value = BackendValue {
                addr: u32::from_ne_bytes(backend.addr.octets()),
                port: backend.port.to_be(),
                _pad: 0,
                cluster_id,
                flags,
            };
            maps.put_backend(
                &BackendKey {
                    frontend_id: id,
                    slot: slot as u32,
                },
                &value,
            )?;
            report.map_writes += 1;
        }
        // 2. The table, swapped whole, before the count can grow.
        let members = |list: &[Backend]| -> Vec<(std::net::Ipv4Addr, u16, u32)> {
            list.iter().map(|b| (b.addr, b.port, b.weight)).collect()
        };
        let table_changed = rewrite_all || members(&known.backends) != members(&layout);
        if table_changed && !layout.is_empty() {
            maps.put_maglev(id, &maglev_table(&layout))?;
            report.map_writes += 1;
        }
        // 3. The service entry.
        if rewrite_all
            || known.backends.len() != layout.len()
            || known.affinity_timeout != spec.affinity_timeout
        {
            let mut flags = match spec.kind {
                FrontendKind::Service => SVC_F_NONE,
                FrontendKind::VipMarker => SVC_F_VIP_MARKER,
            };
            if spec.affinity_timeout.is_some() {
                flags |= SVC_F_AFFINITY;
            }
            maps.put_service(
                &service_key(frontend),
                &ServiceValue {
                    frontend_id: id,
                    backend_count: layout.len() as u32,
                    flags,
                    affinity_timeout_s: spec.affinity_timeout.unwrap_or(0),
                },
            )?;
            report.map_writes += 1;
        }
        // 4. What the new state no longer uses.
        if layout.is_empty() && (rewrite_all || !known.backends.is_empty()) {
            maps.delete_maglev(id)?;
            report.map_writes += 1;
        }
        let slot_high = self.applied.get(frontend).map_or(0, |a| a.slot_high);
        for slot in layout.len() as u32..slot_high {
            maps.delete_backend(&BackendKey {
                frontend_id: id,
                slot,
            })?;
            report.map_writes += 1;
        }
        self.applied.insert(
            *frontend,
            Applied {
                id,
                kind: spec.kind,
                affinity_timeout: spec.affinity_timeout,
                slot_high: layout.len() as u32,
                backends: layout,
                dirty: false,
            },
        );
        if is_new {
            report.added += 1;
        } else {
            report.updated += 1;
        }
        Ok(())
    }
}

/// An in-memory [`DataplaneWriter`] for tests and model checks.
pub mod memory {
    use std::collections::BTreeMap;

    use mcs_common::{BackendKey, BackendValue, MaglevTable, NameValue, ServiceKey, ServiceValue};

    use super::{DataplaneWriter, WriteError};

    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct MemoryMaps {
        pub services: BTreeMap<ServiceKey, ServiceValue>,
        pub backends: BTreeMap<BackendKey, BackendValue>,
        pub names: BTreeMap<u32, String>,
        pub clusters: BTreeMap<u32, String>,
        pub maglev: BTreeMap<u32, Vec<u16>>,
        pub stats_resets: Vec<u32>,
        /// Fail every write after this many (fault injection).
        pub fail_after: Option<usize>,
        pub writes: usize,
    }

    impl MemoryMaps {
        fn write(&mut self, map: &'static str, op: &'static str) -> Result<(), WriteError> {
            self.writes += 1;
            match self.fail_after {
                Some(limit) if self.writes > limit => Err(WriteError {
                    map,
                    op,
                    source: "injected failure".into(),
                }),
                _ => Ok(()),
            }
        }
    }

    impl DataplaneWriter for MemoryMaps {
        fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), WriteError> {
            self.write("services", "put")?;
            self.services.insert(*key, *value);
            Ok(())
        }
        fn delete_service(&mut self, key: &ServiceKey) -> Result<(), WriteError> {
            self.write("services", "delete")?;
            self.services.remove(key);
            Ok(())
        }
        fn put_backend(&mut self, key: &BackendKey, value: &BackendValue) -> Result<(), WriteError> {
            self.write("backends", "put")?;
            self.backends.insert(*key, *value);
            Ok(())
        }
        fn delete_backend(&mut self, key: &BackendKey) -> Result<(), WriteError> {
            self.write("backends", "delete")?;
            self.backends.remove(key);
            Ok(())
        }
        fn put_frontend_name(&mut self, id: u32, name: &NameValue) -> Result<(), WriteError> {
            self.write("names", "put")?;
            self.names.insert(id, name.as_str().to_owned());
            Ok(())
        }
        fn delete_frontend_name(&mut self, id: u32) -> Result<(), WriteError> {
            self.write("names", "delete")?;
            self.names.remove(&id);
            Ok(())
        }
        fn reset_frontend_stats(&mut self, id: u32) -> Result<(), WriteError> {
            self.write("stats", "reset")?;
            self.stats_resets.push(id);
            Ok(())
        }
        fn put_cluster_name(&mut self, id: u32, name: &NameValue) -> Result<(), WriteError> {
            self.write("clusters", "put")?;
            if name.len == 0 {
                self.clusters.remove(&id);
            } else {
                self.clusters.insert(id, name.as_str().to_owned());
            }
            Ok(())
        }
        fn put_maglev(&mut self, id: u32, table: &MaglevTable) -> Result<(), WriteError> {
            self.write("maglev", "put")?;
            self.maglev.insert(id, table.slots.to_vec());
            Ok(())
        }
        fn delete_maglev(&mut self, id: u32) -> Result<(), WriteError> {
            self.write("maglev", "delete")?;
            self.maglev.remove(&id);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
