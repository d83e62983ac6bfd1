//! Address/port rewriting through the kernel's checksum helpers: they see
//! the socket buffer's checksum state, so a partial checksum
//! (`CHECKSUM_PARTIAL`, pod traffic with transmit offload) gets only the
//! pseudo-header change and a full one the whole update — no guessing from
//! the field's value, and `CHECKSUM_COMPLETE` buffers keep a right
//! `skb->csum`. An IPv6 address goes into the pseudo-header update four
//! bytes at a time (the helpers' largest word); IPv6 has no header
//! checksum.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM},
    programs::TcContext,
};
use mcs_common::PROTO_UDP;
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    datapath::{RewriteFailed, Side},
    family::Family,
    packet::Packet,
};

const IP_CHECK_OFF: usize = EthHdr::LEN + core::mem::offset_of!(Ipv4Hdr, check);

/// Rewrites one side's address and port with the helpers' checksum
/// updates. Packet pointers are invalid afterwards.
#[inline(always)]
pub fn rewrite<F: Family>(
    ctx: &TcContext,
    pkt: &Packet<F>,
    side: Side,
    new_addr: F,
    new_port: u16,
) -> Result<(), RewriteFailed> {
    let (addr_off, port_off, old_addr, old_port) = match side {
        Side::Destination => (
            EthHdr::LEN + F::DST_OFF,
            pkt.l4_off + 2,
            pkt.daddr(),
            pkt.dport(),
        ),
        Side::Source => (
            EthHdr::LEN + F::SRC_OFF,
            pkt.l4_off,
            pkt.saddr(),
            pkt.sport(),
        ),
    };
    let check_off = pkt.check_off();
    // A UDP checksum of 0 means "none" and stays so; a result of 0 is
    // written as all ones.
    let mangled = if pkt.proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    // SAFETY: bounds-checked by `packet::parse`; read before any helper.
    let unchecked = pkt.proto == PROTO_UDP && unsafe { *pkt.l4.check } == [0, 0];
    // A changed port is offset by the checksum field's change, so
    // `CHECKSUM_COMPLETE`'s sum stays right — unless there is no checksum:
    // then the store itself updates that sum.
    let port_store_flags = if unchecked {
        u64::from(BPF_F_RECOMPUTE_CSUM)
    } else {
        0
    };
    let addr_flags = u64::from(BPF_F_PSEUDO_HDR) | mangled | 4;
    for i in 0..F::WORDS {
        ctx.l4_csum_replace(
            check_off,
            u64::from(old_addr.word(i)),
            u64::from(new_addr.word(i)),
            addr_flags,
        )
        .map_err(|_| RewriteFailed)?;
    }
    ctx.l4_csum_replace(
        check_off,
        u64::from(old_port),
        u64::from(new_port),
        mangled | 2,
    )
    .map_err(|_| RewriteFailed)?;
    if F::HEADER_CHECKSUM {
        ctx.l3_csum_replace(
            IP_CHECK_OFF,
            u64::from(old_addr.word(0)),
            u64::from(new_addr.word(0)),
            4,
        )
        .map_err(|_| RewriteFailed)?;
    }
    // An IPv4 address change is offset by the header checksum's, so
    // `CHECKSUM_COMPLETE`'s sum stays right; IPv6 has no header checksum,
    // so the store itself updates that sum.
    let addr_store_flags = if F::HEADER_CHECKSUM {
        0
    } else {
        u64::from(BPF_F_RECOMPUTE_CSUM)
    };
    ctx.store(addr_off, &new_addr, addr_store_flags)
        .map_err(|_| RewriteFailed)?;
    ctx.store(port_off, &new_port, port_store_flags)
        .map_err(|_| RewriteFailed)
}
