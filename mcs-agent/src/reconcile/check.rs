//! Consistency checks of [`MemoryMaps`] and of the reconciler's own id
//! tables, shared by the churn model check, the hostile-input corpus and the
//! fuzz targets (all outside this crate's unit tests, hence public; behind
//! the `testing` feature, never in the agent binary).
//!
//! Two levels:
//! * [`check_serving`]: what the datapath relies on at every instant — each
//!   service's slots `0..count` exist, its Maglev table (read where its
//!   service entry says, as the datapath reads it) has a size that suits
//!   its backend count, and every entry names an existing slot;
//! * [`render`]: the maps read back as frontends → backends (cluster names,
//!   affinity, Maglev tables resolved to backend identities, names), failing
//!   on anything left behind (slots, tables, names, clusters nobody uses).
//!
//! Frontend and backend ids differ between two reconcilers that reach the
//! same state by different paths, so everything here is keyed by frontend
//! (address, port, protocol) and backend identity (address, port).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use mcs_common::{
    BACKEND_F_TERMINATING, BackendKey, MaglevPlace, NameValue, SVC_F_AFFINITY, SVC_F_VIP_MARKER,
    maglev_wide,
};

pub use super::checked::CheckedMaps;
use super::{Reconciler, maglev_table, memory::MemoryMaps};
use crate::{
    desired::{Backend, DesiredState, Frontend, FrontendKind, IpFamily},
    maglev,
    model::Protocol,
};

/// A backend endpoint as the maglev table and the per-backend counters know it.
pub type Identity = (IpAddr, u16);

/// One frontend as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedFrontend {
    pub kind: FrontendKind,
    pub name: String,
    pub affinity_timeout: Option<u32>,
    /// Backends in slot order; `weight` is 1 (weights live only in the table).
    pub slots: Vec<Backend>,
    /// The Maglev table with entries resolved to backend identities (empty
    /// without backends).
    pub table: Vec<Identity>,
}

impl RenderedFrontend {
    /// The backends in sorted order, for comparisons that ignore slot order.
    pub fn sorted_backends(&self) -> Vec<Backend> {
        let mut backends = self.slots.clone();
        backends.sort();
        backends
    }
}

pub type Rendered = BTreeMap<Frontend, RenderedFrontend>;

/// Something in the maps that the datapath or an operator would trip over.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Inconsistency {
    #[error("service entry with unknown protocol {0}")]
    BadProtocol(u8),
    #[error("{frontend}: slot {slot} of {count} is missing")]
    MissingSlot {
        frontend: Frontend,
        slot: u32,
        count: u32,
    },
    #[error("{frontend}: has backends but no Maglev table")]
    MissingTable { frontend: Frontend },
    #[error("{frontend}: Maglev entry {entry} names slot {slot}, which does not exist")]
    DanglingTableEntry {
        frontend: Frontend,
        entry: usize,
        slot: u16,
    },
    #[error("{frontend}: a Maglev table of {size} entries (wide: {wide}) for {backends} backends")]
    TableSize {
        frontend: Frontend,
        size: u32,
        wide: bool,
        backends: u32,
    },
    #[error("{frontend}: a table without backends")]
    TableWithoutBackends { frontend: Frontend },
    #[error("{frontend}: backend names cluster id {cluster_id}, which has no name")]
    UnknownCluster { frontend: Frontend, cluster_id: u32 },
    #[error("{frontend}: no name for frontend id {id}")]
    MissingName { frontend: Frontend, id: u32 },
    #[error("frontend id {0} is used by two services")]
    SharedFrontendId(u32),
    #[error("{0} backend slot {1:?} belongs to no service or lies beyond its count")]
    LeakedSlot(IpFamily, BackendKey),
    #[error("Maglev tables of {0} and {1} overlap")]
    SharedTable(Frontend, Frontend),
    #[error("name of frontend id {0} belongs to no service")]
    LeakedName(u32),
    #[error("cluster name {0:?} is used by no backend")]
    LeakedCluster(String),
    #[error("backend {0:?} has two counter ids")]
    SplitBackendId(Identity),
    #[error("reconciler id tables disagree with the maps: {0}")]
    Ids(String),
}

