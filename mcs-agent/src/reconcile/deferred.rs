//! Deferred puts for a cold sync: the reconciler's per-frontend writes are
//! collected and written a group at a time (names, then slots, then
//! tables, then service entries; each family's slots and service entries
//! in a group of their own), each group in one batch call.
//!
//! The group order keeps the reconciler's guarantee for every frontend in
//! the batch: its slots exist before its table, its table before its
//! service entry makes it visible. A frontend with a failed entry gets no
//! entry of a later group, so a failure never exposes a table whose slots
//! are missing; it is reported by id and rewritten whole next time.
//!
//! Only puts are deferred; everything else is forwarded at once. That is
//! sound only where no key is both put and deleted in one batch, which is
//! why the reconciler uses this for cold syncs only: every frontend new,
//! ids not used by anything still in the maps.
//!
//! The held-back puts ([`Puts`]) are plain data, so a chunk's puts can be
//! written on another thread while the reconciler computes the next chunk;
//! the maps sit behind a mutex that the forwarded operations take too.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Mutex, MutexGuard, PoisonError},
};

use mcs_common::{
    BackendKey, BackendValue, BackendValueV6, MaglevPlace, NameValue, ServiceKey, ServiceKeyV6,
    ServiceValue,
};

use super::{DataplaneWriter, WriteError};

/// One group of deferred puts: keys and values side by side, as
/// `BPF_MAP_UPDATE_BATCH` takes them.
struct Group<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
}

impl<K, V> Default for Group<K, V> {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            values: Vec::new(),
        }
    }
}

impl<K: Clone, V: Clone> Group<K, V> {
    fn push(&mut self, key: &K, value: &V) {
        self.keys.push(key.clone());
        self.values.push(value.clone());
    }

    /// Writes the entries whose frontend has not failed yet, recording new
    /// failures by frontend id.
    fn write(
        mut self,
        frontend_of: impl Fn(&K, &V) -> u32,
        failed: &mut BTreeMap<u32, WriteError>,
        put: impl FnOnce(&[K], &[V]) -> Vec<(usize, WriteError)>,
    ) {
        if !failed.is_empty() {
            let failed_ids: BTreeSet<u32> = failed.keys().copied().collect();
            let (keys, values) = self
                .keys
                .into_iter()
                .zip(self.values)
                .filter(|(key, value)| !failed_ids.contains(&frontend_of(key, value)))
                .unzip();
            self.keys = keys;
            self.values = values;
        }
        if self.keys.is_empty() {
            return;
        }
        for (index, error) in put(&self.keys, &self.values) {
            if let (Some(key), Some(value)) = (self.keys.get(index), self.values.get(index)) {
                failed.entry(frontend_of(key, value)).or_insert(error);
            }
        }
    }
}

/// The puts of one chunk, held back until [`Puts::flush`].
#[derive(Default)]
pub(super) struct Puts {
    names: Group<u32, NameValue>,
    backends: Group<BackendKey, BackendValue>,
    backends_v6: Group<BackendKey, BackendValueV6>,
    /// Keyed by frontend id, for the failure bookkeeping.
    tables: Group<u32, (MaglevPlace, Vec<u16>)>,
    services: Group<ServiceKey, ServiceValue>,
    services_v6: Group<ServiceKeyV6, ServiceValue>,
}

impl Puts {
    /// Writes everything held back, group by group; returns the frontends
    /// (by id) whose entries were not all written, with the first error.
    pub(super) fn flush(self, inner: &mut impl DataplaneWriter) -> BTreeMap<u32, WriteError> {
        let mut failed = BTreeMap::new();
        self.names.write(
            |id, _| *id,
            &mut failed,
            |ids, names| inner.put_frontend_names(ids, names),
        );
        self.backends.write(
            |key, _| key.frontend_id,
            &mut failed,
            |keys, values| inner.put_backends(keys, values),
        );
        self.backends_v6.write(
            |key, _| key.frontend_id,
            &mut failed,
            |keys, values| inner.put_backends_v6(keys, values),
        );
        self.tables.write(
            |id, _| *id,
            &mut failed,
            |ids, tables| inner.put_maglevs(ids, tables),
        );
        self.services.write(
            |_, value| value.frontend_id,
            &mut failed,
            |keys, values| inner.put_services(keys, values),
        );
        self.services_v6.write(
            |_, value| value.frontend_id,
            &mut failed,
            |keys, values| inner.put_services_v6(keys, values),
        );
        failed
    }
}

