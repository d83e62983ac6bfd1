//! Address/port rewriting with exact incremental checksums.
//!
//! See `mcs_common::checksum` for the two kinds of L4 checksum field an XDP
//! hook meets (full vs. partial) and why they need different arithmetic.

use mcs_common::checksum::{full_replace_u32, l4_rewrite};

use mcs_common::prefilter::Role;

use crate::{lb, maps::prefilter_may_contain, packet::Packet};

pub enum Side {
    /// DNAT: ClusterSetIP:port → backend.
    Destination,
    /// Reverse NAT: backend → ClusterSetIP:port.
    Source,
}

/// Whether `daddr` is a ClusterSetIP (the agent stores a port-0 marker
/// frontend per ClusterSetIP and protocol). Only used on odd packets.
#[inline(always)]
pub fn is_cluster_set_ip(daddr: u32, proto: u8) -> bool {
    prefilter_may_contain(daddr, Role::Destination) && lb::lookup_service(daddr, 0, proto).is_some()
}

/// Rewrites one side's address and port, updating the IPv4 header checksum
/// and the TCP/UDP checksum (full or partial, see module docs).
#[inline(always)]
pub fn rewrite(pkt: &Packet, side: Side, new_addr: u32, new_port: u16) {
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

        // Partial vs full vs UDP-without-checksum: shared with the host
        // (unit tests, fuzzing) in `mcs_common::checksum`.
        let new_check = l4_rewrite(
            check, pkt.proto, saddr, daddr, pkt.l4_len, old_addr, new_addr, old_port, new_port,
        );

        let ip_check = u16::from_ne_bytes((*ip).check);
        (*ip).check = full_replace_u32(ip_check, old_addr, new_addr).to_ne_bytes();
        *addr_field = new_addr.to_ne_bytes();
        *port_field = new_port.to_ne_bytes();
        *pkt.l4.check = new_check.to_ne_bytes();
    }
}
