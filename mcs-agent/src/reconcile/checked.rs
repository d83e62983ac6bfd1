//! A map writer that checks the datapath's invariant after every write
//! that could break it: the churn model check and the fuzz targets apply
//! through it (behind the `testing` feature, never in the agent binary).

use mcs_common::{
    BackendKey, BackendValue, BackendValueV6, MaglevPlace, NameValue, ServiceKey, ServiceKeyV6,
    ServiceValue,
};

use super::{
    DataplaneWriter, WriteError,
    check::{Inconsistency, check_serving},
    memory::MemoryMaps,
};

/// In-memory maps that check the datapath's invariant ([`check_serving`])
/// after every write that could break it.
#[derive(Default)]
pub struct CheckedMaps {
    pub maps: MemoryMaps,
    /// The first violation seen, if any.
    pub violation: Option<Inconsistency>,
}

impl CheckedMaps {
    fn after(&mut self, result: Result<(), WriteError>) -> Result<(), WriteError> {
        if self.violation.is_none() {
            self.violation = check_serving(&self.maps).err();
        }
        result
    }
}

impl DataplaneWriter for CheckedMaps {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), WriteError> {
        let result = self.maps.put_service(key, value);
        self.after(result)
    }
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), WriteError> {
        let result = self.maps.delete_service(key);
        self.after(result)
    }
    fn put_backend(&mut self, key: &BackendKey, value: &BackendValue) -> Result<(), WriteError> {
        let result = self.maps.put_backend(key, value);
        self.after(result)
    }
    fn delete_backend(&mut self, key: &BackendKey) -> Result<(), WriteError> {
        let result = self.maps.delete_backend(key);
        self.after(result)
    }
    fn put_service_v6(
        &mut self,
        key: &ServiceKeyV6,
        value: &ServiceValue,
    ) -> Result<(), WriteError> {
        let result = self.maps.put_service_v6(key, value);
        self.after(result)
    }
    fn delete_service_v6(&mut self, key: &ServiceKeyV6) -> Result<(), WriteError> {
        let result = self.maps.delete_service_v6(key);
        self.after(result)
    }
    fn put_backend_v6(
        &mut self,
        key: &BackendKey,
        value: &BackendValueV6,
    ) -> Result<(), WriteError> {
        let result = self.maps.put_backend_v6(key, value);
        self.after(result)
    }
    fn delete_backend_v6(&mut self, key: &BackendKey) -> Result<(), WriteError> {
        let result = self.maps.delete_backend_v6(key);
        self.after(result)
    }
    fn put_frontend_name(&mut self, id: u32, name: &NameValue) -> Result<(), WriteError> {
        self.maps.put_frontend_name(id, name)
    }
    fn delete_frontend_name(&mut self, id: u32) -> Result<(), WriteError> {
        self.maps.delete_frontend_name(id)
    }
    fn reset_frontend_stats(&mut self, id: u32) -> Result<(), WriteError> {
        self.maps.reset_frontend_stats(id)
    }
    fn reset_backend_stats(&mut self, id: u32) -> Result<(), WriteError> {
        self.maps.reset_backend_stats(id)
    }
    fn put_cluster_name(&mut self, id: u32, name: &NameValue) -> Result<(), WriteError> {
        self.maps.put_cluster_name(id, name)
    }
    fn put_maglev(&mut self, id: u32, place: MaglevPlace, slots: &[u16]) -> Result<(), WriteError> {
        let result = self.maps.put_maglev(id, place, slots);
        self.after(result)
    }
}
