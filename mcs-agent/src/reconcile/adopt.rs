//! Adoption after a restart: the applied state rebuilt from what the pinned
//! maps hold, so the first reconcile is a diff against what the kernel
//! serves, never a flush.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use mcs_common::{
    BACKEND_F_TERMINATING, BackendKey, BackendValue, BackendValueOf, BackendValueV6, MAX_CLUSTERS,
    SVC_F_AFFINITY, SVC_F_VIP_MARKER, ServiceKey, ServiceKeyV6, ServiceValue, byte_order::NetAddr,
};

use super::{Applied, Capacities, Reconciler, family_index, ids::IdPool, space::TableSpace};
use crate::desired::{Backend, Frontend, FrontendKind, IpFamily};

/// What pinned maps hold, read back for adoption after a restart.
#[derive(Clone, Debug, Default)]
pub struct PinnedState {
    pub services: Vec<(ServiceKey, ServiceValue)>,
    pub backends: BTreeMap<BackendKey, BackendValue>,
    pub services_v6: Vec<(ServiceKeyV6, ServiceValue)>,
    pub backends_v6: BTreeMap<BackendKey, BackendValueV6>,
    pub frontend_names: BTreeMap<u32, String>,
    pub clusters: BTreeMap<u32, String>,
}

/// One pinned slot of either family: endpoint, cluster id, flags, counter id.
type Slot = (SocketAddr, u32, u32, u32);

/// Adds the pinned backend slots of one family to `slots_of`, by family
/// and frontend id.
fn collect_slots<A: NetAddr>(
    slots_of: &mut BTreeMap<(IpFamily, u32), Vec<(u32, Slot)>>,
    family: IpFamily,
    backends: &BTreeMap<BackendKey, BackendValueOf<A>>,
) where
    A::Endpoint: Into<SocketAddr>,
{
    for (key, value) in backends {
        let slot = (
            value.endpoint().into(),
            value.cluster_id,
            value.flags,
            value.backend_id,
        );
        slots_of
            .entry((family, key.frontend_id))
            .or_default()
            .push((key.slot, slot));
    }
}

/// Adoption found something it cannot make sense of.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("service entry {addr} port {port} has an unknown protocol {proto}")]
    UnknownProtocol { addr: IpAddr, port: u16, proto: u8 },
    #[error("frontend id {0} is used twice or out of range")]
    BadFrontendId(u32),
}

impl Reconciler {
    /// [`Reconciler::adopt_with`] for maps of the default sizes.
    pub fn adopt(state: &PinnedState) -> Result<Self, AdoptError> {
        Self::adopt_with(state, Capacities::default())
    }

