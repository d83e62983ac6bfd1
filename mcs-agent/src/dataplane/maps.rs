//! Typed access to the dataplane maps: [`MapHandles`] (taken from a loaded
//! object, written by the reconciler) and [`PinnedMaps`] (opened from bpffs
//! by `dump` while an agent runs).

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray, PerCpuValues},
};
use mcs_common::{
    AbiInfo, AffinityKey, AffinityKeyV6, AffinityValue, AffinityValueV6, BackendKey, BackendValue,
    BackendValueV6, ClockValue, CtKey, CtKeyV6, CtValue, CtValueV6, FrontendStats, MaglevPlace,
    NameValue, ServiceKey, ServiceKeyV6, ServiceValue, SockRevKey, SockRevValue, names,
};

use super::{
    DataplaneError, batch,
    maglev::TableArray,
    map_pin_dir,
    prefilter::{MapContents6, Prefilter},
};
use crate::reconcile::{DataplaneWriter, PinnedState, WriteError};

/// Every map, typed.
pub struct MapHandles {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub backends: HashMap<MapData, BackendKey, BackendValue>,
    pub conntrack: HashMap<MapData, CtKey, CtValue>,
    pub frontend_stats: PerCpuArray<MapData, FrontendStats>,
    pub drops: PerCpuArray<MapData, u64>,
    pub frontend_names: HashMap<MapData, u32, NameValue>,
    pub clusters: Array<MapData, NameValue>,
    /// Every frontend's Maglev table (`dataplane::maglev`).
    pub maglev: TableArray,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub backend_stats: PerCpuArray<MapData, FrontendStats>,
    pub abi: Array<MapData, AbiInfo>,
    /// Jiffies → coarse-clock nanoseconds (`dataplane::clock`).
    pub clock: Array<MapData, ClockValue>,
    pub sock_revnat: HashMap<MapData, SockRevKey, SockRevValue>,
    /// Shared by all CPUs (socket LB counts per connection).
    pub sock_stats: Array<MapData, FrontendStats>,
    /// The miss prefilter, kept in step with `services` and `backends` by
    /// the writer methods below.
    pub prefilter: Prefilter,
    /// IPv6 frontends (ids shared with `services`).
    pub services_v6: HashMap<MapData, ServiceKeyV6, ServiceValue>,
    /// The slots of IPv6 frontends.
    pub backends_v6: HashMap<MapData, BackendKey, BackendValueV6>,
    pub conntrack_v6: HashMap<MapData, CtKeyV6, CtValueV6>,
    pub affinity_v6: HashMap<MapData, AffinityKeyV6, AffinityValueV6>,
}

fn typed<T: TryFrom<Map, Error = MapError>>(
    name: &'static str,
    map: Map,
) -> Result<T, DataplaneError> {
    T::try_from(map).map_err(|source| DataplaneError::Map { name, source })
}