/// The maps shared between the reconciler and the thread that flushes.
pub(super) struct Shared<'a, W>(Mutex<&'a mut W>);

impl<'a, W> Shared<'a, W> {
    pub(super) fn new(maps: &'a mut W) -> Self {
        Self(Mutex::new(maps))
    }

    /// The maps, also after a panic elsewhere (a write is either done or
    /// not; there is no half-updated state to protect).
    pub(super) fn lock(&self) -> MutexGuard<'_, &'a mut W> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn into_inner(self) -> &'a mut W {
        self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Collects puts into [`Puts`]; forwards everything else to the shared maps
/// at once.
pub(super) struct Deferred<'s, 'a, W> {
    shared: &'s Shared<'a, W>,
    puts: Puts,
}

impl<'s, 'a, W: DataplaneWriter> Deferred<'s, 'a, W> {
    pub(super) fn new(shared: &'s Shared<'a, W>) -> Self {
        Self {
            shared,
            puts: Puts::default(),
        }
    }

    pub(super) fn into_puts(self) -> Puts {
        self.puts
    }
}

impl<W: DataplaneWriter> DataplaneWriter for Deferred<'_, '_, W> {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), WriteError> {
        self.puts.services.push(key, value);
        Ok(())
    }
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), WriteError> {
        self.shared.lock().delete_service(key)
    }
    fn put_backend(&mut self, key: &BackendKey, value: &BackendValue) -> Result<(), WriteError> {
        self.puts.backends.push(key, value);
        Ok(())
    }
    fn delete_backend(&mut self, key: &BackendKey) -> Result<(), WriteError> {
        self.shared.lock().delete_backend(key)
    }
    fn put_service_v6(
        &mut self,
        key: &ServiceKeyV6,
        value: &ServiceValue,
    ) -> Result<(), WriteError> {
        self.puts.services_v6.push(key, value);
        Ok(())
    }
    fn delete_service_v6(&mut self, key: &ServiceKeyV6) -> Result<(), WriteError> {
        self.shared.lock().delete_service_v6(key)
    }
    fn put_backend_v6(
        &mut self,
        key: &BackendKey,
        value: &BackendValueV6,
    ) -> Result<(), WriteError> {
        self.puts.backends_v6.push(key, value);
        Ok(())
    }
    fn delete_backend_v6(&mut self, key: &BackendKey) -> Result<(), WriteError> {
        self.shared.lock().delete_backend_v6(key)
    }
    fn put_frontend_name(&mut self, frontend_id: u32, name: &NameValue) -> Result<(), WriteError> {
        self.puts.names.push(&frontend_id, name);
        Ok(())
    }
    fn delete_frontend_name(&mut self, frontend_id: u32) -> Result<(), WriteError> {
        self.shared.lock().delete_frontend_name(frontend_id)
    }
    fn reset_frontend_stats(&mut self, frontend_id: u32) -> Result<(), WriteError> {
        self.shared.lock().reset_frontend_stats(frontend_id)
    }
    fn reset_backend_stats(&mut self, backend_id: u32) -> Result<(), WriteError> {
        self.shared.lock().reset_backend_stats(backend_id)
    }
    fn put_cluster_name(&mut self, cluster_id: u32, name: &NameValue) -> Result<(), WriteError> {
        self.shared.lock().put_cluster_name(cluster_id, name)
    }
    fn put_maglev(
        &mut self,
        frontend_id: u32,
        place: MaglevPlace,
        slots: &[u16],
    ) -> Result<(), WriteError> {
        self.puts
            .tables
            .push(&frontend_id, &(place, slots.to_vec()));
        Ok(())
    }
}
