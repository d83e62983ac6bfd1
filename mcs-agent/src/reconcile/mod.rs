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
//! The maps are reached through [`DataplaneWriter`], so the logic is tested
//! against [`memory::MemoryMaps`] without root.

mod deferred;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use mcs_common::{
    BACKEND_F_READY, BACKEND_F_TERMINATING, BackendKey, BackendValue, MAGLEV_TABLE_SIZE,
    MAX_BACKENDS, MAX_CLUSTERS, MAX_FRONTENDS, MaglevTable, NameValue, SVC_F_AFFINITY, SVC_F_NONE,
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

/// Write access to the dataplane maps. `Send`: a cold sync writes from a
/// helper thread.
pub trait DataplaneWriter: Send {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), WriteError>;
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), WriteError>;
    fn put_backend(&mut self, key: &BackendKey, value: &BackendValue) -> Result<(), WriteError>;
    fn delete_backend(&mut self, key: &BackendKey) -> Result<(), WriteError>;
    fn put_frontend_name(&mut self, frontend_id: u32, name: &NameValue) -> Result<(), WriteError>;
    fn delete_frontend_name(&mut self, frontend_id: u32) -> Result<(), WriteError>;
    /// Zeroes a frontend's counters (an id is being reused).
    fn reset_frontend_stats(&mut self, frontend_id: u32) -> Result<(), WriteError>;
    /// Zeroes a backend's counters (an id is being reused).
    fn reset_backend_stats(&mut self, backend_id: u32) -> Result<(), WriteError>;
    fn put_cluster_name(&mut self, cluster_id: u32, name: &NameValue) -> Result<(), WriteError>;
    /// Replaces a frontend's Maglev table in one map update.
    fn put_maglev(&mut self, frontend_id: u32, table: &MaglevTable) -> Result<(), WriteError>;
    fn delete_maglev(&mut self, frontend_id: u32) -> Result<(), WriteError>;

    // Many puts at once (a cold sync). Each writes `keys[i] → values[i]`
    // in order and returns the positions that failed with their errors;
    // every other entry is written. The defaults write one by one.

    fn put_services(
        &mut self,
        keys: &[ServiceKey],
        values: &[ServiceValue],
    ) -> Vec<(usize, WriteError)> {
        one_by_one(keys, values, |key, value| self.put_service(key, value))
    }
    fn put_backends(
        &mut self,
        keys: &[BackendKey],
        values: &[BackendValue],
    ) -> Vec<(usize, WriteError)> {
        one_by_one(keys, values, |key, value| self.put_backend(key, value))
    }
    fn put_frontend_names(
        &mut self,
        frontend_ids: &[u32],
        names: &[NameValue],
    ) -> Vec<(usize, WriteError)> {
        one_by_one(frontend_ids, names, |id, name| {
            self.put_frontend_name(*id, name)
        })
    }
    fn put_maglevs(
        &mut self,
        frontend_ids: &[u32],
        tables: &[MaglevTable],
    ) -> Vec<(usize, WriteError)> {
        one_by_one(frontend_ids, tables, |id, table| {
            self.put_maglev(*id, table)
        })
    }
}

/// The default batch put: `put` for each pair, failures by position.
pub fn one_by_one<K, V>(
    keys: &[K],
    values: &[V],
    mut put: impl FnMut(&K, &V) -> Result<(), WriteError>,
) -> Vec<(usize, WriteError)> {
    keys.iter()
        .zip(values)
        .enumerate()
        .filter_map(|(index, (key, value))| put(key, value).err().map(|error| (index, error)))
        .collect()
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
}

/// What pinned maps hold, read back for adoption after a restart.
#[derive(Clone, Debug, Default)]
pub struct PinnedState {
    pub services: Vec<(ServiceKey, ServiceValue)>,
    pub backends: BTreeMap<BackendKey, BackendValue>,
    pub frontend_names: BTreeMap<u32, String>,
    pub clusters: BTreeMap<u32, String>,
}

/// Adoption found something it cannot make sense of.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("service entry {0:?} has an unknown protocol")]
    UnknownProtocol(ServiceKey),
    #[error("frontend id {0} is used twice or out of range")]
    BadFrontendId(u32),
}

