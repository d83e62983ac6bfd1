//! Deferred puts for a cold sync: the reconciler's per-frontend writes are
//! collected and written a group at a time (names, then slots, then
//! tables, then service entries), each group in one batch call.
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

use std::collections::{BTreeMap, BTreeSet};

use mcs_common::{BackendKey, BackendValue, MaglevTable, NameValue, ServiceKey, ServiceValue};

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

impl<K: Copy, V: Copy> Group<K, V> {
    fn push(&mut self, key: &K, value: &V) {
        self.keys.push(*key);
        self.values.push(*value);
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
                .iter()
                .zip(&self.values)
                .filter(|(key, value)| !failed_ids.contains(&frontend_of(key, value)))
                .map(|(key, value)| (*key, *value))
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

/// Forwards to `inner`, holding puts back until [`Deferred::flush`].
pub(super) struct Deferred<'a, W> {
    inner: &'a mut W,
    names: Group<u32, NameValue>,
    backends: Group<BackendKey, BackendValue>,
    tables: Group<u32, MaglevTable>,
    services: Group<ServiceKey, ServiceValue>,
}

impl<'a, W: DataplaneWriter> Deferred<'a, W> {
    pub(super) fn new(inner: &'a mut W) -> Self {
        Self {
            inner,
            names: Group::default(),
            backends: Group::default(),
            tables: Group::default(),
            services: Group::default(),
        }
    }

    /// Writes everything held back, group by group; returns the frontends
    /// (by id) whose entries were not all written, with the first error.
    pub(super) fn flush(self) -> BTreeMap<u32, WriteError> {
        let inner = self.inner;
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
        failed
    }
}

impl<W: DataplaneWriter> DataplaneWriter for Deferred<'_, W> {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), WriteError> {
        self.services.push(key, value);
        Ok(())
    }
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), WriteError> {
        self.inner.delete_service(key)
    }
    fn put_backend(&mut self, key: &BackendKey, value: &BackendValue) -> Result<(), WriteError> {
        self.backends.push(key, value);
        Ok(())
    }
    fn delete_backend(&mut self, key: &BackendKey) -> Result<(), WriteError> {
        self.inner.delete_backend(key)
    }
    fn put_frontend_name(&mut self, frontend_id: u32, name: &NameValue) -> Result<(), WriteError> {
        self.names.push(&frontend_id, name);
        Ok(())
    }
    fn delete_frontend_name(&mut self, frontend_id: u32) -> Result<(), WriteError> {
        self.inner.delete_frontend_name(frontend_id)
    }
    fn reset_frontend_stats(&mut self, frontend_id: u32) -> Result<(), WriteError> {
        self.inner.reset_frontend_stats(frontend_id)
    }
    fn reset_backend_stats(&mut self, backend_id: u32) -> Result<(), WriteError> {
        self.inner.reset_backend_stats(backend_id)
    }
    fn put_cluster_name(&mut self, cluster_id: u32, name: &NameValue) -> Result<(), WriteError> {
        self.inner.put_cluster_name(cluster_id, name)
    }
    fn put_maglev(&mut self, frontend_id: u32, table: &MaglevTable) -> Result<(), WriteError> {
        self.tables.push(&frontend_id, table);
        Ok(())
    }
    fn delete_maglev(&mut self, frontend_id: u32) -> Result<(), WriteError> {
        self.inner.delete_maglev(frontend_id)
    }
}
