//! Frontends and their backends: what a new flow's lookup reads
//! (`MCS_SVC_V2`, `MCS_BACKEND_V2`, `MCS_AFFINITY_V1`; the Maglev tables
//! of `MCS_MAGLEV_V2` are in [`crate::maglev`]).
//!
//! The types holding an address are generic over its family
//! ([`NetAddr`]): `ServiceKey` is `ServiceKeyOf<u32>` (IPv4), and
//! `ServiceKeyV6` is `ServiceKeyOf<Addr6>`, the key of `MCS_SVC_V6`; the
//! same for backends and affinity. IPv6 lives in maps of its own, so IPv4
//! entries keep their size. An IPv6 frontend takes its id from the same
//! space as an IPv4 one: the maps indexed by frontend id (counters, names,
//! the Maglev table's place) are shared, and its backends are all IPv6
//! (a client reaches the backends of its own family).

use core::{
    mem::size_of,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
};

use crate::{
    byte_order::{
        Addr6, NetAddr, endpoint, endpoint6, host_port, ipv4, ipv6, net_addr, net_addr6, net_port,
    },
    maglev::MaglevPlace,
};

/// Maximum backends of one frontend: each owns at least 16 entries of the
/// largest Maglev table (`MAGLEV_MAX_TABLE_SIZE`).
pub const MAX_BACKENDS_PER_FRONTEND: u32 = 1021;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Frontend key: a ClusterSetIP, a service port and its protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKeyOf<A> {
    /// ClusterSetIP, network order.
    pub addr: A,
    /// Service port, network order.
    pub port: u16,
    /// IP protocol number ([`PROTO_TCP`] or [`PROTO_UDP`]).
    pub proto: u8,
    pub _pad: u8,
}

/// IPv4 frontend key (`MCS_SVC_V2`).
pub type ServiceKey = ServiceKeyOf<u32>;
/// IPv6 frontend key (`MCS_SVC_V6`).
pub type ServiceKeyV6 = ServiceKeyOf<Addr6>;

impl<A: NetAddr> ServiceKeyOf<A> {
    /// The key the datapath looks up for a packet (all network order).
    #[inline(always)]
    pub fn raw(addr: A, port: u16, proto: u8) -> Self {
        Self {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }

    /// The service port, host order.
    pub const fn port(&self) -> u16 {
        host_port(self.port)
    }
}

impl ServiceKeyV6 {
    /// The key of `[addr]:port/proto` (`port` in host order).
    pub const fn new(addr: Ipv6Addr, port: u16, proto: u8) -> Self {
        Self {
            addr: net_addr6(addr),
            port: net_port(port),
            proto,
            _pad: 0,
        }
    }

    /// The ClusterSetIP.
    pub const fn addr(&self) -> Ipv6Addr {
        ipv6(self.addr)
    }
}

impl ServiceKey {
    /// The key of `addr:port/proto` (`port` in host order).
    pub const fn new(addr: Ipv4Addr, port: u16, proto: u8) -> Self {
        Self {
            addr: net_addr(addr),
            port: net_port(port),
            proto,
            _pad: 0,
        }
    }

    /// The ClusterSetIP.
    pub const fn addr(&self) -> Ipv4Addr {
        ipv4(self.addr)
    }
}

/// A frontend: its id (index into per-frontend maps), how many backend
/// slots it has and where its Maglev table is. `backend_count == 0` means
/// "known service, no endpoint" (and no table).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    pub frontend_id: u32,
    pub backend_count: u32,
    /// `SVC_F_*` bits.
    pub flags: u32,
    /// ClientIP session affinity timeout (with [`SVC_F_AFFINITY`]).
    pub affinity_timeout_s: u32,
    /// First chunk of the Maglev table in `MCS_MAGLEV_V2`.
    pub maglev_base: u32,
    /// Entries of the Maglev table (a prime; 0: no table). Two bytes each
    /// with [`SVC_F_MAGLEV_WIDE`], else one.
    pub maglev_size: u32,
}

impl ServiceValue {
    /// Whether the table's entries are two bytes wide.
    pub const fn maglev_wide(&self) -> bool {
        self.flags & SVC_F_MAGLEV_WIDE != 0
    }

    /// Where the frontend's Maglev table is (`None`: it has none).
    pub const fn maglev(&self) -> Option<MaglevPlace> {
        if self.maglev_size == 0 {
            None
        } else {
            Some(MaglevPlace {
                base: self.maglev_base,
                size: self.maglev_size,
                wide: self.maglev_wide(),
            })
        }
    }

