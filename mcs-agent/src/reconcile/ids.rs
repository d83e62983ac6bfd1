//! Id allocation. Frontend ids, backend counter ids and cluster ids all
//! index array maps, so each comes from one [`IdPool`]: dense, a freed id
//! handed out again before a new one, never one id to two owners.
//!
//! The reconciler's allocators on top: a frontend id for a new frontend, a
//! counter id per backend identity (its counters zeroed when the id was
//! used before), a cluster id per cluster name (its name written first).

use std::{collections::BTreeSet, ops::Range};

use mcs_common::NameValue;
use tracing::warn;

use super::{ApplyReport, DataplaneWriter, Reconciler, WriteError};
use crate::desired::Backend;

/// Ids `first..capacity`. Ids below `next` were handed out at some point;
/// those not in use are on the free list.
#[derive(Clone, Debug)]
pub(super) struct IdPool {
    first: u32,
    next: u32,
    capacity: u32,
    /// Freed ids, the next one to hand out last.
    free: Vec<u32>,
}

impl IdPool {
    /// An empty pool of the ids in `range`.
    pub(super) fn new(range: Range<u32>) -> Self {
        Self {
            first: range.start,
            next: range.start,
            capacity: range.end,
            free: Vec::new(),
        }
    }

    /// A pool of the ids in `range` where `taken` are owned already (read
    /// back from pinned maps): the ids between them are free, lowest first.
    pub(super) fn with_taken(range: Range<u32>, taken: &BTreeSet<u32>) -> Self {
        let mut pool = Self::new(range);
        pool.next = taken
            .iter()
            .next_back()
            .map_or(pool.first, |id| (id + 1).max(pool.first));
        pool.free = (pool.first..pool.next)
            .filter(|id| !taken.contains(id))
            .rev()
            .collect();
        pool
    }

    /// A free id, and whether it was handed out before (its counters or
    /// entries may hold what the last owner left); `None` when all
    /// `first..capacity` are in use.
    pub(super) fn allocate(&mut self) -> Option<(u32, bool)> {
        if let Some(id) = self.free.pop() {
            return Some((id, true));
        }
        (self.next < self.capacity).then(|| {
            self.next += 1;
            (self.next - 1, false)
        })
    }

    /// Hands `id` back. An id this pool never handed out (outside
    /// `first..next`, e.g. one adoption found beyond the map) is ignored.
    pub(super) fn release(&mut self, id: u32) {
        if (self.first..self.next).contains(&id) {
            self.free.push(id);
        }
    }

    /// Ids are handed out below `capacity` from now on (ids already out stay).
    pub(super) fn set_capacity(&mut self, capacity: u32) {
        self.capacity = capacity;
    }

    pub(super) fn capacity(&self) -> u32 {
        self.capacity
    }
}

/// For the consistency checks: which ids were handed out and which are free.
#[cfg(any(test, feature = "testing"))]
impl IdPool {
    /// One past the highest id ever handed out.
    pub(super) fn next(&self) -> u32 {
        self.next
    }

    pub(super) fn free(&self) -> &[u32] {
        &self.free
    }
}

impl Reconciler {
    /// An id for a new frontend, and whether its counters need a reset.
    pub(super) fn allocate_frontend_id(&mut self) -> Result<(u32, bool), WriteError> {
        let Some((id, reused)) = self.frontend_pool.allocate() else {
            return Err(WriteError::full(
                mcs_common::names::SERVICES,
                "allocate frontend id",
                "frontend ids",
                u64::from(self.frontend_pool.capacity()),
                "--frontends-max",
            ));
        };
        Ok((id, reused || !self.fresh_frontend_stats))
    }

    /// Per-backend counter index of `backend`, allocated on first use.
    pub(super) fn backend_id(
        &mut self,
        backend: &Backend,
        maps: &mut impl DataplaneWriter,
        report: &mut ApplyReport,
    ) -> Result<u32, WriteError> {
        let identity = (backend.addr, backend.port);
        if let Some(id) = self.backend_ids.get(&identity) {
            return Ok(*id);
        }
        let Some((id, reused)) = self.backend_pool.allocate() else {
            return Err(WriteError::full(
                mcs_common::names::BACKEND_STATS,
                "allocate backend id",
                "backend ids",
                u64::from(self.backend_pool.capacity()),
                "--backends-max",
            ));
        };
        if reused || !self.fresh_backend_stats {
            if let Err(error) = maps.reset_backend_stats(id) {
                self.backend_pool.release(id);
                return Err(error);
            }
            report.map_writes += 1;
        }
        self.backend_ids.insert(identity, id);
        // Released again at the end of the apply unless a slot takes it.
        self.unreferenced_backends.insert(identity);
        Ok(id)
    }