fn frontend_of(addr: IpAddr, port: u16, proto: u8) -> Result<Frontend, Inconsistency> {
    Ok(Frontend {
        addr,
        port,
        protocol: Protocol::from_number(proto).ok_or(Inconsistency::BadProtocol(proto))?,
    })
}

/// The datapath's invariant: every service's slots `0..backend_count` exist,
/// a service with backends has a full table, and every table entry names an
/// existing slot. Holds after every single map write of the reconciler.
pub fn check_serving(maps: &MemoryMaps) -> Result<(), Inconsistency> {
    for (addr, port, proto, service) in maps.service_entries() {
        let frontend = frontend_of(addr, port, proto)?;
        let family = frontend.family();
        for slot in 0..service.backend_count {
            let slot_key = BackendKey {
                frontend_id: service.frontend_id,
                slot,
            };
            if maps.slot(family, &slot_key).is_none() {
                return Err(Inconsistency::MissingSlot {
                    frontend,
                    slot,
                    count: service.backend_count,
                });
            }
        }
        let place = service.maglev();
        if service.backend_count == 0 {
            if place.is_some() {
                return Err(Inconsistency::TableWithoutBackends { frontend });
            }
            continue;
        }
        let place = place.ok_or(Inconsistency::MissingTable { frontend })?;
        let backends = service.backend_count;
        if !maglev::keeps(place.size, backends as usize) || place.wide != maglev_wide(backends) {
            return Err(Inconsistency::TableSize {
                frontend,
                size: place.size,
                wide: place.wide,
                backends,
            });
        }
        for (entry, slot) in maps.table(place).iter().enumerate() {
            let slot_key = BackendKey {
                frontend_id: service.frontend_id,
                slot: u32::from(*slot),
            };
            if maps.slot(family, &slot_key).is_none() {
                return Err(Inconsistency::DanglingTableEntry {
                    frontend,
                    entry,
                    slot: *slot,
                });
            }
        }
    }
    Ok(())
}

