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
//! A cold sync (nothing applied yet, e.g. the agent's first on fresh maps)
//! keeps the same order per frontend but writes a group of entries per map
//! at a time, each group in one batch call (see [`deferred`]), in chunks
//! that flow through three threads: Maglev tables, bookkeeping, writes.
//!
//! Files, one job each:
//! IPv4 frontends go to `MCS_SVC_V2`/`MCS_BACKEND_V2`, IPv6 ones to
//! `MCS_SVC_V6`/`MCS_BACKEND_V6`; both take ids from one pool and share the
//! per-frontend maps (names, counters, the Maglev table array), the
//! cluster ids and the backend counter ids. Each family's service and slot
//! map has its own capacity.
//!
//! * `mod.rs` — the [`Reconciler`]: what is applied, [`Reconciler::apply`]
//!   and [`Reconciler::apply_changed`], the [`ApplyReport`];
//! * `writer.rs` — the [`DataplaneWriter`] trait the maps are reached through;
//! * `layout.rs` — slot layout, Maglev table and service key of a frontend;
//! * `plan.rs` — what one frontend needs written, as a pure function;
//!   `execute.rs` runs plans through the writer and keeps the books;
//! * `ids.rs` — the one id pool behind frontend, counter and cluster ids;
//! * `identity.rs` — maps keyed by backend identity, one per family;
//! * `space.rs` — room in the Maglev table array: a range per table,
//!   released ranges reused after a grace period;
//! * `tables.rs` — where each frontend's table goes (in place, or a new
//!   range the service entry then switches to), and the capacity checks;
//! * `adopt.rs` — the applied state rebuilt from pinned maps after a restart;
//! * `cold.rs` and `deferred.rs` — the batched, pipelined cold sync.
//!
//! Test support behind the `testing` feature (never in the agent binary):
//! `memory.rs`, in-memory maps the logic is tested against without root,
//! and `check.rs`, their consistency checks.

mod adopt;
mod cold;
mod deferred;
mod execute;
mod identity;
mod ids;
mod layout;
mod plan;
mod space;
mod tables;
mod writer;

#[cfg(any(test, feature = "testing"))]
pub mod check;
#[cfg(any(test, feature = "testing"))]
mod checked;
#[cfg(any(test, feature = "testing"))]
pub mod memory;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use mcs_common::{
    MAX_BACKEND_SLOTS, MAX_BACKEND_SLOTS_V6, MAX_BACKENDS, MAX_CLUSTERS, MAX_FRONTENDS,
    MAX_FRONTENDS_V6, MAX_MAGLEV_CHUNKS, MaglevPlace, NameValue,
};
use tracing::instrument;

pub use self::{
    adopt::{AdoptError, PinnedState},
    identity::{Identity, IdentityMap},
    layout::{FamilyServiceKey, Table, maglev_table, service_key, stable_layout},
    space::GRACE as TABLE_GRACE,
    writer::{CapacityError, DataplaneWriter, WriteError, one_by_one},
};
use self::{ids::IdPool, space::TableSpace};
use crate::desired::{Backend, DesiredState, Frontend, FrontendKind, IpFamily};

#[derive(Clone, Debug, PartialEq, Eq)]
struct Applied {
    id: u32,
    kind: FrontendKind,
    affinity_timeout: Option<u32>,
    /// The operator-facing name as written (truncated to the map's size):
    /// a frontend can change owner (conflict resolution) without any other
    /// change, and its name must follow.
    name: String,
    /// Backends in slot order, as written.
    backends: Vec<Backend>,
    /// Slots `0..slot_high` may exist in the map (covers failed updates).
    slot_high: u32,
    /// A write failed midway: rewrite everything next time.
    dirty: bool,
    /// Adopted from pinned maps: weights unknown, rewrite the table once.
    table_stale: bool,
    /// The table the service entry in the map points at.
    table: Option<MaglevPlace>,
    /// A table written at a new place that the service entry does not
    /// point at yet (its write is pending or failed).
    staged: Option<MaglevPlace>,
}

impl Applied {
    /// A new frontend's entry before anything is written: dirty, so a
    /// failed write leaves it to be rewritten whole.
    fn allocated(id: u32, kind: FrontendKind) -> Self {
        Self {
            id,
            kind,
            affinity_timeout: None,
            name: String::new(),
            backends: Vec::new(),
            slot_high: 0,
            dirty: true,
            table_stale: false,
            table: None,
            staged: None,
        }
    }
}