    /// The same frontend with its table at `place` (or without table).
    pub const fn with_maglev(mut self, place: Option<MaglevPlace>) -> Self {
        self.flags &= !SVC_F_MAGLEV_WIDE;
        match place {
            Some(place) => {
                self.maglev_base = place.base;
                self.maglev_size = place.size;
                if place.wide {
                    self.flags |= SVC_F_MAGLEV_WIDE;
                }
            }
            None => {
                self.maglev_base = 0;
                self.maglev_size = 0;
            }
        }
        self
    }
}

/// `ServiceValue::flags`: no option.
pub const SVC_F_NONE: u32 = 0;
/// `ServiceValue::flags`: port-0 marker saying the address is a ClusterSetIP.
pub const SVC_F_VIP_MARKER: u32 = 1 << 0;
/// `ServiceValue::flags`: `sessionAffinity: ClientIP`.
pub const SVC_F_AFFINITY: u32 = 1 << 1;
/// `ServiceValue::flags`: Maglev entries are two bytes (more than
/// `MAGLEV_NARROW_SLOTS` backends).
pub const SVC_F_MAGLEV_WIDE: u32 = 1 << 2;

/// One backend slot of a frontend; slots are `0..backend_count`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub frontend_id: u32,
    pub slot: u32,
}

/// A backend endpoint: pod IP and target port, possibly in another cluster.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendValueOf<A> {
    /// Pod IP, network order.
    pub addr: A,
    /// Target port, network order.
    pub port: u16,
    pub _pad: u16,
    /// Index into the cluster names (`MCS_CLUSTERS`).
    pub cluster_id: u32,
    /// `BACKEND_F_*` bits.
    pub flags: u32,
    /// Index into the per-backend counters (same for every frontend the
    /// endpoint backs).
    pub backend_id: u32,
    pub _pad2: u32,
}

/// IPv4 backend (`MCS_BACKEND_V2`).
pub type BackendValue = BackendValueOf<u32>;
/// IPv6 backend (`MCS_BACKEND_V6`, same [`BackendKey`]s: an IPv6
/// frontend's slots).
pub type BackendValueV6 = BackendValueOf<Addr6>;

impl<A: NetAddr> BackendValueOf<A> {
    /// The backend `endpoint` (port in host order).
    pub fn new(endpoint: A::Endpoint, cluster_id: u32, flags: u32, backend_id: u32) -> Self {
        let (addr, port) = A::from_endpoint(endpoint);
        Self {
            addr,
            port,
            _pad: 0,
            cluster_id,
            flags,
            backend_id,
            _pad2: 0,
        }
    }

    /// The target port, host order.
    pub const fn port(&self) -> u16 {
        host_port(self.port)
    }

    /// The pod IP.
    pub fn addr(&self) -> A::Std {
        self.addr.to_std()
    }

    /// Pod IP and target port.
    pub fn endpoint(&self) -> A::Endpoint {
        self.addr.endpoint(self.port)
    }
}

/// `BackendValue::flags`: the endpoint is ready (serves new flows).
pub const BACKEND_F_READY: u32 = 1 << 0;
/// `BackendValue::flags`: serving but terminating; used only while the
/// frontend has no ready endpoint (KEP-1669 fallback).
pub const BACKEND_F_TERMINATING: u32 = 1 << 1;

/// Session-affinity key: frontend and client address (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKeyOf<A> {
    pub frontend_id: u32,
    pub client_addr: A,
}

/// IPv4 session-affinity key (`MCS_AFFINITY_V1`).
pub type AffinityKey = AffinityKeyOf<u32>;
/// IPv6 session-affinity key (`MCS_AFFINITY_V6`).
pub type AffinityKeyV6 = AffinityKeyOf<Addr6>;

impl AffinityKeyV6 {
    pub const fn new(frontend_id: u32, client: Ipv6Addr) -> Self {
        Self {
            frontend_id,
            client_addr: net_addr6(client),
        }
    }

    /// The client the binding is for.
    pub const fn client(&self) -> Ipv6Addr {
        ipv6(self.client_addr)
    }
}

impl AffinityKey {
    pub const fn new(frontend_id: u32, client: Ipv4Addr) -> Self {
        Self {
            frontend_id,
            client_addr: net_addr(client),
        }
    }

    /// The client the binding is for.
    pub const fn client(&self) -> Ipv4Addr {
        ipv4(self.client_addr)
    }
}

/// The backend a client is bound to, and when it last opened a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityValueOf<A: NetAddr> {
    /// Backend address and port, network order.
    pub backend_addr: A,
    pub backend_port: u16,
    pub _pad: u16,
    pub slot: u32,
    /// Four bytes for IPv4, none for IPv6 ([`NetAddr::SlotPad`]).
    pub _pad2: A::SlotPad,
    pub last_used_ns: u64,
}