/// A backend that stopped serving a frontend (removed, not ready any more,
/// its cluster gone, the frontend deleted or left without endpoints).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Retired {
    pub frontend_id: u32,
    pub addr: Ipv4Addr,
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
    next_id: u32,
    free_ids: Vec<u32>,
    clusters: BTreeMap<String, u32>,
    backend_ids: BTreeMap<(Ipv4Addr, u16), u32>,
    next_backend_id: u32,
    free_backend_ids: Vec<u32>,
    /// Frontend ids found on adoption with slots or a name but no service
    /// entry (an agent died mid-apply), with how many slots to delete. Held
    /// out of the free list until the first apply has cleaned them.
    orphans: BTreeMap<u32, u32>,
    /// How many applied slots reference each backend identity / cluster:
    /// kept in step with `applied`, so releasing what nobody references
    /// costs O(changes), not a scan of every frontend.
    backend_refs: BTreeMap<(Ipv4Addr, u16), u32>,
    cluster_refs: BTreeMap<String, u32>,
    /// Backend identities and clusters that may have lost their last
    /// reference: checked (in order) at the end of every apply.
    unreferenced_backends: BTreeSet<(Ipv4Addr, u16)>,
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
    /// Capacity of the per-backend counters (`--backends-max`): backend ids
    /// are handed out below it.
    max_backends: u32,
}