/// Reads the maps back into frontends; fails on anything the datapath
/// would trip over ([`check_serving`]) and on anything left behind.
pub fn render(maps: &MemoryMaps) -> Result<Rendered, Inconsistency> {
    check_serving(maps)?;
    let mut rendered = Rendered::new();
    let mut owned_slots = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut clusters_used = BTreeSet::new();
    let mut counter_ids: BTreeMap<Identity, u32> = BTreeMap::new();
    let mut places: Vec<(MaglevPlace, Frontend)> = Vec::new();
    let mut named = BTreeSet::new();
    for (addr, port, proto, service) in maps.service_entries() {
        let frontend = frontend_of(addr, port, proto)?;
        let family = frontend.family();
        if !ids.insert(service.frontend_id) {
            return Err(Inconsistency::SharedFrontendId(service.frontend_id));
        }
        let mut slots = Vec::with_capacity(service.backend_count as usize);
        for slot in 0..service.backend_count {
            let slot_key = BackendKey {
                frontend_id: service.frontend_id,
                slot,
            };
            owned_slots.insert((family, slot_key));
            let value = maps
                .slot(family, &slot_key)
                .ok_or(Inconsistency::MissingSlot {
                    frontend,
                    slot,
                    count: service.backend_count,
                })?;
            let cluster = if value.cluster_id == 0 {
                String::new()
            } else {
                clusters_used.insert(value.cluster_id);
                maps.clusters.get(&value.cluster_id).cloned().ok_or(
                    Inconsistency::UnknownCluster {
                        frontend,
                        cluster_id: value.cluster_id,
                    },
                )?
            };
            let identity = (value.addr, value.port);
            if *counter_ids.entry(identity).or_insert(value.backend_id) != value.backend_id {
                return Err(Inconsistency::SplitBackendId(identity));
            }
            slots.push(Backend {
                addr: identity.0,
                port: identity.1,
                cluster: cluster.into(),
                weight: 1,
                terminating: value.flags & BACKEND_F_TERMINATING != 0,
            });
        }
        let table = match service.maglev() {
            Some(place) => {
                places.push((place, frontend));
                maps.table(place)
                    .iter()
                    .map(|slot| {
                        let backend = &slots[usize::from(*slot)];
                        (backend.addr, backend.port)
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        let kind = if service.flags & SVC_F_VIP_MARKER != 0 {
            FrontendKind::VipMarker
        } else {
            FrontendKind::Service
        };
        // Markers have no name (see `plan`).
        let name =
            match kind {
                FrontendKind::Service => maps.names.get(&service.frontend_id).cloned().ok_or(
                    Inconsistency::MissingName {
                        frontend,
                        id: service.frontend_id,
                    },
                )?,
                FrontendKind::VipMarker => String::new(),
            };
        if kind == FrontendKind::Service {
            named.insert(service.frontend_id);
        }
        let affinity_timeout =
            (service.flags & SVC_F_AFFINITY != 0).then_some(service.affinity_timeout_s);
        rendered.insert(
            frontend,
            RenderedFrontend {
                kind,
                name,
                affinity_timeout,
                slots,
                table,
            },
        );
    }
    if let Some((family, leaked)) = maps.slot_keys().find(|k| !owned_slots.contains(k)) {
        return Err(Inconsistency::LeakedSlot(family, leaked));
    }
    places.sort_by_key(|(place, _)| place.base);
    for pair in places.windows(2) {
        if pair[0].0.range().end > pair[1].0.base {
            return Err(Inconsistency::SharedTable(pair[0].1, pair[1].1));
        }
    }
    if let Some(leaked) = maps.names.keys().find(|id| !named.contains(id)) {
        return Err(Inconsistency::LeakedName(*leaked));
    }
    if let Some((_, name)) = maps
        .clusters
        .iter()
        .find(|(id, _)| !clusters_used.contains(id))
    {
        return Err(Inconsistency::LeakedCluster(name.clone()));
    }
    Ok(rendered)
}

/// What the maps must render for `desired`, given the slot order and table
/// sizes the maps chose (both depend on history; the table must
/// nevertheless be exactly the table of those slots with the desired
/// weights, at a size that suits them). Frontends missing from
/// `slot_order` are laid out in sorted order at the rule's size, as a fresh
/// reconcile does.
pub fn expected(desired: &DesiredState, slot_order: &Rendered) -> Rendered {
    desired
        .frontends
        .iter()
        .map(|(frontend, spec)| {
            let weights: BTreeMap<Identity, &Backend> = spec
                .backends
                .iter()
                .map(|b| ((b.addr, b.port), b))
                .collect();
            // The maps' own order when it holds exactly the desired set.
            let layout: Vec<Backend> = match slot_order.get(frontend) {
                Some(seen)
                    if seen.slots.len() == spec.backends.len()
                        && seen
                            .slots
                            .iter()
                            .all(|b| weights.contains_key(&(b.addr, b.port))) =>
                {
                    seen.slots
                        .iter()
                        .map(|b| weights[&(b.addr, b.port)].clone())
                        .collect()
                }
                _ => spec.backends.clone(),
            };
            let seen_size = slot_order
                .get(frontend)
                .and_then(|seen| u32::try_from(seen.table.len()).ok())
                .filter(|size| maglev::keeps(*size, layout.len()));
            let table = if layout.is_empty() {
                Vec::new()
            } else {
                let size = seen_size.unwrap_or_else(|| maglev::rule_size(layout.len()));
                maglev_table(&layout, size)
                    .slots
                    .iter()
                    .map(|slot| {
                        let backend = &layout[usize::from(*slot)];
                        (backend.addr, backend.port)
                    })
                    .collect()
            };
            let slots = layout
                .into_iter()
                .map(|backend| Backend {
                    // What fits the cluster-name map.
                    cluster: NameValue::new(&backend.cluster).as_str().into(),
                    weight: 1,
                    ..backend
                })
                .collect();
            (
                *frontend,
                RenderedFrontend {
                    kind: spec.kind,
                    name: match spec.kind {
                        FrontendKind::Service => NameValue::new(&spec.name).as_str().to_owned(),
                        FrontendKind::VipMarker => String::new(),
                    },
                    affinity_timeout: spec.affinity_timeout,
                    slots,
                    table,
                },
            )
        })
        .collect()
}

/// The reconciler's id bookkeeping, for leak checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdTables {
    pub frontend_ids: BTreeMap<Frontend, u32>,
    pub next_frontend_id: u32,
    pub free_frontend_ids: Vec<u32>,
    pub clusters: BTreeMap<String, u32>,
    /// Cluster ids start at 1 (0 means unknown).
    pub next_cluster_id: u32,
    pub free_cluster_ids: Vec<u32>,
    pub backend_ids: BTreeMap<Identity, u32>,
    pub next_backend_id: u32,
    pub free_backend_ids: Vec<u32>,
    /// Each frontend's table places: where its service entry points, and a
    /// staged one (written, not pointed at yet).
    pub tables: BTreeMap<Frontend, (Option<MaglevPlace>, Option<MaglevPlace>)>,
    /// Unused ranges of the table array (free or waiting out the grace
    /// period), and its capacity.
    pub unused_table_chunks: Vec<std::ops::Range<u32>>,
    pub table_capacity: u32,
    /// Backend slots the reconciler counts as possibly present, IPv4 and
    /// IPv6.
    pub slots_in_use: [u64; 2],
}

impl Reconciler {
    /// A copy of the id tables (frontend, cluster and backend-counter ids).
    pub fn id_tables(&self) -> IdTables {
        IdTables {
            frontend_ids: self.applied.iter().map(|(f, a)| (*f, a.id)).collect(),
            next_frontend_id: self.frontend_pool.next(),
            free_frontend_ids: self.frontend_pool.free().to_vec(),
            clusters: self.clusters.clone(),
            next_cluster_id: self.cluster_pool.next(),
            free_cluster_ids: self.cluster_pool.free().to_vec(),
            backend_ids: self
                .backend_ids
                .iter()
                .map(|(identity, id)| (identity, *id))
                .collect(),
            next_backend_id: self.backend_pool.next(),
            free_backend_ids: self.backend_pool.free().to_vec(),
            tables: self
                .applied
                .iter()
                .map(|(f, a)| (*f, (a.table, a.staged)))
                .collect(),
            unused_table_chunks: self.table_space.unused(),
            table_capacity: self.table_space.capacity(),
            slots_in_use: self.slots_in_use,
        }
    }
}

/// Whether `used` and `free` partition `first..next` exactly.
fn partitions(
    used: impl IntoIterator<Item = u32>,
    free: &[u32],
    first: u32,
    next: u32,
) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for id in used.into_iter().chain(free.iter().copied()) {
        if !(first..next).contains(&id) {
            return Err(format!("id {id} outside {first}..{next}"));
        }
        if !seen.insert(id) {
            return Err(format!("id {id} both used and free, or used twice"));
        }
    }
    if seen.len() != (next - first) as usize {
        return Err(format!(
            "{} of the ids {first}..{next} accounted for",
            seen.len()
        ));
    }
    Ok(())
}

/// After a successful apply: the reconciler's id tables match the maps
/// exactly — every frontend id is a service's, every cluster id is named in
/// the map and used, every backend-counter id belongs to a backend in some
/// slot, and used and free ids partition each id range (nothing leaked,
/// nothing handed out twice).
pub fn check_ids(reconciler: &Reconciler, maps: &MemoryMaps) -> Result<(), Inconsistency> {
    let ids = reconciler.id_tables();
    let fail = |what: String| Err(Inconsistency::Ids(what));
    let in_maps: BTreeMap<Frontend, u32> = maps
        .service_entries()
        .map(|(addr, port, proto, value)| Ok((frontend_of(addr, port, proto)?, value.frontend_id)))
        .collect::<Result<_, Inconsistency>>()?;
    if in_maps != ids.frontend_ids {
        return fail(format!(
            "frontends {:?} in the maps, {:?} in the reconciler",
            in_maps, ids.frontend_ids
        ));
    }
    partitions(
        ids.frontend_ids.values().copied(),
        &ids.free_frontend_ids,
        0,
        ids.next_frontend_id,
    )
    .or_else(|what| fail(format!("frontend ids: {what}")))?;
    let named: BTreeMap<String, u32> = maps
        .clusters
        .iter()
        .map(|(id, name)| (name.clone(), *id))
        .collect();
    if named != ids.clusters {
        return fail(format!(
            "clusters {named:?} in the maps, {:?} in the reconciler",
            ids.clusters
        ));
    }
    partitions(
        ids.clusters.values().copied(),
        &ids.free_cluster_ids,
        1,
        ids.next_cluster_id,
    )
    .or_else(|what| fail(format!("cluster ids: {what}")))?;
    let mut counters: BTreeMap<Identity, u32> = BTreeMap::new();
    for (addr, port, proto, service) in maps.service_entries() {
        let frontend = frontend_of(addr, port, proto)?;
        for slot in 0..service.backend_count {
            let value = maps.slot(
                frontend.family(),
                &BackendKey {
                    frontend_id: service.frontend_id,
                    slot,
                },
            );
            if let Some(value) = value {
                counters.insert((value.addr, value.port), value.backend_id);
            } else {
                return fail(format!("{frontend} misses slot {slot}"));
            }
        }
    }
    if counters != ids.backend_ids {
        return fail(format!(
            "backend ids {counters:?} in the maps, {:?} in the reconciler",
            ids.backend_ids
        ));
    }
    partitions(
        ids.backend_ids.values().copied(),
        &ids.free_backend_ids,
        0,
        ids.next_backend_id,
    )
    .or_else(|what| fail(format!("backend ids: {what}")))?;
    check_tables(&ids, maps)
}

/// The table places the reconciler keeps are the ones the service entries
/// point at (nothing staged after a successful apply), and together with
/// the unused ranges they tile the table array exactly: no place leaked,
/// none handed out twice. The slot count is the slots present.
fn check_tables(ids: &IdTables, maps: &MemoryMaps) -> Result<(), Inconsistency> {
    let fail = |what: String| Err(Inconsistency::Ids(what));
    let mut ranges = ids.unused_table_chunks.clone();
    for (addr, port, proto, service) in maps.service_entries() {
        let frontend = frontend_of(addr, port, proto)?;
        let kept = ids.tables.get(&frontend).copied().unwrap_or_default();
        if kept != (service.maglev(), None) {
            return fail(format!(
                "{frontend}: table {:?} in the map, {kept:?} in the reconciler",
                service.maglev()
            ));
        }
        ranges.extend(service.maglev().map(|place| place.range()));
    }
    ranges.sort_by_key(|range| range.start);
    let mut at = 0;
    for range in &ranges {
        if range.start != at {
            return fail(format!(
                "table array: chunk {at} is {} (ranges {ranges:?})",
                if range.start < at {
                    "used twice"
                } else {
                    "leaked"
                }
            ));
        }
        at = range.end;
    }
    if at != ids.table_capacity {
        return fail(format!(
            "table array: {at} of {} chunks accounted for",
            ids.table_capacity
        ));
    }
    let present = [maps.backends.len() as u64, maps.backends_v6.len() as u64];
    if ids.slots_in_use != present {
        return fail(format!(
            "{:?} backend slots (IPv4, IPv6) counted, {present:?} in the maps",
            ids.slots_in_use,
        ));
    }
    Ok(())
}