/// How much the maps hold (the agent's map sizes), so that what does not
/// fit is refused by the reconciler with an error naming the flag, before
/// the kernel would refuse it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    /// Frontend ids (entries of the service map and the per-frontend maps).
    pub frontends: u32,
    /// Backend slots over all frontends.
    pub backend_slots: u32,
    /// Backend counter ids.
    pub backends: u32,
    /// Chunks of the Maglev table array.
    pub maglev_chunks: u32,
    /// IPv6 frontends (entries of `MCS_SVC_V6`; their ids are within
    /// `frontends`).
    pub frontends_v6: u32,
    /// Backend slots of the IPv6 frontends (`MCS_BACKEND_V6`).
    pub backend_slots_v6: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            frontends: MAX_FRONTENDS,
            backend_slots: MAX_BACKEND_SLOTS,
            backends: MAX_BACKENDS,
            maglev_chunks: MAX_MAGLEV_CHUNKS,
            frontends_v6: MAX_FRONTENDS_V6,
            backend_slots_v6: MAX_BACKEND_SLOTS_V6,
        }
    }
}

/// A backend that stopped serving a frontend (removed, not ready any more,
/// its cluster gone, the frontend deleted or left without endpoints).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Retired {
    pub frontend_id: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: crate::model::Protocol,
}

/// What one reconcile did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    pub map_writes: usize,
    pub errors: Vec<(Frontend, WriteError)>,
    /// Backends whose flows may now be stale (see `conntrack::Janitor`).
    pub retired: Vec<Retired>,
}

impl ApplyReport {
    pub fn changed(&self) -> bool {
        self.added + self.updated + self.removed > 0
    }
}

#[derive(Debug)]
pub struct Reconciler {
    applied: BTreeMap<Frontend, Applied>,
    frontend_pool: IdPool,
    /// Room in the Maglev table array.
    table_space: TableSpace,
    /// Backend slots that may exist in each family's slot map (the sum of
    /// every frontend's and orphan's `slot_high`), against `slot_capacity`;
    /// indexed by [`family_index`].
    slots_in_use: [u64; 2],
    slot_capacity: [u32; 2],
    /// IPv6 frontends applied, against the IPv6 service map's capacity (their
    /// ids come from `frontend_pool` like the IPv4 ones').
    frontends_v6: u32,
    frontend_capacity_v6: u32,
    clusters: BTreeMap<String, u32>,
    cluster_pool: IdPool,
    /// Per-backend counter ids by backend identity.
    backend_ids: IdentityMap<u32>,
    /// Below the capacity of the per-backend counters (`--backends-max`).
    backend_pool: IdPool,
    /// Frontend ids found on adoption with slots or a name but no service
    /// entry (an agent died mid-apply), with how many slots to delete per
    /// family ([`family_index`]). Held out of the free list until the first
    /// apply has cleaned them.
    orphans: BTreeMap<u32, [u32; 2]>,
    /// How many applied slots reference each backend identity / cluster:
    /// kept in step with `applied`, so releasing what nobody references
    /// costs O(changes), not a scan of every frontend.
    backend_refs: IdentityMap<u32>,
    cluster_refs: BTreeMap<String, u32>,
    /// Backend identities and clusters that may have lost their last
    /// reference: checked (in order) at the end of every apply.
    unreferenced_backends: BTreeSet<Identity>,
    unreferenced_clusters: BTreeSet<String>,
    /// The stats maps were created empty by this agent: an id never handed
    /// out before (not from a free list) has zero counters, and its first
    /// use needs no reset write.
    fresh_frontend_stats: bool,
    fresh_backend_stats: bool,
    /// Some frontend may be dirty (a write failed, or adoption found it
    /// incomplete): the next targeted apply looks for them all. Writes
    /// only fail loudly, so without failures nothing needs the O(N) scan.
    may_have_dirty: bool,
}

/// Frontend under which [`ApplyReport::errors`] lists a failed cleanup of
/// an orphaned frontend id (0.0.0.0 is never a ClusterSetIP).
pub const ORPHAN_FRONTEND: Frontend = Frontend {
    addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    port: 0,
    protocol: crate::model::Protocol::Tcp,
};

impl Default for Reconciler {
    fn default() -> Self {
        Self::new()
    }
}

