//! Address/port rewriting with exact incremental checksums, computed in the
//! program: XDP has no socket buffer, so no checksum helpers.
//!
//! See `mcs_common::checksum` for the two kinds of L4 checksum field and
//! why they need different arithmetic. On a physical NIC every received
//! checksum is full ([`Checksums::Full`]); on a veth a field may be partial
//! and is told apart by its value ([`Checksums::Detect`]), which leaves the
//! documented 1-in-65536 ambiguity (`docs/checksums.md`). IPv4 and IPv6 run
//! the same arithmetic (the pseudo header covers whichever addresses the
//! packet has); only IPv4 has a header checksum to update.

use mcs_common::checksum::{full_replace_u32, l4_rewrite_full_of, l4_rewrite_of};
use network_types::ip::Ipv4Hdr;

use crate::{datapath::Side, family::Family, packet::Packet};

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
pub fn rewrite<F: Family>(
    pkt: &Packet<F>,
    checksums: Checksums,
    side: Side,
    new_addr: F,
    new_port: u16,
) {
    let (saddr, daddr) = (pkt.saddr(), pkt.daddr());
    // SAFETY: all pointers were bounds-checked by `packet::parse`; the
    // packet is not resized between parsing and this write.
    unsafe {
        let (addr_off, port_field, old_addr) = match side {
            Side::Destination => (F::DST_OFF, pkt.l4.dport, daddr),
            Side::Source => (F::SRC_OFF, pkt.l4.sport, saddr),
        };
        let old_port = u16::from_ne_bytes(*port_field);
        let check = u16::from_ne_bytes(*pkt.l4.check);

        // The arithmetic is shared with the host (unit tests, fuzzing) in
        // `mcs_common::checksum`.
        let new_check = match checksums {
            Checksums::Detect => l4_rewrite_of(
                check, pkt.proto, saddr, daddr, pkt.l4_len, old_addr, new_addr, old_port, new_port,
            ),
            Checksums::Full => {
                l4_rewrite_full_of(check, pkt.proto, old_addr, new_addr, old_port, new_port)
            }
        };

        if let Some(v4) = F::v4(pkt) {
            let ip = v4.ipv4();
            let ip_check = u16::from_ne_bytes((*ip).check);
            (*ip).check =
                full_replace_u32(ip_check, old_addr.word(0), new_addr.word(0)).to_ne_bytes();
        }
        F::store(pkt.ip.add(addr_off), new_addr);
        *port_field = new_port.to_ne_bytes();
        *pkt.l4.check = new_check.to_ne_bytes();
    }
}

const _: () = assert!(core::mem::offset_of!(Ipv4Hdr, check) == 10);