    /// Rebuilds the applied state from pinned maps of these sizes. Stale
    /// slots beyond a frontend's count are remembered and removed by the
    /// first reconcile; a table whose place overlaps another's or lies
    /// beyond the table array is rewritten at a new place.
    pub fn adopt_with(state: &PinnedState, capacities: Capacities) -> Result<Self, AdoptError> {
        let mut reconciler = Self::with_capacities(capacities);
        let mut used_ids = BTreeSet::new();
        // Slots by family and frontend id.
        let mut slots_of: BTreeMap<(IpFamily, u32), Vec<(u32, Slot)>> = BTreeMap::new();
        collect_slots(&mut slots_of, IpFamily::V4, &state.backends);
        collect_slots(&mut slots_of, IpFamily::V6, &state.backends_v6);
        let services = state
            .services
            .iter()
            .map(|(key, value)| (IpAddr::V4(key.addr()), key.port(), key.proto, value))
            .chain(
                state
                    .services_v6
                    .iter()
                    .map(|(key, value)| (IpAddr::V6(key.addr()), key.port(), key.proto, value)),
            );
        let cluster_name = |id: u32| -> String {
            if id == 0 {
                String::new()
            } else {
                state.clusters.get(&id).cloned().unwrap_or_default()
            }
        };
        for (addr, port, proto, value) in services {
            let protocol = crate::model::Protocol::from_number(proto)
                .ok_or(AdoptError::UnknownProtocol { addr, port, proto })?;
            if value.frontend_id >= capacities.frontends || !used_ids.insert(value.frontend_id) {
                return Err(AdoptError::BadFrontendId(value.frontend_id));
            }
            let frontend = Frontend {
                addr,
                port,
                protocol,
            };
            let slots = slots_of
                .remove(&(frontend.family(), value.frontend_id))
                .unwrap_or_default();
            let slot_high = slots.iter().map(|(slot, _)| slot + 1).max().unwrap_or(0);
            let mut backends = Vec::with_capacity(value.backend_count as usize);
            let mut complete = true;
            for wanted in 0..value.backend_count {
                let Some((_, (endpoint, cluster_id, flags, backend_id))) =
                    slots.iter().find(|(slot, _)| *slot == wanted)
                else {
                    complete = false;
                    break;
                };
                let (addr, port) = (endpoint.ip(), endpoint.port());
                reconciler.backend_ids.insert((addr, port), *backend_id);
                backends.push(Backend {
                    addr,
                    port,
                    cluster: cluster_name(*cluster_id).into(),
                    weight: 1,
                    terminating: flags & BACKEND_F_TERMINATING != 0,
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
                    table: value.maglev().filter(|_| value.backend_count > 0),
                    staged: None,
                },
            );
        }
        reconciler.adopt_tables();
        // What no service owns was left by an agent that died mid-apply
        // (slots and name are written before a new service entry and
        // deleted after a removed one, and a table never outlives its
        // name): removed by the first apply, never adopted or leaked.
        for ((family, id), slots) in &slots_of {
            let high = slots.iter().map(|(slot, _)| slot + 1).max().unwrap_or(0);
            let index = family_index(*family);
            reconciler.orphans.entry(*id).or_default()[index] = high;
            reconciler.slots_in_use[index] += u64::from(high);
        }
        for id in state.frontend_names.keys() {
            if !used_ids.contains(id) {
                reconciler.orphans.entry(*id).or_default();
            }
        }
        // Orphaned ids are held out of the pool until cleaned up.
        let taken: BTreeSet<u32> = used_ids
            .iter()
            .chain(reconciler.orphans.keys())
            .copied()
            .filter(|id| *id < capacities.frontends)
            .collect();
        reconciler.frontend_pool = IdPool::with_taken(0..capacities.frontends, &taken);
        let taken: BTreeSet<u32> = reconciler.backend_ids.values().copied().collect();
        reconciler.backend_pool = IdPool::with_taken(0..reconciler.backend_pool.capacity(), &taken);
        for (id, name) in &state.clusters {
            if !name.is_empty() {
                reconciler.clusters.insert(name.clone(), *id);
            }
        }
        let taken: BTreeSet<u32> = reconciler
            .clusters
            .values()
            .copied()
            .filter(|id| *id < MAX_CLUSTERS)
            .collect();
        reconciler.cluster_pool = IdPool::with_taken(1..MAX_CLUSTERS, &taken);
        reconciler.may_have_dirty = reconciler.applied.values().any(|a| a.dirty);
        // What no adopted slot references is released by the first apply.
        reconciler.unreferenced_backends = reconciler.backend_ids.keys().collect();
        reconciler.unreferenced_clusters = reconciler.clusters.keys().cloned().collect();
        Ok(reconciler)
    }

    /// Marks the adopted tables' places in use; a place that overlaps an
    /// earlier one or lies beyond the array is dropped, its frontend left
    /// to be rewritten whole (the datapath keeps reading the old place
    /// until the new service entry points elsewhere).
    fn adopt_tables(&mut self) {
        let capacity = self.table_space.capacity();
        let mut places: Vec<(mcs_common::MaglevPlace, crate::desired::Frontend)> = self
            .applied
            .iter()
            .filter_map(|(frontend, applied)| Some((applied.table?, *frontend)))
            .collect();
        places.sort_by_key(|(place, _)| (place.base, place.size));
        let mut end = 0;
        let mut kept = Vec::with_capacity(places.len());
        for (place, frontend) in places {
            let range = place.range();
            if range.start < end || range.end > capacity {
                if let Some(applied) = self.applied.get_mut(&frontend) {
                    applied.table = None;
                    applied.dirty = true;
                    self.may_have_dirty = true;
                }
                continue;
            }
            end = range.end;
            kept.push(range);
        }
        // Disjoint and inside the array by construction.
        self.table_space =
            TableSpace::with_taken(capacity, kept).unwrap_or_else(|_| TableSpace::new(capacity));
    }
}
