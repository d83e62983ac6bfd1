//! The reconciler's only way to the maps: [`DataplaneWriter`] (the pinned
//! BPF maps in the agent, in-memory maps in tests) and its error.

use mcs_common::{BackendKey, BackendValue, MaglevTable, NameValue, ServiceKey, ServiceValue};

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
