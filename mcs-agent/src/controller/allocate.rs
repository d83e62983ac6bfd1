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
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("demo", name)
    }

    fn net(value: &str) -> IpNet {
        value.parse().unwrap()
    }

    fn ip(value: &str) -> IpAddr {
        value.parse().unwrap()
    }

    #[test]
    fn ranges_are_checked() {
        assert!(parse_range("10.240.0.0/16").is_ok());
        assert!(parse_range("fd00:240::/108").is_ok());
        for (bad, why) in [
            ("10.240.0.1/16", "did you mean 10.240.0.0/16"),
            ("10.0.0.0/7", "at least /8"),
            ("127.0.0.0/8", "loopback"),
            ("169.254.0.0/16", "link-local"),
            ("224.0.0.0/24", "multicast"),
            ("fe80::/64", "link-local"),
            ("2001:db8::/48", "at least /64"),
            ("nonsense", "not a CIDR"),
        ] {
            let error = parse_range(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
        let error = Allocator::new(&[net("10.0.0.0/24"), net("10.1.0.0/24")]).unwrap_err();
        assert!(matches!(error, RangeError::SameFamily(..)));
    }

    #[test]
    fn usable_addresses_leave_out_network_and_broadcast() {
        let pool = Pool::new(net("10.0.0.0/30"));
        assert_eq!((pool.first, pool.size), (1, 2));
        assert_eq!(pool.address(0), ip("10.0.0.1"));
        assert_eq!(pool.address(1), ip("10.0.0.2"));
        assert!(!pool.contains(ip("10.0.0.0")) && !pool.contains(ip("10.0.0.3")));
        assert_eq!(Pool::new(net("10.0.0.4/31")).size, 2);
        assert_eq!(Pool::new(net("10.0.0.4/32")).size, 1);
        let pool = Pool::new(net("fd00::/126"));
        assert_eq!((pool.first, pool.size), (1, 3));
        assert_eq!(pool.address(2), ip("fd00::3"));
    }

    #[test]
    fn one_address_per_family_kept_while_held_and_released_after() {
        let mut allocator = Allocator::new(&[net("10.240.0.0/16"), net("fd00:240::/108")]).unwrap();
        let (ips, errors) = allocator.ensure(&key("web"), &[IpFamily::V4, IpFamily::V6]);
        assert!(errors.is_empty());
        assert_eq!(ips.len(), 2);
        assert!(ips[0].is_ipv4() && ips[1].is_ipv6());
        // Stable across ensures, and dropping a family keeps the other.
        assert_eq!(
            allocator
                .ensure(&key("web"), &[IpFamily::V4, IpFamily::V6])
                .0,
            ips
        );
        assert_eq!(allocator.ensure(&key("web"), &[IpFamily::V4]).0, ips[..1]);
        assert_eq!(allocator.usage()[1].1, 0, "IPv6 address released");
        allocator.release(&key("web"));
        assert_eq!(allocator.usage()[0].1, 0);
        assert!(allocator.get(&key("web")).is_empty());
    }

    #[test]
    fn a_family_without_a_range_is_reported() {
        let mut allocator = Allocator::new(&[net("10.240.0.0/16")]).unwrap();
        let (ips, errors) = allocator.ensure(&key("web"), &[IpFamily::V6, IpFamily::V4]);
        assert_eq!(ips.len(), 1);
        assert_eq!(errors, [AllocError::NoRange(IpFamily::V6)]);
    }

    #[test]
    fn exhaustion_is_an_error_and_freeing_makes_room() {
        let mut allocator = Allocator::new(&[net("10.0.0.0/30")]).unwrap();
        let a = allocator.ensure(&key("a"), &[IpFamily::V4]).0;
        let b = allocator.ensure(&key("b"), &[IpFamily::V4]).0;
        assert_ne!(a, b);
        let (none, errors) = allocator.ensure(&key("c"), &[IpFamily::V4]);
        assert!(none.is_empty());
        assert_eq!(errors, [AllocError::Exhausted(net("10.0.0.0/30"))]);
        allocator.release(&key("a"));
        assert_eq!(allocator.ensure(&key("c"), &[IpFamily::V4]).0, a);
    }

    #[test]
    fn adoption_keeps_valid_addresses_and_drops_the_rest() {
        let mut allocator = Allocator::new(&[net("10.240.0.0/16")]).unwrap();
        assert!(allocator.adopt(&key("a"), &[ip("10.240.3.4")]).is_empty());
        // Outside the range, a second address of one family, another's address.
        assert_eq!(
            allocator.adopt(&key("b"), &[ip("10.9.0.1")]),
            [ip("10.9.0.1")]
        );
        assert_eq!(
            allocator.adopt(&key("c"), &[ip("10.240.0.9"), ip("10.240.0.10")]),
            [ip("10.240.0.10")]
        );
        assert_eq!(
            allocator.adopt(&key("d"), &[ip("10.240.3.4")]),
            [ip("10.240.3.4")]
        );
        assert_eq!(
            allocator.ensure(&key("a"), &[IpFamily::V4]).0,
            [ip("10.240.3.4")]
        );
        let b = allocator.ensure(&key("b"), &[IpFamily::V4]).0;
        assert!(net("10.240.0.0/16").contains(&b[0]));
        assert_ne!(
            allocator.ensure(&key("d"), &[IpFamily::V4]).0,
            [ip("10.240.3.4")]
        );
    }

    #[test]
    fn reserved_addresses_are_never_handed_out() {
        let mut allocator = Allocator::new(&[net("10.0.0.0/29")]).unwrap();
        let reserved: BTreeSet<IpAddr> = (1..=5).map(|i| ip(&format!("10.0.0.{i}"))).collect();
        allocator.set_reserved(reserved.clone());
        let a = allocator.ensure(&key("a"), &[IpFamily::V4]).0;
        assert_eq!(a, [ip("10.0.0.6")]);
        assert!(allocator.ensure(&key("b"), &[IpFamily::V4]).0.is_empty());
        assert!(allocator.adopt(&key("x"), &[ip("10.0.0.1")]) == [ip("10.0.0.1")]);
    }

    /// An operation on the allocator.
    #[derive(Clone, Debug)]
    enum Op {
        Ensure(u8, Vec<IpFamily>),
        Release(u8),
        Restart,
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..12, prop::sample::select(vec![
                vec![IpFamily::V4], vec![IpFamily::V6], vec![IpFamily::V4, IpFamily::V6],
            ])).prop_map(|(k, f)| Op::Ensure(k, f)),
            2 => (0u8..12).prop_map(Op::Release),
            1 => Just(Op::Restart),
        ]
    }

    proptest! {
        /// Whatever happens, no address is held twice, every address is in
        /// its range, and a restart (adoption from what was written) keeps
        /// every import's addresses.
        #[test]
        fn never_twice_and_stable_across_restarts(ops in prop::collection::vec(arb_op(), 1..60)) {
            let ranges = [net("10.0.0.0/28"), net("fd00::/124")];
            let mut allocator = Allocator::new(&ranges).unwrap();
            // What the imports hold, as the API server would return them.
            let mut written: BTreeMap<ObjectKey, Vec<IpAddr>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Ensure(k, families) => {
                        let k = key(&format!("s{k}"));
                        let before = written.get(&k).cloned().unwrap_or_default();
                        let (ips, _) = allocator.ensure(&k, &families);
                        for old in &before {
                            if families.contains(&IpFamily::of(*old)) {
                                prop_assert!(ips.contains(old), "{} lost {}", k, old);
                            }
                        }
                        written.insert(k, ips);
                    }
                    Op::Release(k) => {
                        let k = key(&format!("s{k}"));
                        allocator.release(&k);
                        written.remove(&k);
                    }
                    Op::Restart => {
                        let mut fresh = Allocator::new(&ranges).unwrap();
                        for (k, ips) in &written {
                            prop_assert!(fresh.adopt(k, ips).is_empty());
                        }
                        allocator = fresh;
                    }
                }
                let mut seen = BTreeSet::new();
                for (k, ips) in &written {
                    prop_assert_eq!(allocator.get(k), ips.as_slice());
                    for ip in ips {
                        prop_assert!(seen.insert(*ip), "{} held twice", ip);
                        prop_assert!(ranges.iter().any(|r| r.contains(ip)));
                    }
                }
            }
        }
    }
}
