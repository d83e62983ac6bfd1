//! The reconciler's only way to the maps: [`DataplaneWriter`] (the pinned
//! BPF maps in the agent, in-memory maps in tests) and its error.

use mcs_common::{
    BackendKey, BackendValue, BackendValueV6, MaglevPlace, NameValue, ServiceKey, ServiceKeyV6,
    ServiceValue,
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

/// A map (or the id space indexing it) is full: what did not fit, and the
/// flag that sizes it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("all {capacity} {what} in use (raise {flag})")]
pub struct CapacityError {
    pub what: &'static str,
    pub capacity: u64,
    pub flag: &'static str,
}

impl WriteError {
    /// `map` has no room for `what` (`capacity` of them, sized by `flag`).
    pub fn full(
        map: &'static str,
        op: &'static str,
        what: &'static str,
        capacity: u64,
        flag: &'static str,
    ) -> Self {
        Self {
            map,
            op,
            source: Box::new(CapacityError {
                what,
                capacity,
                flag,
            }),
        }
    }

    /// Whether the write failed because its map is full: the agent's own
    /// capacity check, or the kernel refusing an insert into a full hash
    /// map (`E2BIG`).
    pub fn is_full(&self) -> bool {
        if self.source.downcast_ref::<CapacityError>().is_some() {
            return true;
        }
        let errno = |error: &std::io::Error| error.raw_os_error() == Some(libc::E2BIG);
        match self.source.downcast_ref::<aya::maps::MapError>() {
            Some(aya::maps::MapError::SyscallError(error)) => errno(&error.io_error),
            _ => self
                .source
                .downcast_ref::<std::io::Error>()
                .is_some_and(errno),
        }
    }
}

/// Write access to the dataplane maps. `Send`: a cold sync writes from a
/// helper thread.
pub trait DataplaneWriter: Send {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), WriteError>;
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), WriteError>;
    fn put_backend(&mut self, key: &BackendKey, value: &BackendValue) -> Result<(), WriteError>;
    fn delete_backend(&mut self, key: &BackendKey) -> Result<(), WriteError>;
    /// The IPv6 frontends' maps (`MCS_SVC_V6`, `MCS_BACKEND_V6`).
    fn put_service_v6(
        &mut self,
        key: &ServiceKeyV6,
        value: &ServiceValue,
    ) -> Result<(), WriteError>;
    fn delete_service_v6(&mut self, key: &ServiceKeyV6) -> Result<(), WriteError>;
    fn put_backend_v6(
        &mut self,
        key: &BackendKey,
        value: &BackendValueV6,
    ) -> Result<(), WriteError>;
    fn delete_backend_v6(&mut self, key: &BackendKey) -> Result<(), WriteError>;
    fn put_frontend_name(&mut self, frontend_id: u32, name: &NameValue) -> Result<(), WriteError>;
    fn delete_frontend_name(&mut self, frontend_id: u32) -> Result<(), WriteError>;
    /// Zeroes a frontend's counters (an id is being reused).
    fn reset_frontend_stats(&mut self, frontend_id: u32) -> Result<(), WriteError>;
    /// Zeroes a backend's counters (an id is being reused).
    fn reset_backend_stats(&mut self, backend_id: u32) -> Result<(), WriteError>;
    fn put_cluster_name(&mut self, cluster_id: u32, name: &NameValue) -> Result<(), WriteError>;
    /// Writes frontend `frontend_id`'s Maglev table (entries are slot
    /// numbers) at `place` of the table array. The reconciler writes a
    /// table either where no service entry points yet, or over the table of
    /// the same frontend and size (each entry changes from one existing
    /// slot to another).
    fn put_maglev(
        &mut self,
        frontend_id: u32,
        place: MaglevPlace,
        slots: &[u16],
    ) -> Result<(), WriteError>;

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
    fn put_services_v6(
        &mut self,
        keys: &[ServiceKeyV6],
        values: &[ServiceValue],
    ) -> Vec<(usize, WriteError)> {
        one_by_one(keys, values, |key, value| self.put_service_v6(key, value))
    }
    fn put_backends_v6(
        &mut self,
        keys: &[BackendKey],
        values: &[BackendValueV6],
    ) -> Vec<(usize, WriteError)> {
        one_by_one(keys, values, |key, value| self.put_backend_v6(key, value))
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
        tables: &[(MaglevPlace, Vec<u16>)],
    ) -> Vec<(usize, WriteError)> {
        one_by_one(frontend_ids, tables, |id, (place, slots)| {
            self.put_maglev(*id, *place, slots)
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
