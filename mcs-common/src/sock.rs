//! Socket-LB reverse translations (`MCS_SOCK_REV_V2`): what a socket
//! connected to a backend must see instead (`recvmsg`, `getpeername`).
//!
//! `_V2` (`_V1` had no protocol and no timestamp): entries carry when they
//! were last used, so the agent's conntrack janitor ages them out like
//! conntrack entries of their protocol.
//!
//! IPv6 sockets have `MCS_SOCK_REV_V6` ([`SockRevKeyV6`],
//! [`SockRevValueV6`]), keyed by the address as the socket sees it: an
//! IPv4-mapped one (`::ffff:a.b.c.d`) when a v6 socket talks to an IPv4
//! ClusterSetIP.

use core::{
    mem::size_of,
    net::{SocketAddrV4, SocketAddrV6},
};

use crate::byte_order::{Addr6, endpoint, endpoint6, net_addr, net_addr6, net_port};

/// Socket-LB reverse key: a socket and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    pub cookie: u64,
    /// Backend address and port, network order.
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

impl SockRevKey {
    /// The key of socket `cookie` talking to `backend` (port in host order).
    pub const fn new(cookie: u64, backend: SocketAddrV4) -> Self {
        Self {
            cookie,
            addr: net_addr(*backend.ip()),
            port: net_port(backend.port()),
            _pad: 0,
        }
    }

    /// The backend the socket talks to.
    pub const fn backend(&self) -> SocketAddrV4 {
        endpoint(self.addr, self.port)
    }
}

/// What the application must see instead of the backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevValue {
    /// ClusterSetIP and service port, network order.
    pub vip: u32,
    pub vport: u16,
    /// IP protocol of the socket (`PROTO_TCP`, `PROTO_UDP`).
    pub proto: u8,
    pub _pad: u8,
    pub frontend_id: u32,
    pub _pad2: u32,
    /// Coarse-clock nanoseconds of the last translation or lookup
    /// (`ClockValue`), refreshed at most once a second.
    pub last_used_ns: u64,
}

impl SockRevValue {
    /// The ClusterSetIP and service port `service` (host order) of
    /// `frontend_id`, for a socket of protocol `proto`, never used yet.
    pub const fn new(service: SocketAddrV4, proto: u8, frontend_id: u32) -> Self {
        Self {
            vip: net_addr(*service.ip()),
            vport: net_port(service.port()),
            proto,
            _pad: 0,
            frontend_id,
            _pad2: 0,
            last_used_ns: 0,
        }
    }

    /// The ClusterSetIP and service port the application sees.
    pub const fn service(&self) -> SocketAddrV4 {
        endpoint(self.vip, self.vport)
    }
}

/// [`SockRevKey`] of an IPv6 socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevKeyV6 {
    pub cookie: u64,
    /// Backend address (as the socket sees it) and port, network order.
    pub addr: Addr6,
    pub port: u16,
    pub _pad: u16,
    pub _pad2: u32,
}

impl SockRevKeyV6 {
    /// The key of socket `cookie` talking to `backend` (port in host order).
    pub const fn new(cookie: u64, backend: SocketAddrV6) -> Self {
        Self {
            cookie,
            addr: net_addr6(*backend.ip()),
            port: net_port(backend.port()),
            _pad: 0,
            _pad2: 0,
        }
    }

    /// The backend the socket talks to.
    pub const fn backend(&self) -> SocketAddrV6 {
        endpoint6(self.addr, self.port)
    }
}

/// [`SockRevValue`] of an IPv6 socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevValueV6 {
    /// ClusterSetIP (as the socket addressed it) and service port, network
    /// order.
    pub vip: Addr6,
    pub vport: u16,
    /// IP protocol of the socket (`PROTO_TCP`, `PROTO_UDP`).
    pub proto: u8,
    pub _pad: u8,
    pub frontend_id: u32,
    /// As [`SockRevValue::last_used_ns`].
    pub last_used_ns: u64,
}

impl SockRevValueV6 {
    /// As [`SockRevValue::new`].
    pub const fn new(service: SocketAddrV6, proto: u8, frontend_id: u32) -> Self {
        Self {
            vip: net_addr6(*service.ip()),
            vport: net_port(service.port()),
            proto,
            _pad: 0,
            frontend_id,
            last_used_ns: 0,
        }
    }

    /// The ClusterSetIP and service port the application sees.
    pub const fn service(&self) -> SocketAddrV6 {
        endpoint6(self.vip, self.vport)
    }
}

/// The first three words of an IPv4-mapped IPv6 address (`::ffff:0:0/96`,
/// RFC 4291 §2.5.5.2), in the maps' form.
pub const V4_MAPPED_PREFIX: [u32; 3] = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff])];

/// The IPv4 address inside an IPv4-mapped IPv6 address (maps' form).
pub const fn v4_mapped(addr: Addr6) -> Option<u32> {
    if addr[0] == V4_MAPPED_PREFIX[0]
        && addr[1] == V4_MAPPED_PREFIX[1]
        && addr[2] == V4_MAPPED_PREFIX[2]
    {
        Some(addr[3])
    } else {
        None
    }
}

const _: () = assert!(size_of::<SockRevKey>() == 16);
const _: () = assert!(size_of::<SockRevValue>() == 24);
// No padding holes: the fields add up to the size.
const _: () = assert!(size_of::<SockRevKeyV6>() == 8 + 16 + 2 + 2 + 4);
const _: () = assert!(size_of::<SockRevValueV6>() == 16 + 2 + 1 + 1 + 4 + 8);

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;

    use super::*;

    #[test]
    fn accessors_round_trip_and_store_packet_order() {
        let backend = SocketAddrV4::new(Ipv4Addr::new(10, 101, 1, 10), 8080);
        let key = SockRevKey::new(42, backend);
        assert_eq!((key.cookie, key.backend()), (42, backend));
        assert_eq!(key.addr.to_ne_bytes(), [10, 101, 1, 10]);
        let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 53);
        let value = SockRevValue::new(vip, crate::PROTO_UDP, 9);
        assert_eq!((value.service(), value.frontend_id), (vip, 9));
        assert_eq!(value.proto, crate::PROTO_UDP);
        assert_eq!(value.vport.to_ne_bytes(), [0, 53]);
    }

    #[test]
    fn v6_accessors_round_trip_and_mapped_addresses_are_told_apart() {
        use core::net::Ipv6Addr;
        let backend = SocketAddrV6::new("fd00:101::10".parse().unwrap(), 8080, 0, 0);
        let key = SockRevKeyV6::new(7, backend);
        assert_eq!((key.cookie, key.backend()), (7, backend));
        let vip = SocketAddrV6::new("fd00:96::a".parse().unwrap(), 53, 0, 0);
        let value = SockRevValueV6::new(vip, crate::PROTO_UDP, 3);
        assert_eq!((value.service(), value.frontend_id), (vip, 3));
        let mapped = Ipv4Addr::new(10, 96, 0, 10).to_ipv6_mapped();
        assert_eq!(
            v4_mapped(net_addr6(mapped)),
            Some(net_addr(Ipv4Addr::new(10, 96, 0, 10)))
        );
        for other in [
            "fd00:96::a",
            "::a60:a",
            "::ffff:0:0:a60:a",
            "64:ff9b::a60:a",
        ] {
            let addr: Ipv6Addr = other.parse().unwrap();
            assert_eq!(v4_mapped(net_addr6(addr)), None, "{other}");
        }
    }
}