impl Reconciler {
    pub fn new() -> Self {
        Self::with_capacities(Capacities::default())
    }

    /// A reconciler for maps of these sizes.
    pub fn with_capacities(capacities: Capacities) -> Self {
        Self {
            applied: BTreeMap::new(),
            frontend_pool: IdPool::new(0..capacities.frontends),
            table_space: TableSpace::new(capacities.maglev_chunks),
            slots_in_use: [0; 2],
            slot_capacity: [capacities.backend_slots, capacities.backend_slots_v6],
            frontends_v6: 0,
            frontend_capacity_v6: capacities.frontends_v6,
            clusters: BTreeMap::new(),
            // Cluster id 0 means "unknown".
            cluster_pool: IdPool::new(1..MAX_CLUSTERS),
            backend_ids: IdentityMap::default(),
            backend_pool: IdPool::new(0..capacities.backends),
            orphans: BTreeMap::new(),
            backend_refs: IdentityMap::default(),
            cluster_refs: BTreeMap::new(),
            unreferenced_backends: BTreeSet::new(),
            unreferenced_clusters: BTreeSet::new(),
            fresh_frontend_stats: false,
            fresh_backend_stats: false,
            may_have_dirty: false,
        }
    }

    /// A reconciler for a backend counter map of `max_backends` entries.
    pub fn with_max_backends(mut self, max_backends: u32) -> Self {
        self.backend_pool.set_capacity(max_backends);
        self
    }

    /// Chunks of the Maglev table array in use (not released).
    pub fn table_chunks_in_use(&self) -> u64 {
        self.table_space.used()
    }

    /// A reconciler for stats maps this agent has just created (all
    /// counters zero): an id's first use skips the reset write, which is
    /// most writes of a cold sync. Reused ids are reset as always; after
    /// adoption every id is (stale counters may exist).
    pub fn with_fresh_stats(mut self, frontend_stats: bool, backend_stats: bool) -> Self {
        self.fresh_frontend_stats = frontend_stats;
        self.fresh_backend_stats = backend_stats;
        self
    }

    /// Records `applied` for `frontend`, keeping the reference counts.
    fn set_applied(&mut self, frontend: Frontend, applied: Applied) {
        let family = family_index(frontend.family());
        self.add_refs(&applied.backends);
        self.slots_in_use[family] += u64::from(applied.slot_high);
        if let Some(old) = self.applied.insert(frontend, applied) {
            self.drop_refs(&old.backends);
            self.slots_in_use[family] -= u64::from(old.slot_high);
        } else if frontend.family() == IpFamily::V6 {
            self.frontends_v6 += 1;
        }
    }

    fn take_applied(&mut self, frontend: &Frontend) -> Option<Applied> {
        let old = self.applied.remove(frontend)?;
        self.drop_refs(&old.backends);
        self.slots_in_use[family_index(frontend.family())] -= u64::from(old.slot_high);
        if frontend.family() == IpFamily::V6 {
            self.frontends_v6 -= 1;
        }
        Some(old)
    }

    fn add_refs(&mut self, backends: &[Backend]) {
        for backend in backends {
            *self
                .backend_refs
                .entry_or_default((backend.addr, backend.port)) += 1;
            if let Some(count) = self.cluster_refs.get_mut(&*backend.cluster) {
                *count += 1;
            } else {
                self.cluster_refs.insert(backend.cluster.to_string(), 1);
            }
        }
    }

    fn drop_refs(&mut self, backends: &[Backend]) {
        for backend in backends {
            let identity = (backend.addr, backend.port);
            if let Some(count) = self.backend_refs.get_mut(&identity) {
                *count -= 1;
                if *count == 0 {
                    self.backend_refs.remove(&identity);
                    self.unreferenced_backends.insert(identity);
                }
            }
            if let Some(count) = self.cluster_refs.get_mut(&*backend.cluster) {
                *count -= 1;
                if *count == 0 {
                    self.cluster_refs.remove(&*backend.cluster);
                    self.unreferenced_clusters
                        .insert(backend.cluster.to_string());
                }
            }
        }
    }

    /// Number of frontends currently programmed.
    pub fn frontend_count(&self) -> usize {
        self.applied.len()
    }

