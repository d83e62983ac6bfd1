//! Socket-LB reverse translations (`MCS_SOCK_REV_V2`): what a socket
//! connected to a backend must see instead (`recvmsg`, `getpeername`).
//!
//! `_V2` (`_V1` had no protocol and no timestamp): entries carry when they
//! were last used, so the agent's conntrack janitor ages them out like
//! conntrack entries of their protocol.

use core::{mem::size_of, net::SocketAddrV4};

use crate::byte_order::{endpoint, net_addr, net_port};

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

const _: () = assert!(size_of::<SockRevKey>() == 16);
const _: () = assert!(size_of::<SockRevValue>() == 24);

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
}