    /// Cluster id for `name` (0 = unknown or table full).
    pub(super) fn cluster_id(
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
        let Some((id, _)) = self.cluster_pool.allocate() else {
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
                self.cluster_pool.release(id);
                warn!(cluster = name, error = %error, "cannot record cluster name");
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, net::Ipv4Addr};

    use proptest::prelude::*;

    use super::IdPool;
    use crate::{
        desired::{Backend, DesiredState, Frontend, FrontendKind, FrontendSpec},
        model::{ObjectKey, Protocol},
        reconcile::{CapacityError, Reconciler, check, memory::MemoryMaps},
    };

    #[derive(Clone, Debug)]
    enum Op {
        Allocate,
        /// Release the n-th id in use (modulo how many are).
        Release(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![Just(Op::Allocate), any::<usize>().prop_map(Op::Release)],
            0..200,
        )
    }

    proptest! {
        /// Against a model (a set of ids in use): no id is handed out
        /// twice, a freed id is handed out before any new one, the pool
        /// fails only when every id of its range is in use, and used and
        /// free ids always partition `first..next`.
        #[test]
        fn ids_are_unique_reused_and_bounded(
            first in 0u32..3,
            size in 0u32..20,
            taken in prop::collection::btree_set(0u32..30, 0..10),
            ops in ops(),
        ) {
            let range = first..first + size;
            let taken: BTreeSet<u32> = taken.into_iter().filter(|id| range.contains(id)).collect();
            let mut pool = IdPool::with_taken(range.clone(), &taken);
            // The gaps between adopted ids are free already.
            let mut freed: BTreeSet<u32> =
                (range.start..pool.next()).filter(|id| !taken.contains(id)).collect();
            let mut used = taken;
            for op in ops {
                match op {
                    Op::Allocate => match pool.allocate() {
                        Some((id, reused)) => {
                            prop_assert!(range.contains(&id), "id {} outside {:?}", id, range);
                            prop_assert!(used.insert(id), "id {} handed out twice", id);
                            prop_assert_eq!(reused, freed.remove(&id));
                            // A new id only once no freed one is left.
                            prop_assert!(reused || freed.is_empty());
                        }
                        None => prop_assert_eq!(used.len() as u32, size, "refused with ids free"),
                    },
                    Op::Release(n) => {
                        if used.is_empty() {
                            continue;
                        }
                        let id = *used.iter().nth(n % used.len()).expect("in range");
                        used.remove(&id);
                        pool.release(id);
                        freed.insert(id);
                    }
                }
                let free: BTreeSet<u32> = pool.free().iter().copied().collect();
                prop_assert_eq!(free.len(), pool.free().len(), "an id freed twice");
                prop_assert!(free.is_disjoint(&used));
                let all: BTreeSet<u32> = free.union(&used).copied().collect();
                let below_next: BTreeSet<u32> = (range.start..pool.next()).collect();
                prop_assert_eq!(all, below_next);
            }
        }
    }

    #[test]
    fn adoption_frees_the_gaps_lowest_first() {
        let mut pool = IdPool::with_taken(1..10, &BTreeSet::from([2, 5]));
        assert_eq!(pool.next(), 6);
        let handed: Vec<_> = (0..5).map_while(|_| pool.allocate()).collect();
        assert_eq!(
            handed,
            [(1, true), (3, true), (4, true), (6, false), (7, false)]
        );
    }

    #[test]
    fn ids_beyond_the_pool_are_not_taken_back() {
        let mut pool = IdPool::new(0..4);
        assert_eq!(pool.allocate(), Some((0, false)));
        pool.release(3); // never handed out
        pool.release(17);
        assert!(pool.free().is_empty());
        assert_eq!(pool.allocate(), Some((1, false)));
    }

    /// `count` frontends on ports 1.., frontend `i` with backends `i` and
    /// `i + 1` (shared with its neighbours).
    fn desired(count: u16) -> DesiredState {
        let mut desired = DesiredState::default();
        for port in 1..=count {
            let backends = [port, port + 1]
                .map(|n| Backend {
                    addr: std::net::IpAddr::V4(
                        Ipv4Addr::new(10, 1, 0, 0) | Ipv4Addr::from(u32::from(n)),
                    ),
                    port: 8080,
                    cluster: format!("c{}", n % 3).into(),
                    weight: 1,
                    terminating: false,
                })
                .to_vec();
            desired.frontends.insert(
                Frontend {
                    addr: std::net::IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
                    port,
                    protocol: Protocol::Tcp,
                },
                FrontendSpec {
                    kind: FrontendKind::Service,
                    name: format!("ns/svc:{port}"),
                    import: ObjectKey::new("ns", "svc").into(),
                    backends,
                    affinity_timeout: None,
                },
            );
        }
        desired
    }

    proptest! {
        /// With more frontends than frontend ids (or backends than counter
        /// ids), exactly the frontends that do not fit fail, each named in
        /// the report with an error saying which ids ran out; nothing of
        /// them reaches the maps, no id leaks, and once others go the
        /// waiting ones get the freed ids.
        #[test]
        fn capacity_errors_name_the_frontend_and_freed_ids_are_reused(
            frontends in 0u32..6,
            backends in 1u32..8,
            count in 0u16..10,
        ) {
            let mut reconciler = Reconciler::new().with_max_backends(backends);
            reconciler.frontend_pool = IdPool::new(0..frontends);
            let mut maps = MemoryMaps::default();
            let mut wanted = desired(count);
            let report = reconciler.apply(&wanted, &mut maps);
            for (frontend, error) in &report.errors {
                prop_assert!(wanted.frontends.contains_key(frontend));
                prop_assert!(maps.service(frontend).is_none());
                let full = error.source.downcast_ref::<CapacityError>();
                prop_assert!(error.is_full(), "{:?}", error);
                prop_assert!(
                    full == Some(&CapacityError {
                        what: "frontend ids",
                        capacity: u64::from(frontends),
                        flag: "--frontends-max",
                    }) || full == Some(&CapacityError {
                        what: "backend ids",
                        capacity: u64::from(backends),
                        flag: "--backends-max",
                    }),
                    "{:?}", full
                );
            }
            let failed: BTreeSet<Frontend> = report.errors.iter().map(|(f, _)| *f).collect();
            prop_assert_eq!(failed.len(), report.errors.len(), "a frontend reported twice");
            prop_assert_eq!(maps.services.len() + failed.len(), usize::from(count));
            // Each frontend needs one frontend id; frontend i needs counter
            // ids for backends i and i + 1, shared with its neighbours. One
            // that fails on a counter id keeps its frontend id (dirty).
            let fit = usize::from(count).min(frontends as usize).min(backends as usize - 1);
            prop_assert_eq!(maps.services.len(), fit);
            // The frontends that fitted go; counter ids are released at the
            // end of that apply, so the waiting ones fit on the next.
            wanted.frontends.retain(|frontend, _| failed.contains(frontend));
            reconciler.apply(&wanted, &mut maps);
            let report = reconciler.apply(&wanted, &mut maps);
            let fit = failed.len().min(frontends as usize).min(backends as usize - 1);
            prop_assert_eq!(maps.services.len(), fit, "{:?}", report.errors);
            prop_assert_eq!(report.errors.len(), failed.len() - fit);
            // Nothing leaked: with everything gone every id is free again.
            let report = reconciler.apply(&DesiredState::default(), &mut maps);
            prop_assert!(report.errors.is_empty(), "{:?}", report.errors);
            check::check_ids(&reconciler, &maps).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let ids = reconciler.id_tables();
            prop_assert_eq!(ids.free_frontend_ids.len() as u32, ids.next_frontend_id);
            prop_assert_eq!(ids.free_backend_ids.len() as u32, ids.next_backend_id);
            prop_assert_eq!(ids.free_cluster_ids.len() as u32 + 1, ids.next_cluster_id);
        }
    }
}
