//! Conntrack entries (`MCS_CT_V1`, IPv6: `MCS_CT_V6`): one per direction of
//! a translated flow. Generic over the address family ([`NetAddr`]):
//! `CtKey`/`CtValue` are the IPv4 instantiations, `CtKeyV6`/`CtValueV6` the
//! IPv6 ones, with the same rules.

use core::mem::size_of;

use crate::byte_order::{Addr6, NetAddr};

/// Conntrack key: the 5-tuple exactly as the packet carries it. Forward
/// entries are keyed client→ClusterSetIP, reply entries backend→client.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKeyOf<A> {
    /// Addresses and ports, network order.
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// IPv4 conntrack key (`MCS_CT_V1`).
pub type CtKey = CtKeyOf<u32>;
/// IPv6 conntrack key (`MCS_CT_V6`).
pub type CtKeyV6 = CtKeyOf<Addr6>;

impl<A: NetAddr> CtKeyOf<A> {
    /// The key of a packet from `src` to `dst` (ports in host order).
    pub fn new(src: A::Endpoint, dst: A::Endpoint, proto: u8) -> Self {
        let (saddr, sport) = A::from_endpoint(src);
        let (daddr, dport) = A::from_endpoint(dst);
        Self {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            _pad: [0; 3],
        }
    }

    /// The packet's source.
    pub fn src(&self) -> A::Endpoint {
        self.saddr.endpoint(self.sport)
    }

    /// The packet's destination.
    pub fn dst(&self) -> A::Endpoint {
        self.daddr.endpoint(self.dport)
    }
}

/// Conntrack value: the address and port to write into the packet.
/// For a forward entry that is the backend (destination); for a reply entry
/// the ClusterSetIP and service port (source).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtValueOf<A> {
    /// Address and port written into the packet, network order.
    pub nat_addr: A,
    pub nat_port: u16,
    pub _pad: u16,
    /// `CT_F_*` bits.
    pub flags: u32,
    pub frontend_id: u32,
    /// Backend (pod) address of this flow, network order; lets the agent
    /// find and remove flows of a backend that went away.
    pub backend_addr: A,
    pub backend_port: u16,
    pub _pad2: u16,
    /// Per-backend counter index of the flow's backend.
    pub backend_id: u32,
    pub _pad3: u32,
    /// Coarse-clock nanoseconds of the last packet (`ClockValue`).
    pub last_seen_ns: u64,
}

/// IPv4 conntrack entry (`MCS_CT_V1`).
pub type CtValue = CtValueOf<u32>;
/// IPv6 conntrack entry (`MCS_CT_V6`).
pub type CtValueV6 = CtValueOf<Addr6>;

impl<A: NetAddr> CtValueOf<A> {
    /// An entry writing `nat` into the packet, of a flow of `frontend_id`
    /// to `backend` (its counter index `backend_id`); never seen yet.
    pub fn new(
        nat: A::Endpoint,
        flags: u32,
        frontend_id: u32,
        backend: A::Endpoint,
        backend_id: u32,
    ) -> Self {
        let (nat_addr, nat_port) = A::from_endpoint(nat);
        let (backend_addr, backend_port) = A::from_endpoint(backend);
        Self {
            nat_addr,
            nat_port,
            _pad: 0,
            flags,
            frontend_id,
            backend_addr,
            backend_port,
            _pad2: 0,
            backend_id,
            _pad3: 0,
            last_seen_ns: 0,
        }
    }

    /// This entry writing `nat` into the packet instead.
    pub fn with_nat(mut self, nat: A::Endpoint) -> Self {
        (self.nat_addr, self.nat_port) = A::from_endpoint(nat);
        self
    }

    /// What the packet's destination (forward) or source (reply) becomes.
    pub fn nat(&self) -> A::Endpoint {
        self.nat_addr.endpoint(self.nat_port)
    }

    /// The flow's backend.
    pub fn backend(&self) -> A::Endpoint {
        self.backend_addr.endpoint(self.backend_port)
    }
}

impl<A: NetAddr> CtValueOf<A> {
    /// Whether the entry translates replies (source rewrite).
    pub const fn is_reply(&self) -> bool {
        self.flags & CT_F_REPLY != 0
    }

    /// The key of the flow's other direction, given this entry's own key:
    /// a forward entry's partner is keyed backend→client, a reply entry's
    /// client→ClusterSetIP (the reply entry's `nat`).
    pub fn partner_key(&self, key: &CtKeyOf<A>) -> CtKeyOf<A> {
        if self.is_reply() {
            CtKeyOf {
                saddr: key.daddr,
                daddr: self.nat_addr,
                sport: key.dport,
                dport: self.nat_port,
                proto: key.proto,
                _pad: [0; 3],
            }
        } else {
            CtKeyOf {
                saddr: self.backend_addr,
                daddr: key.saddr,
                sport: self.backend_port,
                dport: key.sport,
                proto: key.proto,
                _pad: [0; 3],
            }
        }
    }

