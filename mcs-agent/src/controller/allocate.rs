//! ClusterSetIP allocation (pure): one address per IP family an import
//! needs, from this cluster's `--clusterset-ip-cidr` ranges.
//!
//! * **Never twice**: an address is held by one import at a time, and
//!   addresses of ServiceImports this controller does not manage are
//!   reserved too.
//! * **Stable**: an import keeps its addresses for as long as it exists;
//!   after a restart or a leader change the allocation is read back from
//!   the imports themselves ([`Allocator::adopt`]) before anything new is
//!   handed out.
//! * **Released** when the import goes (unexport) or stops needing a
//!   family.
//! * A new address is searched from a point derived from the import's name
//!   (FNV-1a), not from the lowest free one, so an address just released is
//!   unlikely to be handed to another service at once while clients may
//!   still have it cached (DNS TTL, open flows).

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::Hasher as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;

use super::merge::IpFamily;
use crate::model::{ObjectKey, convert::forbidden_reason};

/// A range that cannot hold ClusterSetIPs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("{0}: {1} addresses cannot be ClusterSetIPs")]
    Forbidden(IpNet, &'static str),
    #[error("{0}: prefix too short (at least /{1} for this family)")]
    TooLarge(IpNet, u8),
    #[error("{0} and {1}: at most one range per IP family")]
    SameFamily(IpNet, IpNet),
    #[error("{0}: not the network address of the range (did you mean {1}?)")]
    HostBits(IpNet, IpNet),
}

/// An address that could not be allocated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("no --clusterset-ip-cidr for {}", .0.as_str())]
    NoRange(IpFamily),
    #[error("every address of {0} is in use")]
    Exhausted(IpNet),
}

impl AllocError {
    /// The family that could not be served.
    pub const fn family(&self) -> IpFamily {
        match self {
            Self::NoRange(family) => *family,
            Self::Exhausted(IpNet::V4(_)) => IpFamily::V4,
            Self::Exhausted(IpNet::V6(_)) => IpFamily::V6,
        }
    }
}

/// Shortest prefix accepted per family: a ClusterSetIP range is a service
/// range, not a whole address space.
const MIN_PREFIX_V4: u8 = 8;
const MIN_PREFIX_V6: u8 = 64;

/// Checks one `--clusterset-ip-cidr` value.
pub fn parse_range(value: &str) -> Result<IpNet, String> {
    let net: IpNet = value
        .parse()
        .map_err(|_| format!("{value:?} is not a CIDR (e.g. 10.240.0.0/16 or fd00:240::/108)"))?;
    check_range(net).map_err(|error| error.to_string())?;
    Ok(net)
}

fn check_range(net: IpNet) -> Result<(), RangeError> {
    if net.trunc() != net {
        return Err(RangeError::HostBits(net, net.trunc()));
    }
    let min = match net {
        IpNet::V4(_) => MIN_PREFIX_V4,
        IpNet::V6(_) => MIN_PREFIX_V6,
    };
    if net.prefix_len() < min {
        return Err(RangeError::TooLarge(net, min));
    }
    // A range long enough is inside one /8 (or /64), so its ends tell
    // whether it touches a forbidden block.
    for ip in [net.network(), net.broadcast()] {
        if let Some(reason) = forbidden_reason(ip) {
            return Err(RangeError::Forbidden(net, reason));
        }
    }
    Ok(())
}

/// A range with its usable offsets `first..first + size` from the network
/// address (the IPv4 network and broadcast addresses and the IPv6
/// subnet-router anycast address are left out).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pool {
    net: IpNet,
    first: u128,
    size: u128,
}

impl Pool {
    fn new(net: IpNet) -> Self {
        let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
        let total = 1u128 << host_bits;
        let (first, size) = match net {
            IpNet::V4(_) if host_bits >= 2 => (1, total - 2),
            IpNet::V6(_) if host_bits >= 2 => (1, total - 1),
            _ => (0, total),
        };
        Self { net, first, size }
    }

    fn family(&self) -> IpFamily {
        match self.net {
            IpNet::V4(_) => IpFamily::V4,
            IpNet::V6(_) => IpFamily::V6,
        }
    }

    fn address(&self, offset: u128) -> IpAddr {
        match self.net {
            IpNet::V4(net) => IpAddr::V4(Ipv4Addr::from(
                u32::from(net.network()) + (self.first + offset) as u32,
            )),
            IpNet::V6(net) => IpAddr::V6(Ipv6Addr::from(
                u128::from(net.network()) + self.first + offset,
            )),
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        if !self.net.contains(&ip) {
            return false;
        }
        let offset = match (ip, self.net) {
            (IpAddr::V4(ip), IpNet::V4(net)) => {
                u128::from(u32::from(ip) - u32::from(net.network()))
            }
            (IpAddr::V6(ip), IpNet::V6(net)) => u128::from(ip) - u128::from(net.network()),
            _ => return false,
        };
        offset >= self.first && offset < self.first + self.size
    }
}

/// Where the search for `key`'s address of `family` starts.
fn start(key: &ObjectKey, family: IpFamily, size: u128) -> u128 {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(key.namespace.as_bytes());
    hasher.write(b"/");
    hasher.write(key.name.as_bytes());
    hasher.write(family.as_str().as_bytes());
    u128::from(hasher.finish()) % size
}

/// The ClusterSetIPs of one cluster.
#[derive(Clone, Debug)]
pub struct Allocator {
    pools: Vec<Pool>,
    /// Addresses per managed import, in the order written.
    assigned: BTreeMap<ObjectKey, Vec<IpAddr>>,
    /// Holder of every assigned address.
    owners: BTreeMap<IpAddr, ObjectKey>,
    /// Addresses of imports not managed here.
    reserved: BTreeSet<IpAddr>,
}

impl Allocator {
    /// `ranges`: at most one per family, each checked with [`parse_range`].
    pub fn new(ranges: &[IpNet]) -> Result<Self, RangeError> {
        let mut pools: Vec<Pool> = Vec::new();
        for &net in ranges {
            check_range(net)?;
            let pool = Pool::new(net);
            if let Some(other) = pools.iter().find(|p| p.family() == pool.family()) {
                return Err(RangeError::SameFamily(other.net, net));
            }
            pools.push(pool);
        }
        Ok(Self {
            pools,
            assigned: BTreeMap::new(),
            owners: BTreeMap::new(),
            reserved: BTreeSet::new(),
        })
    }