/// IPv4 session-affinity binding (`MCS_AFFINITY_V1`).
pub type AffinityValue = AffinityValueOf<u32>;
/// IPv6 session-affinity binding (`MCS_AFFINITY_V6`).
pub type AffinityValueV6 = AffinityValueOf<Addr6>;

impl AffinityValueV6 {
    /// The bound backend.
    pub const fn backend(&self) -> SocketAddrV6 {
        endpoint6(self.backend_addr, self.backend_port)
    }
}

impl AffinityValue {
    /// The bound backend.
    pub const fn backend(&self) -> SocketAddrV4 {
        endpoint(self.backend_addr, self.backend_port)
    }
}

const _: () = assert!(size_of::<ServiceKey>() == 8);
const _: () = assert!(size_of::<ServiceValue>() == 24);
const _: () = assert!(size_of::<BackendKey>() == 8);
const _: () = assert!(size_of::<BackendValue>() == 24);
const _: () = assert!(size_of::<AffinityKey>() == 8);
const _: () = assert!(size_of::<AffinityValue>() == 24);
const _: () = assert!(size_of::<ServiceKeyV6>() == 20);
const _: () = assert!(size_of::<BackendValueV6>() == 36);
const _: () = assert!(size_of::<AffinityKeyV6>() == 20);
const _: () = assert!(size_of::<AffinityValueV6>() == 32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors_round_trip_and_store_packet_order() {
        let vip = Ipv4Addr::new(10, 96, 100, 10);
        let key = ServiceKey::new(vip, 80, PROTO_TCP);
        assert_eq!((key.addr(), key.port(), key.proto), (vip, 80, PROTO_TCP));
        assert_eq!(key.addr.to_ne_bytes(), [10, 96, 100, 10]);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);

        let pod = SocketAddrV4::new(Ipv4Addr::new(10, 101, 1, 10), 8080);
        let backend = BackendValue::new(pod, 2, BACKEND_F_READY, 7);
        assert_eq!(backend.endpoint(), pod);
        assert_eq!((backend.addr(), backend.port()), (*pod.ip(), 8080));
        assert_eq!(backend.port.to_ne_bytes(), [0x1f, 0x90]);

        let client = Ipv4Addr::new(10, 1, 0, 2);
        assert_eq!(AffinityKey::new(3, client).client(), client);

        let service = ServiceValue {
            frontend_id: 1,
            backend_count: 300,
            flags: SVC_F_AFFINITY,
            affinity_timeout_s: 10,
            maglev_base: 0,
            maglev_size: 0,
        };
        assert_eq!(service.maglev(), None);
        let place = MaglevPlace {
            base: 40,
            size: 16_381,
            wide: true,
        };
        let placed = service.with_maglev(Some(place));
        assert_eq!(placed.maglev(), Some(place));
        assert_eq!(placed.flags, SVC_F_AFFINITY | SVC_F_MAGLEV_WIDE);
        assert_eq!(placed.with_maglev(None), service);
        let bound = AffinityValue {
            backend_addr: backend.addr,
            backend_port: backend.port,
            _pad: 0,
            slot: 0,
            _pad2: 0,
            last_used_ns: 0,
        };
        assert_eq!(bound.backend(), pod);
    }

    #[test]
    fn ipv6_accessors_round_trip_and_store_packet_order() {
        let vip: Ipv6Addr = "fd00:96::100:a".parse().unwrap();
        let key = ServiceKeyV6::new(vip, 80, PROTO_UDP);
        assert_eq!((key.addr(), key.port(), key.proto), (vip, 80, PROTO_UDP));
        assert_eq!(key.addr[0].to_ne_bytes(), [0xfd, 0, 0, 0x96]);
        assert_eq!(ServiceKeyV6::raw(key.addr, key.port, PROTO_UDP), key);

        let pod = SocketAddrV6::new("fd00:101:1::10".parse().unwrap(), 8080, 0, 0);
        let backend = BackendValueV6::new(pod, 2, BACKEND_F_READY, 7);
        assert_eq!(backend.endpoint(), pod);
        assert_eq!((backend.addr(), backend.port()), (*pod.ip(), 8080));

        let client: Ipv6Addr = "fd00:1::2".parse().unwrap();
        assert_eq!(AffinityKeyV6::new(3, client).client(), client);
        let bound = AffinityValueV6 {
            backend_addr: backend.addr,
            backend_port: backend.port,
            _pad: 0,
            slot: 0,
            _pad2: [],
            last_used_ns: 0,
        };
        assert_eq!(bound.backend(), pod);
    }
}