    /// Brings the maps from the last applied state to `desired`.
    #[instrument(skip_all, fields(frontends = desired.frontends.len()))]
    pub fn apply(
        &mut self,
        desired: &DesiredState,
        maps: &mut impl DataplaneWriter,
    ) -> ApplyReport {
        if self.is_cold() {
            return self.apply_cold(desired, desired.frontends.keys(), maps);
        }
        let removed: Vec<Frontend> = self
            .applied
            .keys()
            .filter(|frontend| !desired.frontends.contains_key(frontend))
            .copied()
            .collect();
        self.apply_inner(desired, removed, desired.frontends.keys(), maps)
    }

    /// Like [`Reconciler::apply`], but looks only at `frontends` (the ones
    /// whose desired spec may have changed, see
    /// [`crate::desired::Incremental::update`]): O(their size), not
    /// O(all frontends). Frontends left dirty by a failed write are
    /// retried too.
    #[instrument(skip_all, fields(frontends = frontends.len()))]
    pub fn apply_changed(
        &mut self,
        desired: &DesiredState,
        frontends: &BTreeSet<Frontend>,
        maps: &mut impl DataplaneWriter,
    ) -> ApplyReport {
        if self.is_cold() {
            return self.apply_cold(desired, frontends.iter(), maps);
        }
        let dirty: Vec<Frontend> = if self.may_have_dirty {
            self.applied
                .iter()
                .filter(|(frontend, applied)| applied.dirty && !frontends.contains(frontend))
                .map(|(frontend, _)| *frontend)
                .collect()
        } else {
            Vec::new()
        };
        let wanted: BTreeSet<&Frontend> = frontends.iter().chain(&dirty).collect();
        let removed: Vec<Frontend> = wanted
            .iter()
            .filter(|frontend| {
                !desired.frontends.contains_key(frontend) && self.applied.contains_key(frontend)
            })
            .map(|frontend| **frontend)
            .collect();
        let upserts = wanted
            .into_iter()
            .filter(|frontend| desired.frontends.contains_key(frontend));
        self.apply_inner(desired, removed, upserts, maps)
    }

    /// Nothing applied and nothing adopted to clean up: every frontend an
    /// apply writes is new.
    fn is_cold(&self) -> bool {
        self.applied.is_empty() && self.orphans.is_empty()
    }

    fn apply_inner<'a>(
        &mut self,
        desired: &DesiredState,
        removed: Vec<Frontend>,
        upserts: impl Iterator<Item = &'a Frontend>,
        maps: &mut impl DataplaneWriter,
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        self.remove_orphans(maps, &mut report);

        for frontend in removed {
            if let Err(error) = self.remove(&frontend, maps, &mut report) {
                report.errors.push((frontend, error));
            }
        }

        for frontend in upserts {
            let Some(spec) = desired.frontends.get(frontend) else {
                continue;
            };
            if let Err(error) = self.upsert(frontend, spec, None, maps, &mut report) {
                report.errors.push((*frontend, error));
            }
        }
        self.finish_apply(maps, &mut report);
        report
    }

    /// Releases cluster and backend ids nobody references any more.
    fn finish_apply(&mut self, maps: &mut impl DataplaneWriter, report: &mut ApplyReport) {
        // Forget cluster ids nobody references any more.
        for name in std::mem::take(&mut self.unreferenced_clusters) {
            if self.cluster_refs.contains_key(&name) {
                continue;
            }
            let Some(id) = self.clusters.get(&name).copied() else {
                continue;
            };
            if maps.put_cluster_name(id, &NameValue::EMPTY).is_ok() {
                report.map_writes += 1;
                self.clusters.remove(&name);
                self.cluster_pool.release(id);
            } else {
                self.unreferenced_clusters.insert(name); // retried next time
            }
        }
        // Release backend ids nobody references any more.
        for identity in std::mem::take(&mut self.unreferenced_backends) {
            if self.backend_refs.contains_key(&identity) {
                continue;
            }
            if let Some(id) = self.backend_ids.remove(&identity) {
                self.backend_pool.release(id);
            }
        }
        // Every dirty frontend was retried above (a full apply visits all,
        // a targeted one all when this was set): only new failures remain.
        self.may_have_dirty = !report.errors.is_empty();
    }
}

/// Index of a family in the per-family arrays (IPv4 0, IPv6 1).
const fn family_index(family: IpFamily) -> usize {
    match family {
        IpFamily::V4 => 0,
        IpFamily::V6 => 1,
    }
}

#[cfg(test)]
mod family_tests;
#[cfg(test)]
mod tests;