/// Frontend under which [`ApplyReport::errors`] lists a failed cleanup of
/// an orphaned frontend id (0.0.0.0 is never a ClusterSetIP).
pub const ORPHAN_FRONTEND: Frontend = Frontend {
    addr: Ipv4Addr::UNSPECIFIED,
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
        Self {
            applied: BTreeMap::new(),
            next_id: 0,
            free_ids: Vec::new(),
            clusters: BTreeMap::new(),
            backend_ids: BTreeMap::new(),
            next_backend_id: 0,
            free_backend_ids: Vec::new(),
            orphans: BTreeMap::new(),
            backend_refs: BTreeMap::new(),
            cluster_refs: BTreeMap::new(),
            unreferenced_backends: BTreeSet::new(),
            unreferenced_clusters: BTreeSet::new(),
            fresh_frontend_stats: false,
            fresh_backend_stats: false,
            may_have_dirty: false,
            max_backends: MAX_BACKENDS,
        }
    }

    /// A reconciler for a backend counter map of `max_backends` entries.
    pub fn with_max_backends(mut self, max_backends: u32) -> Self {
        self.max_backends = max_backends;
        self
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
        self.add_refs(&applied.backends);
        if let Some(old) = self.applied.insert(frontend, applied) {
            self.drop_refs(&old.backends);
        }
    }

    fn take_applied(&mut self, frontend: &Frontend) -> Option<Applied> {
        let old = self.applied.remove(frontend)?;
        self.drop_refs(&old.backends);
        Some(old)
    }

    fn add_refs(&mut self, backends: &[Backend]) {
        for backend in backends {
            *self
                .backend_refs
                .entry((backend.addr, backend.port))
                .or_default() += 1;
            if let Some(count) = self.cluster_refs.get_mut(&backend.cluster) {
                *count += 1;
            } else {
                self.cluster_refs.insert(backend.cluster.clone(), 1);
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
            if let Some(count) = self.cluster_refs.get_mut(&backend.cluster) {
                *count -= 1;
                if *count == 0 {
                    self.cluster_refs.remove(&backend.cluster);
                    self.unreferenced_clusters.insert(backend.cluster.clone());
                }
            }
        }
    }

    /// Rebuilds the applied state from pinned maps, so the first reconcile
    /// after a restart is a diff against what the kernel serves, never a
    /// flush. Stale slots beyond a frontend's count are remembered and
    /// removed by that reconcile.
    pub fn adopt(state: &PinnedState) -> Result<Self, AdoptError> {
        let mut reconciler = Self::new();
        let mut used_ids = BTreeSet::new();
        let mut slots_of: BTreeMap<u32, Vec<(u32, BackendValue)>> = BTreeMap::new();
        for (key, value) in &state.backends {
            slots_of
                .entry(key.frontend_id)
                .or_default()
                .push((key.slot, *value));
        }
        let cluster_name = |id: u32| -> String {
            if id == 0 {
                String::new()
            } else {
                state.clusters.get(&id).cloned().unwrap_or_default()
            }
        };
        for (key, value) in &state.services {
            let protocol = crate::model::Protocol::from_number(key.proto)
                .ok_or(AdoptError::UnknownProtocol(*key))?;
            if value.frontend_id >= MAX_FRONTENDS || !used_ids.insert(value.frontend_id) {
                return Err(AdoptError::BadFrontendId(value.frontend_id));
            }
            let frontend = Frontend {
                addr: Ipv4Addr::from(key.addr.to_ne_bytes()),
                port: u16::from_be(key.port),
                protocol,
            };
            let slots = slots_of.remove(&value.frontend_id).unwrap_or_default();
            let slot_high = slots.iter().map(|(slot, _)| slot + 1).max().unwrap_or(0);
            let mut backends = Vec::with_capacity(value.backend_count as usize);
            let mut complete = true;
            for wanted in 0..value.backend_count {
                let Some((_, backend)) = slots.iter().find(|(slot, _)| *slot == wanted) else {
                    complete = false;
                    break;
                };
                let addr = Ipv4Addr::from(backend.addr.to_ne_bytes());
                let port = u16::from_be(backend.port);
                reconciler
                    .backend_ids
                    .insert((addr, port), backend.backend_id);
                backends.push(Backend {
                    addr,
                    port,
                    cluster: cluster_name(backend.cluster_id),
                    weight: 1,
                    terminating: backend.flags & BACKEND_F_TERMINATING != 0,
                });
            }
            let kind = if value.flags & SVC_F_VIP_MARKER != 0 {
                FrontendKind::VipMarker
            } else {
                FrontendKind::Service
            };
            reconciler.set_applied(
                frontend,
                Applied {
                    id: value.frontend_id,
                    kind,
                    affinity_timeout: (value.flags & SVC_F_AFFINITY != 0)
                        .then_some(value.affinity_timeout_s),
                    name: state
                        .frontend_names
                        .get(&value.frontend_id)
                        .cloned()
                        .unwrap_or_default(),
                    backends,
                    slot_high: slot_high.max(value.backend_count),
                    // A frontend with a hole in its slots is rewritten whole.
                    dirty: !complete,
                    table_stale: true,
                },
            );
        }
        // What no service owns was left by an agent that died mid-apply
        // (slots and name are written before a new service entry and
        // deleted after a removed one, and a table never outlives its
        // name): removed by the first apply, never adopted or leaked.
        for (id, slots) in &slots_of {
            let high = slots.iter().map(|(slot, _)| slot + 1).max().unwrap_or(0);
            reconciler.orphans.insert(*id, high);
        }
        for id in state.frontend_names.keys() {
            if !used_ids.contains(id) {
                reconciler.orphans.entry(*id).or_insert(0);
            }
        }
        let in_range = |id: &&u32| **id < MAX_FRONTENDS;
        reconciler.next_id = used_ids
            .iter()
            .chain(reconciler.orphans.keys().filter(in_range))
            .max()
            .map_or(0, |id| id + 1);
        reconciler.free_ids = (0..reconciler.next_id)
            .filter(|id| !used_ids.contains(id) && !reconciler.orphans.contains_key(id))
            .rev()
            .collect();
        let used_backend_ids: BTreeSet<u32> = reconciler.backend_ids.values().copied().collect();
        reconciler.next_backend_id = used_backend_ids.iter().next_back().map_or(0, |id| id + 1);
        reconciler.free_backend_ids = (0..reconciler.next_backend_id)
            .filter(|id| !used_backend_ids.contains(id))
            .rev()
            .collect();
        for (id, name) in &state.clusters {
            if !name.is_empty() {
                reconciler.clusters.insert(name.clone(), *id);
            }
        }
        reconciler.may_have_dirty = reconciler.applied.values().any(|a| a.dirty);
        // What no adopted slot references is released by the first apply.
        reconciler.unreferenced_backends = reconciler.backend_ids.keys().copied().collect();
        reconciler.unreferenced_clusters = reconciler.clusters.keys().cloned().collect();
        Ok(reconciler)
    }

    /// Per-backend counter index of `backend`, allocated on first use.
    fn backend_id(
        &mut self,
        backend: &Backend,
        maps: &mut impl DataplaneWriter,
        report: &mut ApplyReport,
    ) -> Result<u32, WriteError> {
        let identity = (backend.addr, backend.port);
        if let Some(id) = self.backend_ids.get(&identity) {
            return Ok(*id);
        }
        let (id, reused) = match self.free_backend_ids.pop() {
            Some(id) => (id, true),
            None if self.next_backend_id < self.max_backends => {
                self.next_backend_id += 1;
                (self.next_backend_id - 1, false)
            }
            None => {
                return Err(WriteError {
                    map: mcs_common::names::BACKEND_STATS,
                    op: "allocate backend id",
                    source: format!(
                        "all {} backend ids in use (raise --backends-max)",
                        self.max_backends
                    )
                    .into(),
                });
            }
        };
        if reused || !self.fresh_backend_stats {
            if let Err(error) = maps.reset_backend_stats(id) {
                self.free_backend_ids.push(id);
                return Err(error);
            }
            report.map_writes += 1;
        }
        self.backend_ids.insert(identity, id);
        // Released again at the end of the apply unless a slot takes it.
        self.unreferenced_backends.insert(identity);
        Ok(id)
    }

    /// Number of frontends currently programmed.
    pub fn frontend_count(&self) -> usize {
        self.applied.len()
    }

    /// A free frontend id, and whether it was used before.
    fn allocate_id(&mut self) -> Option<(u32, bool)> {
        if let Some(id) = self.free_ids.pop() {
            return Some((id, true));
        }
        (self.next_id < MAX_FRONTENDS).then(|| {
            self.next_id += 1;
            (self.next_id - 1, false)
        })
    }

    /// Cluster id for `name` (0 = unknown or table full).
    fn cluster_id(
        &mut self,
        name: &str,
        maps: &mut impl DataplaneWriter,
        report: &mut ApplyReport,
    ) -> u32 {
        if name.is_empty() {
            return 0;
        }
        if let Some(id) = self.clusters.get(name) {
            return *id;
        }
        let used: BTreeSet<u32> = self.clusters.values().copied().collect();
        let Some(id) = (1..MAX_CLUSTERS).find(|id| !used.contains(id)) else {
            warn!(
                cluster = name,
                "cluster table full; backends shown without cluster name"
            );
            return 0;
        };
        match maps.put_cluster_name(id, &NameValue::new(name)) {
            Ok(()) => {
                report.map_writes += 1;
                self.clusters.insert(name.to_owned(), id);
                self.unreferenced_clusters.insert(name.to_owned());
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

    /// The first apply into maps holding no frontend (a cold sync): every
    /// frontend is new and its id unused, so puts are deferred and written
    /// in batches (see [`deferred`]), a chunk of frontends at a time to
    /// bound the memory held. The Maglev tables of the next chunks are
    /// built on another thread meanwhile: a table takes about as long to
    /// build as a chunk's entries take to write.
    fn apply_cold<'a, W: DataplaneWriter + Send>(
        &mut self,
        desired: &'a DesiredState,
        upserts: impl Iterator<Item = &'a Frontend>,
        maps: &mut W,
    ) -> ApplyReport {
        // Frontends per batch: large enough to amortise a batch call,
        // small enough that the tables in flight stay a few MiB.
        const CHUNK: usize = 1024;
        let mut report = ApplyReport::default();
        let frontends: Vec<(&Frontend, &FrontendSpec)> = upserts
            .filter_map(|frontend| Some((frontend, desired.frontends.get(frontend)?)))
            .collect();
        let chunks: Vec<&[(&Frontend, &FrontendSpec)]> = frontends.chunks(CHUNK).collect();
        let mut by_id: HashMap<u32, Frontend> = HashMap::with_capacity(frontends.len());
        let shared = deferred::Shared::new(maps);
        // Three stages, one chunk apart: Maglev tables are built on one
        // thread, this thread does the bookkeeping and collects the puts,
        // another writes them (taking the maps' lock per chunk).
        let failed = std::thread::scope(|scope| {
            let (built, tables_of) = std::sync::mpsc::sync_channel(1);
            let builder_chunks = &chunks;
            scope.spawn(move || {
                for chunk in builder_chunks {
                    let tables: Vec<Box<MaglevTable>> = chunk
                        .iter()
                        .filter(|(_, spec)| !spec.backends.is_empty())
                        .map(|(_, spec)| maglev_table(&spec.backends))
                        .collect();
                    if built.send(tables).is_err() {
                        return;
                    }
                }
            });
            let (to_writer, puts_of) = std::sync::mpsc::sync_channel::<deferred::Puts>(1);
            let shared = &shared;
            let writer = scope.spawn(move || {
                let mut failed = BTreeMap::new();
                for puts in puts_of {
                    for (id, error) in puts.flush(&mut **shared.lock()) {
                        failed.entry(id).or_insert(error);
                    }
                }
                failed
            });
            for chunk in &chunks {
                // Built from `spec.backends` in order: what a new
                // frontend's full rewrite lays out.
                let mut tables = tables_of.recv().unwrap_or_default().into_iter();
                let mut batch = deferred::Deferred::new(shared);
                for (frontend, spec) in chunk.iter() {
                    let table = if spec.backends.is_empty() {
                        None
                    } else {
                        tables.next()
                    };
                    match self.upsert(frontend, spec, table, &mut batch, &mut report) {
                        Ok(()) => {
                            if let Some(applied) = self.applied.get(frontend) {
                                by_id.insert(applied.id, **frontend);
                            }
                        }
                        Err(error) => report.errors.push((**frontend, error)),
                    }
                }
                if to_writer.send(batch.into_puts()).is_err() {
                    break; // the writer panicked; its join below re-raises it
                }
            }
            drop(to_writer);
            writer
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        for (id, error) in failed {
            let Some(frontend) = by_id.get(&id) else {
                continue;
            };
            if let Some(applied) = self.applied.get_mut(frontend) {
                applied.dirty = true; // rewritten whole next time
            }
            report.added = report.added.saturating_sub(1);
            report.errors.push((*frontend, error));
        }
        self.finish_apply(shared.into_inner(), &mut report);
        report
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
                self.free_backend_ids.push(id);
            }
        }
        // Every dirty frontend was retried above (a full apply visits all,
        // a targeted one all when this was set): only new failures remain.
        self.may_have_dirty = !report.errors.is_empty();
    }

    /// Deletes what adoption found without a service entry; an id becomes
    /// free only once all of it is gone.
    fn remove_orphans(&mut self, maps: &mut impl DataplaneWriter, report: &mut ApplyReport) {
        let orphans: Vec<(u32, u32)> = self.orphans.iter().map(|(id, high)| (*id, *high)).collect();
        for (id, slot_high) in orphans {
            let result = (|| {
                maps.delete_maglev(id)?;
                report.map_writes += 1;
                for slot in 0..slot_high {
                    maps.delete_backend(&BackendKey {
                        frontend_id: id,
                        slot,
                    })?;
                    report.map_writes += 1;
                }
                maps.delete_frontend_name(id)?;
                report.map_writes += 1;
                Ok(())
            })();
            match result {
                Ok(()) => {
                    self.orphans.remove(&id);
                    if id < MAX_FRONTENDS {
                        self.free_ids.push(id);
                    }
                }
                Err(error) => report.errors.push((ORPHAN_FRONTEND, error)),
            }
        }
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
        if let Some(applied) = self.take_applied(frontend) {
            report
                .retired
                .extend(applied.backends.iter().map(|b| Retired {
                    frontend_id: id,
                    addr: b.addr,
                    port: b.port,
                    protocol: frontend.protocol,
                }));
        }
        self.free_ids.push(id);
        report.removed += 1;
        Ok(())
    }

    /// `prebuilt`: the Maglev table of `spec.backends` in their given
    /// order, if the caller built it already (used when all is rewritten).
    fn upsert(
        &mut self,
        frontend: &Frontend,
        spec: &FrontendSpec,
        prebuilt: Option<Box<MaglevTable>>,
        maps: &mut impl DataplaneWriter,
        report: &mut ApplyReport,
    ) -> Result<(), WriteError> {
        let name_value = NameValue::new(&spec.name);
        let name = name_value.as_str().to_owned();
        let (is_new, reset_stats) = match self.applied.get(frontend) {
            Some(existing) => {
                if !existing.dirty
                    && !existing.table_stale
                    && existing.kind == spec.kind
                    && existing.affinity_timeout == spec.affinity_timeout
                    && existing.name == name
                    && stable_layout(&existing.backends, &spec.backends) == existing.backends
                {
                    return Ok(()); // unchanged: not a single write
                }
                (false, false)
            }
            None => {
                let Some((id, reused)) = self.allocate_id() else {
                    return Err(WriteError {
                        map: mcs_common::names::SERVICES,
                        op: "allocate frontend id",
                        source: format!("all {MAX_FRONTENDS} frontend ids in use").into(),
                    });
                };
                // Recorded before any write, so a failure below leaves the
                // id owned (and retried as dirty), never leaked.
                self.set_applied(
                    *frontend,
                    Applied {
                        id,
                        kind: spec.kind,
                        affinity_timeout: None,
                        name: String::new(),
                        backends: Vec::new(),
                        slot_high: 0,
                        dirty: true,
                        table_stale: false,
                    },
                );
                (true, reused || !self.fresh_frontend_stats)
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

        if reset_stats {
            maps.reset_frontend_stats(id)?;
            report.map_writes += 1;
        }
        if rewrite_all || known.name != name {
            maps.put_frontend_name(id, &name_value)?;
            report.map_writes += 1;
        }
        // 1. Slots (new and changed ones; the old table still points only
        //    at slots that exist).
        for (slot, backend) in layout.iter().enumerate() {
            if !rewrite_all && known.backends.get(slot) == Some(backend) {
                continue;
            }
            let cluster_id = self.cluster_id(&backend.cluster, maps, report);
            let backend_id = self.backend_id(backend, maps, report)?;
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
                backend_id,
                _pad2: 0,
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
        let table_changed =
            rewrite_all || known.table_stale || members(&known.backends) != members(&layout);
        if table_changed && !layout.is_empty() {
            let table = match prebuilt {
                // A full rewrite lays the backends out in spec order.
                Some(table) if rewrite_all => table,
                _ => maglev_table(&layout),
            };
            maps.put_maglev(id, &table)?;
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
        // (A new frontend's id has no table: ids are freed only after
        // their table is deleted.)
        if layout.is_empty() && ((rewrite_all && !is_new) || !known.backends.is_empty()) {
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
        let kept: BTreeSet<(Ipv4Addr, u16)> = layout.iter().map(|b| (b.addr, b.port)).collect();
        report.retired.extend(
            known
                .backends
                .iter()
                .filter(|b| !kept.contains(&(b.addr, b.port)))
                .map(|b| Retired {
                    frontend_id: id,
                    addr: b.addr,
                    port: b.port,
                    protocol: frontend.protocol,
                }),
        );
        self.set_applied(
            *frontend,
            Applied {
                id,
                kind: spec.kind,
                affinity_timeout: spec.affinity_timeout,
                name,
                slot_high: layout.len() as u32,
                backends: layout,
                dirty: false,
                table_stale: false,
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
        pub backend_stats_resets: Vec<u32>,
        /// Fail every write after this many (fault injection).
        pub fail_after: Option<usize>,
        pub writes: usize,
    }

    impl MemoryMaps {
        /// The state adoption would read back from these maps.
        pub fn pinned_state(&self) -> super::PinnedState {
            super::PinnedState {
                services: self.services.iter().map(|(k, v)| (*k, *v)).collect(),
                backends: self.backends.clone(),
                frontend_names: self.names.clone(),
                clusters: self.clusters.clone(),
            }
        }

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
        fn put_service(
            &mut self,
            key: &ServiceKey,
            value: &ServiceValue,
        ) -> Result<(), WriteError> {
            self.write("services", "put")?;
            self.services.insert(*key, *value);
            Ok(())
        }
        fn delete_service(&mut self, key: &ServiceKey) -> Result<(), WriteError> {
            self.write("services", "delete")?;
            self.services.remove(key);
            Ok(())
        }
        fn put_backend(
            &mut self,
            key: &BackendKey,
            value: &BackendValue,
        ) -> Result<(), WriteError> {
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
        fn reset_backend_stats(&mut self, id: u32) -> Result<(), WriteError> {
            self.write("backend_stats", "reset")?;
            self.backend_stats_resets.push(id);
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

pub mod check;

#[cfg(test)]
mod tests;