    /// Whether `other` is the other direction of this entry's flow: the
    /// opposite direction, with the same frontend and backend.
    pub fn pairs_with(&self, other: &Self) -> bool {
        self.is_reply() != other.is_reply()
            && self.frontend_id == other.frontend_id
            && self.backend_addr == other.backend_addr
            && self.backend_port == other.backend_port
    }
}

/// `CtValue::flags`: entry translates replies (source rewrite).
pub const CT_F_REPLY: u32 = 1 << 0;
/// `CtValue::flags`: a TCP SYN was seen for this flow.
pub const CT_F_SYN: u32 = 1 << 1;
/// `CtValue::flags`: a TCP FIN was seen.
pub const CT_F_FIN: u32 = 1 << 2;
/// `CtValue::flags`: a TCP RST was seen.
pub const CT_F_RST: u32 = 1 << 3;
/// `CtValue::flags`: a packet without SYN was seen in this direction — for
/// TCP, the handshake completed (or the flow was picked up mid-way). Set on
/// every UDP entry too (no SYN there); expiry reads it for TCP only.
/// Added after the first layout: entries written before it lack it, which
/// only makes their flow look younger to expiry (the SYN class) until its
/// next packet without SYN sets it.
pub const CT_F_SEEN_NON_SYN: u32 = 1 << 4;

const _: () = assert!(size_of::<CtKey>() == 16);
const _: () = assert!(size_of::<CtValue>() == 40);
const _: () = assert!(size_of::<CtKeyV6>() == 40);
const _: () = assert!(size_of::<CtValueV6>() == 64);

#[cfg(test)]
mod tests {
    use core::net::{Ipv4Addr, SocketAddrV4, SocketAddrV6};

    use super::*;
    use crate::PROTO_TCP;

    #[test]
    fn accessors_round_trip_and_store_packet_order() {
        let client = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 2), 40000);
        let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
        let backend = SocketAddrV4::new(Ipv4Addr::new(10, 101, 1, 10), 8080);
        let key = CtKey::new(client, vip, PROTO_TCP);
        assert_eq!((key.src(), key.dst()), (client, vip));
        assert_eq!(key.saddr.to_ne_bytes(), [10, 1, 0, 2]);
        assert_eq!(key.dport.to_ne_bytes(), [0, 80]);

        let value = CtValue::new(backend, CT_F_SYN, 3, backend, 5);
        assert_eq!((value.nat(), value.backend()), (backend, backend));
        assert!(!value.is_reply());
        let reply = CtValue {
            flags: CT_F_REPLY,
            ..value.with_nat(vip)
        };
        assert_eq!((reply.nat(), reply.backend()), (vip, backend));
        assert!(reply.is_reply());
        assert_eq!(reply.nat_port.to_ne_bytes(), [0, 80]);

        // Each direction names the other's key.
        let reply_key = CtKey::new(backend, client, PROTO_TCP);
        assert_eq!(value.partner_key(&key), reply_key);
        assert_eq!(reply.partner_key(&reply_key), key);
        assert!(value.pairs_with(&reply) && reply.pairs_with(&value));
        assert!(!value.pairs_with(&value));
        let elsewhere = CtValue::new(backend, CT_F_REPLY, 4, backend, 5).with_nat(vip);
        assert!(!value.pairs_with(&elsewhere), "another frontend");
    }

    #[test]
    fn ipv6_entries_name_their_partners() {
        let ep = |addr: &str, port| SocketAddrV6::new(addr.parse().unwrap(), port, 0, 0);
        let (client, vip, backend) = (
            ep("fd00:1::2", 40000),
            ep("fd00:96::a", 80),
            ep("fd00:101:1::10", 8080),
        );
        let key = CtKeyV6::new(client, vip, PROTO_TCP);
        assert_eq!((key.src(), key.dst()), (client, vip));
        let value = CtValueV6::new(backend, CT_F_SYN, 3, backend, 5);
        let reply = CtValueV6 {
            flags: CT_F_REPLY,
            ..value.with_nat(vip)
        };
        assert_eq!((reply.nat(), reply.backend()), (vip, backend));
        let reply_key = CtKeyV6::new(backend, client, PROTO_TCP);
        assert_eq!(value.partner_key(&key), reply_key);
        assert_eq!(reply.partner_key(&reply_key), key);
        assert!(value.pairs_with(&reply));
    }
}
