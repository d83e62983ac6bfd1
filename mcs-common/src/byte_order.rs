//! Packet byte order ⇄ host values: the only place an address or port of
//! the map ABI is converted. The maps hold addresses and ports exactly as
//! the packet carries them (the datapath copies them without swapping);
//! host code goes through these functions, usually by way of the key and
//! value types' accessors.
//!
//! An IPv6 address in the maps is an [`Addr6`]: its sixteen octets as four
//! `u32`s in memory order, so the datapath loads, compares and sums it in
//! words. [`NetAddr`] is what the key and value types are generic over:
//! `u32` for IPv4, [`Addr6`] for IPv6.

use core::{
    fmt::Debug,
    hash::Hash,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
};

use crate::flow::mix32;

/// An IPv6 address in the maps' form: its octets, four at a time, each
/// group as one `u32` in memory order (as loaded from the packet).
pub type Addr6 = [u32; 4];

/// An address of either family in the maps' form: `u32` (IPv4) or
/// [`Addr6`] (IPv6). Sealed: the map ABI has exactly these two.
pub trait NetAddr: Copy + Eq + Ord + Hash + Debug + sealed::Sealed {
    /// The explicit padding `AffinityValueOf` needs after its slot so its
    /// timestamp is 8-aligned: four bytes for IPv4, none for IPv6.
    type SlotPad: Copy + Eq + Ord + Hash + Debug;
    /// The zero padding.
    const SLOT_PAD: Self::SlotPad;
    /// The all-zero address.
    const ZERO: Self;

    /// The address folded to 32 well-mixed bits, for the miss prefilter and
    /// flow hashing; an IPv4 address is its own fold, so IPv4 bits and
    /// hashes are those of the address.
    fn fold(self) -> u32;

    /// `acc` plus the address's 16-bit words (as loaded natively), unfolded:
    /// its part of a ones-complement sum (`crate::checksum`).
    fn add_words(self, acc: u32) -> u32;

    /// The address with every bit flipped (its ones-complement negation).
    fn complement(self) -> Self;

    /// The standard library's address of this family.
    type Std: Copy + Eq + Debug;
    /// The standard library's socket address of this family.
    type Endpoint: Copy + Eq + Debug;

    /// The address as the standard library has it.
    fn to_std(self) -> Self::Std;

    /// The endpoint this address and a map's port (network order) make.
    fn endpoint(self, port: u16) -> Self::Endpoint;

    /// An endpoint in the maps' form: its address and its port (network
    /// order).
    fn from_endpoint(endpoint: Self::Endpoint) -> (Self, u16);
}

#[inline(always)]
const fn add_u32_words(acc: u32, value: u32) -> u32 {
    acc + (value & 0xffff) + (value >> 16)
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u32 {}
    impl Sealed for super::Addr6 {}
}

impl NetAddr for u32 {
    type SlotPad = u32;
    const SLOT_PAD: u32 = 0;
    const ZERO: u32 = 0;

    #[inline(always)]
    fn fold(self) -> u32 {
        self
    }

    #[inline(always)]
    fn add_words(self, acc: u32) -> u32 {
        add_u32_words(acc, self)
    }

    #[inline(always)]
    fn complement(self) -> Self {
        !self
    }

    type Std = Ipv4Addr;
    type Endpoint = SocketAddrV4;

    fn to_std(self) -> Ipv4Addr {
        ipv4(self)
    }

    fn endpoint(self, port: u16) -> SocketAddrV4 {
        endpoint(self, port)
    }

    fn from_endpoint(endpoint: SocketAddrV4) -> (Self, u16) {
        (net_addr(*endpoint.ip()), net_port(endpoint.port()))
    }
}

impl NetAddr for Addr6 {
    type SlotPad = [u32; 0];
    const SLOT_PAD: [u32; 0] = [];
    const ZERO: Addr6 = [0; 4];

    /// Every word mixed in turn: addresses that differ in any word (a
    /// prefix, an interface id) fold apart; a plain XOR of the words would
    /// fold `a::b` and `b::a` together.
    #[inline(always)]
    fn fold(self) -> u32 {
        fold6(self)
    }

    #[inline(always)]
    fn add_words(self, acc: u32) -> u32 {
        add_u32_words(
            add_u32_words(add_u32_words(add_u32_words(acc, self[0]), self[1]), self[2]),
            self[3],
        )
    }