impl MapHandles {
    fn from_source(
        mut get: impl FnMut(&'static str) -> Result<Map, DataplaneError>,
    ) -> Result<Self, DataplaneError> {
        Ok(Self {
            services: typed(names::SERVICES, get(names::SERVICES)?)?,
            backends: typed(names::BACKENDS, get(names::BACKENDS)?)?,
            conntrack: typed(names::CONNTRACK, get(names::CONNTRACK)?)?,
            frontend_stats: typed(names::FRONTEND_STATS, get(names::FRONTEND_STATS)?)?,
            drops: typed(names::DROPS, get(names::DROPS)?)?,
            frontend_names: typed(names::FRONTEND_META, get(names::FRONTEND_META)?)?,
            clusters: typed(names::CLUSTERS, get(names::CLUSTERS)?)?,
            maglev: TableArray::new(typed(names::MAGLEV, get(names::MAGLEV)?)?).map_err(
                |source| DataplaneError::TableArray {
                    name: names::MAGLEV,
                    source,
                },
            )?,
            affinity: typed(names::AFFINITY, get(names::AFFINITY)?)?,
            backend_stats: typed(names::BACKEND_STATS, get(names::BACKEND_STATS)?)?,
            abi: typed(names::ABI, get(names::ABI)?)?,
            clock: typed(names::CLOCK, get(names::CLOCK)?)?,
            sock_revnat: typed(names::SOCK_REVNAT, get(names::SOCK_REVNAT)?)?,
            sock_stats: typed(names::SOCK_STATS, get(names::SOCK_STATS)?)?,
            prefilter: Prefilter::new(typed(names::PREFILTER, get(names::PREFILTER)?)?).map_err(
                |source| DataplaneError::Prefilter {
                    name: names::PREFILTER,
                    source,
                },
            )?,
            services_v6: typed(names::SERVICES_V6, get(names::SERVICES_V6)?)?,
            backends_v6: typed(names::BACKENDS_V6, get(names::BACKENDS_V6)?)?,
            conntrack_v6: typed(names::CONNTRACK_V6, get(names::CONNTRACK_V6)?)?,
            affinity_v6: typed(names::AFFINITY_V6, get(names::AFFINITY_V6)?)?,
        })
    }

    /// Rebuilds the prefilter from what the maps hold (services, backends
    /// and the flows in conntrack): after adoption, or after the maps were
    /// written behind the writer's back.
    pub fn rebuild_prefilter(&mut self) -> Result<(), MapError> {
        let services = self
            .services
            .keys()
            .collect::<Result<Vec<ServiceKey>, MapError>>()?;
        let backends = self
            .backends
            .iter()
            .collect::<Result<Vec<(BackendKey, BackendValue)>, MapError>>()?;
        self.rebuild_prefilter_with(services, backends);
        Ok(())
    }

    /// Rebuilds the prefilter from these services and backends and the
    /// flows conntrack holds now.
    fn rebuild_prefilter_with(
        &mut self,
        services: impl IntoIterator<Item = ServiceKey>,
        backends: impl IntoIterator<Item = (BackendKey, BackendValue)>,
    ) {
        // Entries evicted or deleted while iterating do not matter: they
        // need nothing any more.
        let conntrack: Vec<(CtKey, CtValue)> =
            self.conntrack.iter().filter_map(Result::ok).collect();
        // The IPv6 maps are read whole here (they are not part of the
        // reconciler's adopted state yet); entries going meanwhile do not
        // matter, as above.
        let v6 = MapContents6 {
            services: self.services_v6.keys().filter_map(Result::ok).collect(),
            backends: self.backends_v6.iter().filter_map(Result::ok).collect(),
            conntrack: self.conntrack_v6.iter().filter_map(Result::ok).collect(),
        };
        self.prefilter.rebuild(services, backends, conntrack, v6);
    }

    /// Reads what the reconciler needs to adopt these maps; an error names
    /// the map that could not be read.
    pub fn read_state(&self) -> Result<PinnedState, DataplaneError> {
        let read = |name| move |source| DataplaneError::Map { name, source };
        let mut state = PinnedState::default();
        for entry in self.services.iter() {
            state.services.push(entry.map_err(read(names::SERVICES))?);
        }
        for entry in self.backends.iter() {
            let (key, value) = entry.map_err(read(names::BACKENDS))?;
            state.backends.insert(key, value);
        }
        for entry in self.services_v6.iter() {
            state
                .services_v6
                .push(entry.map_err(read(names::SERVICES_V6))?);
        }
        for entry in self.backends_v6.iter() {
            let (key, value) = entry.map_err(read(names::BACKENDS_V6))?;
            state.backends_v6.insert(key, value);
        }
        for entry in self.frontend_names.iter() {
            let (id, name) = entry.map_err(read(names::FRONTEND_META))?;
            state.frontend_names.insert(id, name.as_str().to_owned());
        }
        for id in 0..self.clusters.len() {
            let name = self.clusters.get(&id, 0).map_err(read(names::CLUSTERS))?;
            if name.len > 0 {
                state.clusters.insert(id, name.as_str().to_owned());
            }
        }
        Ok(state)
    }

    /// Takes the maps out of a loaded object, with the prefilter rebuilt
    /// from their contents (adopted maps may hold services and flows).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        let mut maps = Self::take_raw(ebpf)?;
        maps.rebuild_prefilter()
            .map_err(|source| DataplaneError::Map {
                name: names::PREFILTER,
                source,
            })?;
        Ok(maps)
    }

    /// Like [`MapHandles::take`], also returning what the reconciler needs
    /// to adopt the maps: the services and backends are read once, for both
    /// the prefilter and the reconciler.
    pub fn take_with_state(ebpf: &mut Ebpf) -> Result<(Self, PinnedState), DataplaneError> {
        let mut maps = Self::take_raw(ebpf)?;
        let state = maps.read_state()?;
        maps.rebuild_prefilter_with(
            state.services.iter().map(|(key, _)| *key),
            state.backends.iter().map(|(key, value)| (*key, *value)),
        );
        Ok((maps, state))
    }

    fn take_raw(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        Self::from_source(|name| ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name)))
    }
}

/// The maps of a running agent, opened from their pins.
pub struct PinnedMaps(pub MapHandles);

impl PinnedMaps {
    pub fn open(bpffs_dir: &Path) -> Result<Self, DataplaneError> {
        let dir = map_pin_dir(bpffs_dir);
        MapHandles::from_source(|name| {
            let data = MapData::from_pin(dir.join(name))
                .map_err(|source| DataplaneError::Map { name, source })?;
            Map::from_map_data(data).map_err(|source| DataplaneError::Map { name, source })
        })
        .map(Self)
    }
}

