//! The prefilter's bookkeeping, pure (no map): which members the maps and
//! conntrack need, and which bits that sets ([`Tracker`], [`Members`]); see
//! the parent module for the rules.

use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use mcs_common::{
    BackendKey, BackendValueOf, CtKeyOf, CtValueOf, ServiceKey, ServiceKeyOf, ServiceKeyV6,
    byte_order::{NetAddr, net_addr, net_addr6},
    prefilter::{self, Role},
};

/// How long a member lingers at least after its last reference went.
pub const GRACE: Duration = Duration::from_secs(1);

/// A member of the filter: an address in the role a packet is tested on.
/// An IPv6 address is a member by its fold (`NetAddr::fold`, what the
/// datapath tests): two addresses with one fold share the member, as they
/// share the bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    pub role: Role,
    /// The address (IPv4, network order as the maps and the packet hold
    /// it) or the fold of an IPv6 address.
    pub addr: u32,
}

impl Member {
    pub const fn new(role: Role, addr: Ipv4Addr) -> Self {
        Self {
            role,
            addr: net_addr(addr),
        }
    }

    /// An IPv6 address in `role`.
    pub fn new6(role: Role, addr: Ipv6Addr) -> Self {
        Self::of(role, net_addr6(addr))
    }

    /// An address of either family, in the maps' form, in `role`.
    pub fn of<A: NetAddr>(role: Role, addr: A) -> Self {
        Self {
            role,
            addr: addr.fold(),
        }
    }

    /// A ClusterSetIP: tested against the packet's destination.
    pub const fn destination(addr: Ipv4Addr) -> Self {
        Self::new(Role::Destination, addr)
    }

    /// A backend: tested against the packet's source (replies).
    pub const fn source(addr: Ipv4Addr) -> Self {
        Self::new(Role::Source, addr)
    }

    /// The member a service entry needs: its ClusterSetIP.
    pub fn of_service<A: NetAddr>(key: &ServiceKeyOf<A>) -> Self {
        Self::of(Role::Destination, key.addr)
    }

    /// The member a backend slot needs: the backend's address.
    pub fn of_backend<A: NetAddr>(value: &BackendValueOf<A>) -> Self {
        Self::of(Role::Source, value.addr)
    }

    /// The member a conntrack entry needs: its destination for a forward
    /// entry (a ClusterSetIP), its source for a reply entry (a backend).
    pub fn of_flow<A: NetAddr>(key: &CtKeyOf<A>, value: &CtValueOf<A>) -> Self {
        if value.is_reply() {
            Self::of(Role::Source, key.saddr)
        } else {
            Self::of(Role::Destination, key.daddr)
        }
    }

    /// The member's bit in the bitmap.
    pub const fn bit(self) -> u32 {
        prefilter::bit(self.addr, self.role)
    }
}

/// `(role, address in network order)`, as callers wrote members before
/// they were a struct.
impl From<(Role, u32)> for Member {
    fn from((role, addr): (Role, u32)) -> Self {
        Self { role, addr }
    }
}

/// A bit to set or clear in the bitmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitChange {
    Set(u32),
    Clear(u32),
}

/// The member bookkeeping (pure: no map).
#[derive(Clone, Debug, Default)]
pub struct Members {
    refs: HashMap<Member, u32>,
    lingering: HashMap<Member, Instant>,
    bits: HashMap<u32, u32>,
}

impl Members {
    fn add(&mut self, member: Member) -> Option<BitChange> {
        let bit = member.bit();
        let count = self.bits.entry(bit).or_insert(0);
        *count += 1;
        (*count == 1).then_some(BitChange::Set(bit))
    }

    fn remove(&mut self, member: Member) -> Option<BitChange> {
        let bit = member.bit();
        let count = self.bits.get_mut(&bit)?;
        *count -= 1;
        if *count == 0 {
            self.bits.remove(&bit);
            Some(BitChange::Clear(bit))
        } else {
            None
        }
    }

    /// One more map entry needs `member`.
    pub fn reference(&mut self, member: Member) -> Option<BitChange> {
        let refs = self.refs.entry(member).or_insert(0);
        *refs += 1;
        if *refs > 1 || self.lingering.remove(&member).is_some() {
            return None; // already a member
        }
        self.add(member)
    }