    /// Takes over the addresses an existing managed import holds. Addresses
    /// outside every range (the range was changed), of a family given twice,
    /// or already held by another import are dropped and returned; the
    /// import gets new ones when it is next ensured.
    pub fn adopt(&mut self, key: &ObjectKey, ips: &[IpAddr]) -> Vec<IpAddr> {
        let mut kept: Vec<IpAddr> = self.assigned.get(key).cloned().unwrap_or_default();
        let mut dropped = Vec::new();
        for &ip in ips {
            let usable = self.pools.iter().any(|p| p.contains(ip))
                && !kept.iter().any(|k| IpFamily::of(*k) == IpFamily::of(ip))
                && !self.reserved.contains(&ip)
                && self.owners.get(&ip).is_none_or(|owner| owner == key);
            if usable {
                kept.push(ip);
                self.owners.insert(ip, key.clone());
            } else if !kept.contains(&ip) {
                dropped.push(ip);
            }
        }
        if !kept.is_empty() {
            self.assigned.insert(key.clone(), kept);
        }
        dropped
    }

    /// Replaces the set of addresses held by imports not managed here. An
    /// address already assigned to a managed import stays with it (the
    /// collision is the other writer's doing and is reported by the caller).
    pub fn set_reserved(&mut self, reserved: BTreeSet<IpAddr>) {
        self.reserved = reserved;
    }

    /// The import `key`'s addresses for `families` (in that order): those
    /// it holds are kept, missing ones allocated, families it no longer
    /// needs released. A family that cannot be served is left out and its
    /// error returned.
    pub fn ensure(
        &mut self,
        key: &ObjectKey,
        families: &[IpFamily],
    ) -> (Vec<IpAddr>, Vec<AllocError>) {
        let held = self.assigned.remove(key).unwrap_or_default();
        let mut ips = Vec::with_capacity(families.len());
        let mut errors = Vec::new();
        for &family in families {
            if let Some(&ip) = held.iter().find(|ip| IpFamily::of(**ip) == family) {
                ips.push(ip);
                continue;
            }
            match self.allocate(key, family) {
                Ok(ip) => {
                    self.owners.insert(ip, key.clone());
                    ips.push(ip);
                }
                Err(error) => errors.push(error),
            }
        }
        for ip in held.iter().filter(|ip| !ips.contains(ip)) {
            self.owners.remove(ip);
        }
        if !ips.is_empty() {
            self.assigned.insert(key.clone(), ips.clone());
        }
        (ips, errors)
    }

    fn allocate(&self, key: &ObjectKey, family: IpFamily) -> Result<IpAddr, AllocError> {
        let pool = self
            .pools
            .iter()
            .find(|p| p.family() == family)
            .ok_or(AllocError::NoRange(family))?;
        let used = self
            .owners
            .keys()
            .chain(&self.reserved)
            .filter(|ip| pool.contains(**ip))
            .count() as u128;
        if used >= pool.size {
            return Err(AllocError::Exhausted(pool.net));
        }
        // At most `used` addresses are taken, so the probe ends within
        // `used + 1` steps.
        let origin = start(key, family, pool.size);
        (0..=used)
            .map(|step| pool.address((origin + step) % pool.size))
            .find(|ip| !self.owners.contains_key(ip) && !self.reserved.contains(ip))
            .ok_or(AllocError::Exhausted(pool.net))
    }

    /// Releases the addresses of `key` (its import is gone).
    pub fn release(&mut self, key: &ObjectKey) {
        for ip in self.assigned.remove(key).unwrap_or_default() {
            self.owners.remove(&ip);
        }
    }

    /// Releases every import `keep` says no to.
    pub fn retain(&mut self, mut keep: impl FnMut(&ObjectKey) -> bool) {
        let gone: Vec<ObjectKey> = self.assigned.keys().filter(|k| !keep(k)).cloned().collect();
        for key in gone {
            self.release(&key);
        }
    }

    /// Addresses held by `key`.
    pub fn get(&self, key: &ObjectKey) -> &[IpAddr] {
        self.assigned.get(key).map_or(&[], Vec::as_slice)
    }

    /// Forgets every assignment (a new term as leader reads them back).
    pub fn clear(&mut self) {
        self.assigned.clear();
        self.owners.clear();
    }

    /// Assigned addresses and capacity per family, for metrics.
    pub fn usage(&self) -> Vec<(IpFamily, u128, u128)> {
        self.pools
            .iter()
            .map(|pool| {
                let used = self.owners.keys().filter(|ip| pool.contains(**ip)).count() as u128;
                (pool.family(), used, pool.size)
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "allocate_tests.rs"]
mod tests;
