//! An in-memory [`DataplaneWriter`] for tests and model checks, with fault
//! injection. Test support behind the `testing` feature: never in the agent
//! binary.

use std::{collections::BTreeMap, net::IpAddr};

use mcs_common::{
    BackendKey, BackendValue, BackendValueV6, MAGLEV_CHUNK_BYTES, MaglevPlace, NameValue,
    ServiceKey, ServiceKeyV6, ServiceValue, maglev_position,
};

use super::FamilyServiceKey;
use super::{DataplaneWriter, PinnedState, WriteError};
use crate::desired::{Frontend, IpFamily};

/// A slot of either family, as the checks read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotView {
    pub addr: IpAddr,
    pub port: u16,
    pub cluster_id: u32,
    pub flags: u32,
    pub backend_id: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryMaps {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<BackendKey, BackendValue>,
    pub services_v6: BTreeMap<ServiceKeyV6, ServiceValue>,
    pub backends_v6: BTreeMap<BackendKey, BackendValueV6>,
    pub names: BTreeMap<u32, String>,
    pub clusters: BTreeMap<u32, String>,
    /// The Maglev table array, as bytes (grown as written).
    pub maglev: Vec<u8>,
    pub stats_resets: Vec<u32>,
    pub backend_stats_resets: Vec<u32>,
    /// Fail every write after this many (fault injection).
    pub fail_after: Option<usize>,
    pub writes: usize,
}

impl MemoryMaps {
    /// The table at `place`, as the datapath reads it (entries beyond what
    /// was ever written read as slot 0, as in a fresh array).
    pub fn table(&self, place: MaglevPlace) -> Vec<u16> {
        (0..place.size)
            .map(|index| {
                let (chunk, byte) = maglev_position(place.base, index, place.wide);
                let at = chunk as usize * MAGLEV_CHUNK_BYTES as usize + byte;
                let byte_at = |i: usize| self.maglev.get(i).copied().unwrap_or(0);
                if place.wide {
                    u16::from_ne_bytes([byte_at(at), byte_at(at + 1)])
                } else {
                    u16::from(byte_at(at))
                }
            })
            .collect()
    }

    /// Every service entry of both families: address, port (host order),
    /// protocol number and value.
    pub fn service_entries(&self) -> impl Iterator<Item = (IpAddr, u16, u8, &ServiceValue)> {
        let v4 = self
            .services
            .iter()
            .map(|(k, v)| (IpAddr::V4(k.addr()), k.port(), k.proto, v));
        let v6 = self
            .services_v6
            .iter()
            .map(|(k, v)| (IpAddr::V6(k.addr()), k.port(), k.proto, v));
        v4.chain(v6)
    }

    /// The service entry of `frontend`, in its family's service map.
    pub fn service(&self, frontend: &Frontend) -> Option<&ServiceValue> {
        match super::service_key(frontend) {
            FamilyServiceKey::V4(key) => self.services.get(&key),
            FamilyServiceKey::V6(key) => self.services_v6.get(&key),
        }
    }

    /// Slot `key` of the `family` slot map.
    pub fn slot(&self, family: IpFamily, key: &BackendKey) -> Option<SlotView> {
        match family {
            IpFamily::V4 => self.backends.get(key).map(|v| SlotView {
                addr: IpAddr::V4(v.addr()),
                port: v.port(),
                cluster_id: v.cluster_id,
                flags: v.flags,
                backend_id: v.backend_id,
            }),
            IpFamily::V6 => self.backends_v6.get(key).map(|v| SlotView {
                addr: IpAddr::V6(v.addr()),
                port: v.port(),
                cluster_id: v.cluster_id,
                flags: v.flags,
                backend_id: v.backend_id,
            }),
        }
    }

