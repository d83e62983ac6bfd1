//! Packet byte order ⇄ host values: the only place an address or port of
//! the map ABI is converted. The maps hold addresses and ports exactly as
//! the packet carries them (the datapath copies them without swapping);
//! host code goes through these functions, usually by way of the key and
//! value types' accessors.

use core::net::{Ipv4Addr, SocketAddrV4};

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
}
