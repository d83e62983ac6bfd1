//! Address/port rewriting with exact incremental checksums, computed in the
//! program: XDP has no socket buffer, so no checksum helpers.
//!
//! See `mcs_common::checksum` for the two kinds of L4 checksum field and
//! why they need different arithmetic. On a physical NIC every received
//! checksum is full ([`Checksums::Full`]); on a veth a field may be partial
//! and is told apart by its value ([`Checksums::Detect`]), which leaves the
//! documented 1-in-65536 ambiguity (`docs/checksums.md`).

use mcs_common::checksum::{full_replace_u32, l4_rewrite, l4_rewrite_full};

use crate::{datapath::Side, packet::Packet};

/// Which L4 checksum arithmetic a device's packets need.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Checksums {
    /// The field may be partial (veth): decided per packet by its value.
    Detect,
    /// Every field is a full checksum (physical NIC).
    Full,
}

/// Rewrites one side's address and port, updating the IPv4 header checksum
/// and the TCP/UDP checksum.
#[inline(always)]
pub fn rewrite(pkt: &Packet, checksums: Checksums, side: Side, new_addr: u32, new_port: u16) {
    let (saddr, daddr) = (pkt.saddr(), pkt.daddr());
    // SAFETY: all pointers were bounds-checked by `packet::parse`; the
    // packet is not resized between parsing and this write.
    unsafe {
        let ip = pkt.ip;
        let (addr_field, port_field, old_addr) = match side {
            Side::Destination => (&raw mut (*ip).dst_addr, pkt.l4.dport, daddr),
            Side::Source => (&raw mut (*ip).src_addr, pkt.l4.sport, saddr),
        };
        let old_port = u16::from_ne_bytes(*port_field);
        let check = u16::from_ne_bytes(*pkt.l4.check);

        // The arithmetic is shared with the host (unit tests, fuzzing) in
        // `mcs_common::checksum`.
        let new_check = match checksums {
            Checksums::Detect => l4_rewrite(
                check, pkt.proto, saddr, daddr, pkt.l4_len, old_addr, new_addr, old_port, new_port,
            ),
            Checksums::Full => {
                l4_rewrite_full(check, pkt.proto, old_addr, new_addr, old_port, new_port)
            }
        };

        let ip_check = u16::from_ne_bytes((*ip).check);
        (*ip).check = full_replace_u32(ip_check, old_addr, new_addr).to_ne_bytes();
        *addr_field = new_addr.to_ne_bytes();
        *port_field = new_port.to_ne_bytes();
        *pkt.l4.check = new_check.to_ne_bytes();
    }
}