fn write_error(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> WriteError {
    move |source| WriteError {
        map,
        op,
        source: Box::new(source),
    }
}

fn zeroed_per_cpu(map: &'static str) -> Result<PerCpuValues<FrontendStats>, WriteError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, error)| WriteError {
        map,
        op: "count CPUs",
        source: Box::new(error),
    })?;
    PerCpuValues::try_from(vec![FrontendStats::default(); cpus]).map_err(|error| WriteError {
        map,
        op: "reset",
        source: Box::new(error),
    })
}

/// Puts `keys[i] → values[i]` with `BPF_MAP_UPDATE_BATCH`, large batches
/// split over all CPUs (entries of one group are independent, and the
/// kernel locks per hash bucket, so parts written concurrently do not
/// wait on each other). An entry a batch stops at is retried alone (which
/// also serves kernels without batch support): its error is the one
/// reported, and the batch goes on after it.
fn put_batch<K: Pod + Sync, V: Pod + Sync>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    keys: &[K],
    values: &[V],
) -> Vec<(usize, WriteError)> {
    const MIN_PER_THREAD: usize = 1024;
    let len = keys.len().min(values.len());
    let fd = map.map().fd().as_fd().as_raw_fd();
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(len / MIN_PER_THREAD)
        .max(1);
    let per_thread = len.div_ceil(threads).max(1);
    let parts: Vec<std::ops::Range<usize>> = (0..len)
        .step_by(per_thread)
        .map(|start| start..(start + per_thread).min(len))
        .collect();
    // Where each part stopped, if it did.
    let stops: Vec<Option<usize>> = std::thread::scope(|scope| {
        let write = |range: std::ops::Range<usize>| {
            let start = range.start;
            batch::update_batch(fd, &keys[range.clone()], &values[range])
                .err()
                .map(|stopped| start + stopped.index)
        };
        let mut rest = parts.iter().cloned();
        let first = rest.next();
        let others: Vec<_> = rest
            .map(|range| scope.spawn(move || write(range)))
            .collect();
        let mut stops = vec![first.and_then(write)];
        for handle in others {
            stops.push(
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        stops
    });
    let mut failures = Vec::new();
    for (range, stop) in parts.into_iter().zip(stops) {
        let mut next = stop;
        while let Some(index) = next.filter(|index| *index < range.end) {
            if let Err(error) = map.insert(keys[index], values[index], 0) {
                failures.push((index, write_error(name, "insert")(error)));
            }
            next = batch::update_batch(
                fd,
                &keys[index + 1..range.end],
                &values[index + 1..range.end],
            )
            .err()
            .map(|stopped| index + 1 + stopped.index);
        }
    }
    failures
}

fn table_error(error: super::maglev::TableArrayError) -> WriteError {
    WriteError {
        map: names::MAGLEV,
        op: "write table",
        source: Box::new(error),
    }
}

/// Deleting something already gone is fine (idempotent reconcile).
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
        Err(MapError::SyscallError(error))
            if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

impl DataplaneWriter for MapHandles {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), WriteError> {
        // The bit first: a packet that finds the entry must pass the filter.
        self.prefilter.put_service(key);
        self.services
            .insert(key, value, 0)
            .map_err(write_error(names::SERVICES, "insert"))
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), WriteError> {
        ignore_missing(self.services.remove(key))
            .map_err(write_error(names::SERVICES, "remove"))?;
        self.prefilter.delete_service(key);
        Ok(())
    }

    fn put_backend(&mut self, key: &BackendKey, value: &BackendValue) -> Result<(), WriteError> {
        self.prefilter.put_backend(key, value);
        self.backends
            .insert(key, value, 0)
            .map_err(write_error(names::BACKENDS, "insert"))
    }

    fn delete_backend(&mut self, key: &BackendKey) -> Result<(), WriteError> {
        ignore_missing(self.backends.remove(key))
            .map_err(write_error(names::BACKENDS, "remove"))?;
        self.prefilter.delete_backend(key);
        Ok(())
    }

    fn put_service_v6(
        &mut self,
        key: &ServiceKeyV6,
        value: &ServiceValue,
    ) -> Result<(), WriteError> {
        self.prefilter.put_service_v6(key);
        self.services_v6
            .insert(key, value, 0)
            .map_err(write_error(names::SERVICES_V6, "insert"))
    }

    fn delete_service_v6(&mut self, key: &ServiceKeyV6) -> Result<(), WriteError> {
        ignore_missing(self.services_v6.remove(key))
            .map_err(write_error(names::SERVICES_V6, "remove"))?;
        self.prefilter.delete_service_v6(key);
        Ok(())
    }

    fn put_backend_v6(
        &mut self,
        key: &BackendKey,
        value: &BackendValueV6,
    ) -> Result<(), WriteError> {
        self.prefilter.put_backend(key, value);
        self.backends_v6
            .insert(key, value, 0)
            .map_err(write_error(names::BACKENDS_V6, "insert"))
    }

    fn delete_backend_v6(&mut self, key: &BackendKey) -> Result<(), WriteError> {
        ignore_missing(self.backends_v6.remove(key))
            .map_err(write_error(names::BACKENDS_V6, "remove"))?;
        self.prefilter.delete_backend(key);
        Ok(())
    }

    fn put_frontend_name(&mut self, frontend_id: u32, name: &NameValue) -> Result<(), WriteError> {
        self.frontend_names
            .insert(frontend_id, name, 0)
            .map_err(write_error(names::FRONTEND_META, "insert"))
    }

    fn delete_frontend_name(&mut self, frontend_id: u32) -> Result<(), WriteError> {
        ignore_missing(self.frontend_names.remove(&frontend_id))
            .map_err(write_error(names::FRONTEND_META, "remove"))
    }

    fn reset_frontend_stats(&mut self, frontend_id: u32) -> Result<(), WriteError> {
        let zeroes = zeroed_per_cpu(names::FRONTEND_STATS)?;
        self.frontend_stats
            .set(frontend_id, zeroes, 0)
            .map_err(write_error(names::FRONTEND_STATS, "reset"))?;
        self.sock_stats
            .set(frontend_id, FrontendStats::default(), 0)
            .map_err(write_error(names::SOCK_STATS, "reset"))
    }

    fn reset_backend_stats(&mut self, backend_id: u32) -> Result<(), WriteError> {
        let zeroes = zeroed_per_cpu(names::BACKEND_STATS)?;
        self.backend_stats
            .set(backend_id, zeroes, 0)
            .map_err(write_error(names::BACKEND_STATS, "reset"))
    }

    fn put_cluster_name(&mut self, cluster_id: u32, name: &NameValue) -> Result<(), WriteError> {
        self.clusters
            .set(cluster_id, name, 0)
            .map_err(write_error(names::CLUSTERS, "set"))
    }

    fn put_maglev(
        &mut self,
        _frontend_id: u32,
        place: MaglevPlace,
        slots: &[u16],
    ) -> Result<(), WriteError> {
        match self.maglev.write(&[(place, slots)]).pop() {
            None => Ok(()),
            Some((_, error)) => Err(table_error(error)),
        }
    }

    fn put_services(
        &mut self,
        keys: &[ServiceKey],
        values: &[ServiceValue],
    ) -> Vec<(usize, WriteError)> {
        // The bits first, as in `put_service`.
        for key in keys {
            self.prefilter.put_service(key);
        }
        put_batch(&mut self.services, names::SERVICES, keys, values)
    }

    fn put_backends(
        &mut self,
        keys: &[BackendKey],
        values: &[BackendValue],
    ) -> Vec<(usize, WriteError)> {
        for (key, value) in keys.iter().zip(values) {
            self.prefilter.put_backend(key, value);
        }
        put_batch(&mut self.backends, names::BACKENDS, keys, values)
    }

    fn put_services_v6(
        &mut self,
        keys: &[ServiceKeyV6],
        values: &[ServiceValue],
    ) -> Vec<(usize, WriteError)> {
        for key in keys {
            self.prefilter.put_service_v6(key);
        }
        put_batch(&mut self.services_v6, names::SERVICES_V6, keys, values)
    }

    fn put_backends_v6(
        &mut self,
        keys: &[BackendKey],
        values: &[BackendValueV6],
    ) -> Vec<(usize, WriteError)> {
        for (key, value) in keys.iter().zip(values) {
            self.prefilter.put_backend(key, value);
        }
        put_batch(&mut self.backends_v6, names::BACKENDS_V6, keys, values)
    }

    fn put_frontend_names(
        &mut self,
        frontend_ids: &[u32],
        names: &[NameValue],
    ) -> Vec<(usize, WriteError)> {
        put_batch(
            &mut self.frontend_names,
            names::FRONTEND_META,
            frontend_ids,
            names,
        )
    }

    fn put_maglevs(
        &mut self,
        _frontend_ids: &[u32],
        tables: &[(MaglevPlace, Vec<u16>)],
    ) -> Vec<(usize, WriteError)> {
        let tables: Vec<(MaglevPlace, &[u16])> = tables
            .iter()
            .map(|(place, slots)| (*place, slots.as_slice()))
            .collect();
        self.maglev
            .write(&tables)
            .into_iter()
            .map(|(index, error)| (index, table_error(error)))
            .collect()
    }
}