    /// One map entry needing `member` went; the member lingers when it was
    /// the last one.
    pub fn release(&mut self, member: Member, now: Instant) {
        match self.refs.get_mut(&member) {
            Some(refs) if *refs > 1 => *refs -= 1,
            Some(_) => {
                self.refs.remove(&member);
                self.lingering.insert(member, now);
            }
            None => {}
        }
    }

    /// A member that only conntrack needs (rebuild after adoption).
    pub fn linger(&mut self, member: Member, now: Instant) -> Option<BitChange> {
        if self.refs.contains_key(&member) || self.lingering.contains_key(&member) {
            return None;
        }
        self.lingering.insert(member, now);
        self.add(member)
    }

    /// Whether a sweep could release something at `now`.
    pub fn sweep_due(&self, now: Instant) -> bool {
        self.lingering
            .values()
            .any(|since| now.saturating_duration_since(*since) >= GRACE)
    }

    /// Releases lingering members that lost their last reference at least
    /// [`GRACE`] before `scan_started` and that no conntrack entry of the
    /// scan (`live`) needs.
    pub fn sweep(&mut self, live: &HashSet<Member>, scan_started: Instant) -> Vec<BitChange> {
        let released: Vec<Member> = self
            .lingering
            .iter()
            .filter(|(member, since)| {
                scan_started.saturating_duration_since(**since) >= GRACE && !live.contains(member)
            })
            .map(|(member, _)| *member)
            .collect();
        released
            .into_iter()
            .filter_map(|member| {
                self.lingering.remove(&member);
                self.remove(member)
            })
            .collect()
    }

    pub fn is_member(&self, member: &Member) -> bool {
        self.refs.contains_key(member) || self.lingering.contains_key(member)
    }

    pub fn lingering(&self) -> usize {
        self.lingering.len()
    }

    /// Every set bit.
    pub fn bits(&self) -> impl Iterator<Item = u32> + '_ {
        self.bits.keys().copied()
    }
}

/// The map keys already counted, so a rewrite of an entry is not counted
/// twice and a delete releases exactly what the put referenced.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    pub members: Members,
    services: HashSet<ServiceKey>,
    services_v6: HashSet<ServiceKeyV6>,
    /// The member each backend slot references.
    backends: HashMap<BackendKey, Member>,
}

impl Tracker {
    /// Before a service entry is written.
    pub fn put_service(&mut self, key: &ServiceKey) -> Option<BitChange> {
        if self.services.insert(*key) {
            self.members.reference(Member::of_service(key))
        } else {
            None
        }
    }

    /// After a service entry was deleted.
    pub fn delete_service(&mut self, key: &ServiceKey, now: Instant) {
        if self.services.remove(key) {
            self.members.release(Member::of_service(key), now);
        }
    }

    /// Before an IPv6 service entry is written.
    pub fn put_service_v6(&mut self, key: &ServiceKeyV6) -> Option<BitChange> {
        if self.services_v6.insert(*key) {
            self.members.reference(Member::of_service(key))
        } else {
            None
        }
    }

    /// After an IPv6 service entry was deleted.
    pub fn delete_service_v6(&mut self, key: &ServiceKeyV6, now: Instant) {
        if self.services_v6.remove(key) {
            self.members.release(Member::of_service(key), now);
        }
    }

    /// Before a backend slot (of either family: the slots of IPv4 and IPv6
    /// frontends never share a key) is written.
    pub fn put_backend<A: NetAddr>(
        &mut self,
        key: &BackendKey,
        value: &BackendValueOf<A>,
        now: Instant,
    ) -> Option<BitChange> {
        let member = Member::of_backend(value);
        match self.backends.insert(*key, member) {
            Some(old) if old == member => None,
            old => {
                let change = self.members.reference(member);
                if let Some(old) = old {
                    self.members.release(old, now);
                }
                change
            }
        }
    }