    /// Every slot key of both slot maps, with its family.
    pub fn slot_keys(&self) -> impl Iterator<Item = (IpFamily, BackendKey)> + '_ {
        let v4 = self.backends.keys().map(|k| (IpFamily::V4, *k));
        let v6 = self.backends_v6.keys().map(|k| (IpFamily::V6, *k));
        v4.chain(v6)
    }

    /// The state adoption would read back from these maps.
    pub fn pinned_state(&self) -> PinnedState {
        PinnedState {
            services: self.services.iter().map(|(k, v)| (*k, *v)).collect(),
            backends: self.backends.clone(),
            services_v6: self.services_v6.iter().map(|(k, v)| (*k, *v)).collect(),
            backends_v6: self.backends_v6.clone(),
            frontend_names: self.names.clone(),
            clusters: self.clusters.clone(),
        }
    }

    /// Counts a write and, unless it is one past `fail_after`, applies it.
    fn write(
        &mut self,
        map: &'static str,
        op: &'static str,
        apply: impl FnOnce(&mut Self),
    ) -> Result<(), WriteError> {
        self.writes += 1;
        match self.fail_after {
            Some(limit) if self.writes > limit => Err(WriteError {
                map,
                op,
                source: "injected failure".into(),
            }),
            _ => {
                apply(self);
                Ok(())
            }
        }
    }
}

impl DataplaneWriter for MemoryMaps {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), WriteError> {
        self.write("services", "put", |m| {
            m.services.insert(*key, *value);
        })
    }
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), WriteError> {
        self.write("services", "delete", |m| {
            m.services.remove(key);
        })
    }
    fn put_backend(&mut self, key: &BackendKey, value: &BackendValue) -> Result<(), WriteError> {
        self.write("backends", "put", |m| {
            m.backends.insert(*key, *value);
        })
    }
    fn delete_backend(&mut self, key: &BackendKey) -> Result<(), WriteError> {
        self.write("backends", "delete", |m| {
            m.backends.remove(key);
        })
    }
    fn put_service_v6(
        &mut self,
        key: &ServiceKeyV6,
        value: &ServiceValue,
    ) -> Result<(), WriteError> {
        self.write("services_v6", "put", |m| {
            m.services_v6.insert(*key, *value);
        })
    }
    fn delete_service_v6(&mut self, key: &ServiceKeyV6) -> Result<(), WriteError> {
        self.write("services_v6", "delete", |m| {
            m.services_v6.remove(key);
        })
    }
    fn put_backend_v6(
        &mut self,
        key: &BackendKey,
        value: &BackendValueV6,
    ) -> Result<(), WriteError> {
        self.write("backends_v6", "put", |m| {
            m.backends_v6.insert(*key, *value);
        })
    }
    fn delete_backend_v6(&mut self, key: &BackendKey) -> Result<(), WriteError> {
        self.write("backends_v6", "delete", |m| {
            m.backends_v6.remove(key);
        })
    }
    fn put_frontend_name(&mut self, id: u32, name: &NameValue) -> Result<(), WriteError> {
        self.write("names", "put", |m| {
            m.names.insert(id, name.as_str().to_owned());
        })
    }
    fn delete_frontend_name(&mut self, id: u32) -> Result<(), WriteError> {
        self.write("names", "delete", |m| {
            m.names.remove(&id);
        })
    }
    fn reset_frontend_stats(&mut self, id: u32) -> Result<(), WriteError> {
        self.write("stats", "reset", |m| m.stats_resets.push(id))
    }
    fn reset_backend_stats(&mut self, id: u32) -> Result<(), WriteError> {
        self.write("backend_stats", "reset", |m| {
            m.backend_stats_resets.push(id)
        })
    }
    fn put_cluster_name(&mut self, id: u32, name: &NameValue) -> Result<(), WriteError> {
        self.write("clusters", "put", |m| {
            if name.len == 0 {
                m.clusters.remove(&id);
            } else {
                m.clusters.insert(id, name.as_str().to_owned());
            }
        })
    }
    fn put_maglev(
        &mut self,
        _id: u32,
        place: MaglevPlace,
        slots: &[u16],
    ) -> Result<(), WriteError> {
        self.write("maglev", "put", |m| {
            let end = place.range().end as usize * MAGLEV_CHUNK_BYTES as usize;
            if m.maglev.len() < end {
                m.maglev.resize(end, 0);
            }
            for (index, slot) in (0..place.size).zip(slots) {
                let (chunk, byte) = maglev_position(place.base, index, place.wide);
                let at = chunk as usize * MAGLEV_CHUNK_BYTES as usize + byte;
                if place.wide {
                    m.maglev[at..at + 2].copy_from_slice(&slot.to_ne_bytes());
                } else {
                    // Narrow tables hold slots below 256.
                    m.maglev[at] = *slot as u8;
                }
            }
        })
    }
}
