//! An in-memory [`DataplaneWriter`] for tests and model checks, with fault
//! injection. Test support behind the `testing` feature: never in the agent
//! binary.

use std::collections::BTreeMap;

use mcs_common::{
    BackendKey, BackendValue, MAGLEV_CHUNK_BYTES, MaglevPlace, NameValue, ServiceKey, ServiceValue,
    maglev_position,
};

use super::{DataplaneWriter, PinnedState, WriteError};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryMaps {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<BackendKey, BackendValue>,
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

    /// The state adoption would read back from these maps.
    pub fn pinned_state(&self) -> PinnedState {
        PinnedState {
            services: self.services.iter().map(|(k, v)| (*k, *v)).collect(),
            backends: self.backends.clone(),
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