    /// After a backend slot was deleted.
    pub fn delete_backend(&mut self, key: &BackendKey, now: Instant) {
        if let Some(member) = self.backends.remove(key) {
            self.members.release(member, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use std::net::SocketAddrV6;

    use mcs_common::{
        BackendValue, BackendValueV6, CT_F_REPLY, CtKey, CtKeyV6, CtValue, CtValueV6, PROTO_TCP,
        byte_order::fold6,
    };
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        PutService(u8, u8),
        DeleteService(u8, u8),
        PutBackend(u8, u8),
        DeleteBackend(u8),
        /// Conntrack gains a flow through a currently referenced member.
        Flow(bool, u8),
        /// Conntrack loses a flow.
        FlowEnds(u8),
        /// Time passes (seconds).
        Wait(u8),
        Sweep,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few addresses, so keys share them and bits collide.
        prop_oneof![
            (0..6u8, 0..3u8).prop_map(|(a, p)| Op::PutService(a, p)),
            (0..6u8, 0..3u8).prop_map(|(a, p)| Op::DeleteService(a, p)),
            (0..8u8, 0..6u8).prop_map(|(s, a)| Op::PutBackend(s, a)),
            (0..8u8).prop_map(Op::DeleteBackend),
            (any::<bool>(), 0..6u8).prop_map(|(r, a)| Op::Flow(r, a)),
            (0..16u8).prop_map(Op::FlowEnds),
            (0..3u8).prop_map(Op::Wait),
            Just(Op::Sweep),
        ]
    }

    fn addr(a: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 96, 0, a)
    }

    fn bits_of(members: &HashSet<Member>) -> HashSet<u32> {
        members.iter().map(|member| member.bit()).collect()
    }

    proptest! {
        /// Every member the maps or conntrack need has its bit set (no false
        /// negatives), and a sweep after everything lingered long enough
        /// leaves exactly the needed bits (deletions are exact).
        #[test]
        fn bits_cover_every_need_and_sweeps_are_exact(ops in proptest::collection::vec(op(), 1..80)) {
            let start = Instant::now();
            let mut now = start;
            let mut tracker = Tracker::default();
            let mut bits: HashSet<u32> = HashSet::new();
            let mut services: HashSet<ServiceKey> = HashSet::new();
            let mut backends: HashMap<BackendKey, Ipv4Addr> = HashMap::new();
            let mut flows: Vec<Member> = Vec::new();
            let apply = |bits: &mut HashSet<u32>, change: Option<BitChange>| match change {
                Some(BitChange::Set(bit)) => { bits.insert(bit); }
                Some(BitChange::Clear(bit)) => { bits.remove(&bit); }
                None => {}
            };
            for op in ops {
                match op {
                    Op::PutService(a, p) => {
                        let key = ServiceKey::new(addr(a), u16::from(p), 6);
                        apply(&mut bits, tracker.put_service(&key));
                        services.insert(key);
                    }
                    Op::DeleteService(a, p) => {
                        let key = ServiceKey::new(addr(a), u16::from(p), 6);
                        services.remove(&key);
                        tracker.delete_service(&key, now);
                    }
                    Op::PutBackend(s, a) => {
                        let key = BackendKey { frontend_id: 0, slot: u32::from(s) };
                        let value = BackendValue::new(SocketAddrV4::new(addr(a + 100), 0), 0, 0, 0);
                        apply(&mut bits, tracker.put_backend(&key, &value, now));
                        backends.insert(key, value.addr());
                    }
                    Op::DeleteBackend(s) => {
                        let key = BackendKey { frontend_id: 0, slot: u32::from(s) };
                        backends.remove(&key);
                        tracker.delete_backend(&key, now);
                    }
                    Op::Flow(reply, a) => {
                        // The datapath creates flows only through members
                        // the maps reference at that moment.
                        let (role, address) = if reply { (Role::Source, addr(a + 100)) } else { (Role::Destination, addr(a)) };
                        let referenced = match role {
                            Role::Destination => services.iter().any(|k| k.addr() == address),
                            Role::Source => backends.values().any(|b| *b == address),
                        };
                        if referenced {
                            flows.push(Member::new(role, address));
                        }
                    }
                    Op::FlowEnds(i) => {
                        if !flows.is_empty() {
                            flows.remove(usize::from(i) % flows.len());
                        }
                    }
                    Op::Wait(s) => now += Duration::from_secs(u64::from(s)),
                    Op::Sweep => {
                        let live: HashSet<Member> = flows.iter().copied().collect();
                        for change in tracker.members.sweep(&live, now) {
                            apply(&mut bits, Some(change));
                        }
                    }
                }
                let mut needed: HashSet<Member> = flows.iter().copied().collect();
                needed.extend(services.iter().map(|k| Member::destination(k.addr())));
                needed.extend(backends.values().map(|a| Member::source(*a)));
                for member in &needed {
                    prop_assert!(tracker.members.is_member(member), "{member:?} dropped");
                    prop_assert!(bits.contains(&member.bit()), "{member:?} has no bit");
                }
                let tracked: HashSet<u32> = tracker.members.bits().collect();
                prop_assert_eq!(&tracked, &bits);
            }
            // Long after: a sweep leaves exactly what is needed.
            now += GRACE;
            let live: HashSet<Member> = flows.iter().copied().collect();
            for change in tracker.members.sweep(&live, now) {
                apply(&mut bits, Some(change));
            }
            let mut referenced: HashSet<Member> = services.iter().map(|k| Member::destination(k.addr())).collect();
            referenced.extend(backends.values().map(|a| Member::source(*a)));
            // Only what conntrack alone needs still lingers.
            prop_assert_eq!(tracker.members.lingering(), live.difference(&referenced).count());
            let needed: HashSet<Member> = referenced.union(&live).copied().collect();
            prop_assert_eq!(bits, bits_of(&needed));
        }
    }

    #[test]
    fn a_flow_needs_its_cluster_set_ip_or_its_backend() {
        let client = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 2), 40000);
        let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
        let backend = SocketAddrV4::new(Ipv4Addr::new(10, 101, 1, 10), 8080);
        let key = CtKey::new(client, vip, PROTO_TCP);
        let value = CtValue::new(backend, 0, 0, backend, 0);
        assert_eq!(
            Member::of_flow(&key, &value),
            Member::destination(*vip.ip())
        );
        let key = CtKey::new(backend, client, PROTO_TCP);
        let value = CtValue::new(vip, CT_F_REPLY, 0, backend, 0);
        assert_eq!(Member::of_flow(&key, &value), Member::source(*backend.ip()));
        // The tuple form names the same member.
        let raw = (Role::Source, net_addr(*backend.ip()));
        assert_eq!(Member::from(raw), Member::source(*backend.ip()));
    }

    #[test]
    fn an_ipv6_address_is_a_member_by_its_fold() {
        let ep = |addr: &str, port| SocketAddrV6::new(addr.parse().unwrap(), port, 0, 0);
        let (client, vip, backend) = (
            ep("fd00:1::2", 40000),
            ep("fd00:96::a", 80),
            ep("fd00:101:1::10", 8080),
        );
        let member = Member::new6(Role::Destination, *vip.ip());
        assert_eq!(member.addr, fold6(net_addr6(*vip.ip())));
        let key = CtKeyV6::new(client, vip, PROTO_TCP);
        let value = CtValueV6::new(backend, 0, 0, backend, 0);
        assert_eq!(Member::of_flow(&key, &value), member);
        let key = CtKeyV6::new(backend, client, PROTO_TCP);
        let value = CtValueV6::new(vip, CT_F_REPLY, 0, backend, 0);
        let source = Member::new6(Role::Source, *backend.ip());
        assert_eq!(Member::of_flow(&key, &value), source);
        let slot = BackendValueV6::new(backend, 0, 0, 0);
        assert_eq!(Member::of_backend(&slot), source);
        assert_eq!(
            Member::of_service(&ServiceKeyV6::new(*vip.ip(), 80, PROTO_TCP)),
            member
        );

        let mut tracker = Tracker::default();
        let key = ServiceKeyV6::new(*vip.ip(), 80, PROTO_TCP);
        assert_eq!(
            tracker.put_service_v6(&key),
            Some(BitChange::Set(member.bit()))
        );
        assert_eq!(tracker.put_service_v6(&key), None, "counted once");
        tracker.delete_service_v6(&key, Instant::now());
        assert_eq!(tracker.members.lingering(), 1);
    }

    #[test]
    fn a_released_member_lingers_through_the_grace_period() {
        let start = Instant::now();
        let mut members = Members::default();
        let member = Member::source(Ipv4Addr::new(10, 101, 1, 7));
        assert!(matches!(members.reference(member), Some(BitChange::Set(_))));
        members.release(member, start);
        // Not needed by conntrack, but released only after the grace.
        assert!(members.sweep(&HashSet::new(), start).is_empty());
        assert!(!members.sweep_due(start));
        assert!(members.sweep_due(start + GRACE));
        // Needed by conntrack: kept.
        let live = HashSet::from([member]);
        assert!(members.sweep(&live, start + GRACE).is_empty());
        assert_eq!(
            members.sweep(&HashSet::new(), start + GRACE),
            vec![BitChange::Clear(member.bit())]
        );
        assert!(!members.is_member(&member));
    }
}