    #[inline(always)]
    fn complement(self) -> Self {
        [!self[0], !self[1], !self[2], !self[3]]
    }

    type Std = Ipv6Addr;
    type Endpoint = SocketAddrV6;

    fn to_std(self) -> Ipv6Addr {
        ipv6(self)
    }

    fn endpoint(self, port: u16) -> SocketAddrV6 {
        endpoint6(self, port)
    }

    fn from_endpoint(endpoint: SocketAddrV6) -> (Self, u16) {
        (net_addr6(*endpoint.ip()), net_port(endpoint.port()))
    }
}

/// [`NetAddr::fold`] of an IPv6 address, usable in `const` context.
#[inline(always)]
pub const fn fold6(addr: Addr6) -> u32 {
    let h = mix32(addr[0] ^ 0x6a09_e667);
    let h = mix32(h ^ addr[1]);
    let h = mix32(h ^ addr[2]);
    mix32(h ^ addr[3])
}

/// An IPv6 address in the maps' form.
#[inline(always)]
pub const fn net_addr6(addr: Ipv6Addr) -> Addr6 {
    let o = addr.octets();
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The IPv6 address a map's [`Addr6`] holds.
#[inline(always)]
pub const fn ipv6(raw: Addr6) -> Ipv6Addr {
    let mut segments = [0u16; 8];
    let mut i = 0;
    while i < 4 {
        let [a, b, c, d] = raw[i].to_ne_bytes();
        segments[2 * i] = u16::from_be_bytes([a, b]);
        segments[2 * i + 1] = u16::from_be_bytes([c, d]);
        i += 1;
    }
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Addr::new(a, b, c, d, e, f, g, h)
}

/// The IPv6 endpoint a map's address and port hold (no flow label, no
/// scope).
#[inline(always)]
pub const fn endpoint6(addr: Addr6, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(ipv6(addr), host_port(port), 0, 0)
}

/// An address in the maps' form: its four octets as one `u32` in memory
/// order, as loaded from the packet.
#[inline(always)]
pub const fn net_addr(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The address a map's `u32` holds.
#[inline(always)]
pub const fn ipv4(raw: u32) -> Ipv4Addr {
    let [a, b, c, d] = raw.to_ne_bytes();
    Ipv4Addr::new(a, b, c, d)
}

/// A port in the maps' form (network order).
#[inline(always)]
pub const fn net_port(port: u16) -> u16 {
    port.to_be()
}

/// The port (host order) a map's `u16` holds.
#[inline(always)]
pub const fn host_port(raw: u16) -> u16 {
    u16::from_be(raw)
}

/// The endpoint a map's address and port hold.
#[inline(always)]
pub const fn endpoint(addr: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ipv4(addr), host_port(port))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString as _;

    use super::*;

    #[test]
    fn map_form_is_the_packet_bytes() {
        let addr = Ipv4Addr::new(10, 101, 1, 10);
        // What a load of the packet's four address bytes yields.
        assert_eq!(net_addr(addr), u32::from_ne_bytes([10, 101, 1, 10]));
        assert_eq!(ipv4(net_addr(addr)), addr);
        // 8080 = 0x1f90 sits in the packet as [0x1f, 0x90].
        assert_eq!(net_port(8080).to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(host_port(net_port(8080)), 8080);
        assert_eq!(
            endpoint(net_addr(addr), net_port(8080)).to_string(),
            "10.101.1.10:8080"
        );
    }

    #[test]
    fn ipv6_map_form_is_the_packet_bytes_and_folds_apart() {
        let addr: Ipv6Addr = "fd00:10:96::a".parse().unwrap();
        let raw = net_addr6(addr);
        let mut bytes = [0u8; 16];
        for (i, word) in raw.iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
        }
        assert_eq!(bytes, addr.octets());
        assert_eq!(ipv6(raw), addr);
        assert_eq!(
            endpoint6(raw, net_port(8080)).to_string(),
            "[fd00:10:96::a]:8080"
        );
        assert_eq!(NetAddr::fold(7u32), 7);
        let swapped = [raw[3], raw[1], raw[2], raw[0]];
        assert_ne!(NetAddr::fold(raw), NetAddr::fold(swapped));
        assert_eq!(NetAddr::fold(raw), fold6(raw));
    }
}
