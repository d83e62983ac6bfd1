//! Maps keyed by a backend's identity (address and port), one map per
//! family: an IPv4 key stays six bytes (an `IpAddr` key would take twenty
//! for every one of a node's million IPv4 backends).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// A backend's identity.
pub type Identity = (IpAddr, u16);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityMap<V> {
    v4: BTreeMap<(Ipv4Addr, u16), V>,
    v6: BTreeMap<(Ipv6Addr, u16), V>,
}

impl<V> Default for IdentityMap<V> {
    fn default() -> Self {
        Self {
            v4: BTreeMap::new(),
            v6: BTreeMap::new(),
        }
    }
}

impl<V> IdentityMap<V> {
    pub fn get(&self, (addr, port): &Identity) -> Option<&V> {
        match addr {
            IpAddr::V4(v4) => self.v4.get(&(*v4, *port)),
            IpAddr::V6(v6) => self.v6.get(&(*v6, *port)),
        }
    }

    pub fn get_mut(&mut self, (addr, port): &Identity) -> Option<&mut V> {
        match addr {
            IpAddr::V4(v4) => self.v4.get_mut(&(*v4, *port)),
            IpAddr::V6(v6) => self.v6.get_mut(&(*v6, *port)),
        }
    }

    pub fn contains_key(&self, identity: &Identity) -> bool {
        self.get(identity).is_some()
    }

    pub fn insert(&mut self, (addr, port): Identity, value: V) -> Option<V> {
        match addr {
            IpAddr::V4(v4) => self.v4.insert((v4, port), value),
            IpAddr::V6(v6) => self.v6.insert((v6, port), value),
        }
    }

    pub fn remove(&mut self, (addr, port): &Identity) -> Option<V> {
        match addr {
            IpAddr::V4(v4) => self.v4.remove(&(*v4, *port)),
            IpAddr::V6(v6) => self.v6.remove(&(*v6, *port)),
        }
    }

    /// The entry of `identity`, inserting `V::default()` when absent.
    pub fn entry_or_default(&mut self, (addr, port): Identity) -> &mut V
    where
        V: Default,
    {
        match addr {
            IpAddr::V4(v4) => self.v4.entry((v4, port)).or_default(),
            IpAddr::V6(v6) => self.v6.entry((v6, port)).or_default(),
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Every entry, IPv4 ones first (each family in address order).
    pub fn iter(&self) -> impl Iterator<Item = (Identity, &V)> {
        let v4 = self
            .v4
            .iter()
            .map(|((addr, port), value)| ((IpAddr::V4(*addr), *port), value));
        let v6 = self
            .v6
            .iter()
            .map(|((addr, port), value)| ((IpAddr::V6(*addr), *port), value));
        v4.chain(v6)
    }

    pub fn keys(&self) -> impl Iterator<Item = Identity> + '_ {
        self.iter().map(|(identity, _)| identity)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.v4.values().chain(self.v6.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_kept_apart_and_found_by_identity() {
        let mut map = IdentityMap::default();
        let v4: Identity = (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 80);
        let v6: Identity = ("fd00::1".parse().unwrap(), 80);
        // The v4-mapped form of the IPv4 address is another identity.
        let mapped: Identity = ("::ffff:10.0.0.1".parse().unwrap(), 80);
        assert_eq!(map.insert(v4, 1), None);
        assert_eq!(map.insert(v6, 2), None);
        assert_eq!(map.insert(mapped, 3), None);
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(&v4), Some(&1));
        *map.entry_or_default(v6) += 10;
        assert_eq!(map.get(&v6), Some(&12));
        assert_eq!(map.remove(&v4), Some(1));
        assert!(!map.contains_key(&v4));
        assert_eq!(map.keys().collect::<Vec<_>>(), vec![mapped, v6]);
    }

    #[test]
    fn an_ipv4_identity_stays_six_bytes() {
        assert_eq!(std::mem::size_of::<(Ipv4Addr, u16)>(), 6);
        assert!(std::mem::size_of::<(Ipv4Addr, u16)>() < std::mem::size_of::<Identity>());
    }
}
