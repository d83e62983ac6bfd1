//! The XDP side of a refusal (`crate::reject` writes the headers): the
//! frame is resized in place and handed to the node's stack (`XDP_PASS`),
//! which routes it to the client like any packet for a local pod.
//! (`XDP_TX` would bounce it straight back, but on veth a native-mode
//! `XDP_TX` is dropped unless the pod side runs XDP too — and that is not
//! ours to change.) The Ethernet header is kept as received, so the frame
//! stays addressed to the node. An XDP frame has no checksum state: every
//! field is written finished.

use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use mcs_common::PROTO_TCP;
use network_types::{eth::EthHdr, icmp::Icmpv4Hdr, ip::Ipv4Hdr, tcp::TcpHdr};

use crate::{
    datapath::Unreplied,
    packet::{ETH_P_IP_RAW, Packet, ptr_at},
    reject::{self, Completion, ICMP_LEN, MESSAGE_LEN, RST_LEN, Refused, Rst},
};

/// Turns the packet into its refusal (RST for TCP, ICMP for UDP).
#[inline(always)]
pub fn refuse(ctx: &XdpContext, pkt: &Packet<u32>) -> Result<(), Unreplied> {
    let refused = Refused::of(pkt)?;
    if pkt.proto == PROTO_TCP {
        tcp_reset(ctx, pkt, &refused)
    } else {
        icmp_port_unreachable(ctx, &refused)
    }
}

#[inline(always)]
fn tcp_reset(ctx: &XdpContext, pkt: &Packet<u32>, refused: &Refused) -> Result<(), Unreplied> {
    let tcp: *mut TcpHdr = ptr_at(ctx, EthHdr::LEN + Ipv4Hdr::LEN).ok_or(Unreplied)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let rst = unsafe { Rst::answering(tcp, pkt.l4_len)? };
    let new_len = (EthHdr::LEN + RST_LEN) as i32;
    let old_len = (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: the helper checks the resulting length itself.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, new_len - old_len) } != 0 {
        return Err(Unreplied);
    }
    // Packet pointers are invalid after resizing: re-derive them.
    let ip: *mut Ipv4Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(Unreplied)?;
    let tcp: *mut TcpHdr = ptr_at(ctx, EthHdr::LEN + Ipv4Hdr::LEN).ok_or(Unreplied)?;
    // SAFETY: both headers were bounds-checked just above.
    unsafe { reject::write_rst(ip, tcp, refused, &rst, Completion::None) };
    Ok(())
}

/// Quotes the datagram's IP header and first 8 bytes (RFC 792).
#[inline(always)]
fn icmp_port_unreachable(ctx: &XdpContext, refused: &Refused) -> Result<(), Unreplied> {
    const GROW: i32 = (Ipv4Hdr::LEN + Icmpv4Hdr::LEN) as i32;
    let old_eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Unreplied)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let (client_mac, node_mac) = unsafe { ((*old_eth).src_addr, (*old_eth).dst_addr) };
    // Kept as received: from the client's side, to the node.

    // Make room in front for the new IP and ICMP headers; the original IP
    // header and UDP header then become the quoted part.
    // SAFETY: the helper checks the available headroom itself.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -GROW) } != 0 {
        return Err(Unreplied);
    }
    let total = EthHdr::LEN + ICMP_LEN;
    let old_len = (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: the helper checks the resulting length itself.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, total as i32 - old_len) } != 0 {
        return Err(Unreplied);
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Unreplied)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(Unreplied)?;
    let message: *mut [u8; MESSAGE_LEN] =
        ptr_at(ctx, EthHdr::LEN + Ipv4Hdr::LEN).ok_or(Unreplied)?;
    // SAFETY: all bounds-checked just above; the old Ethernet header (now
    // overlapping the new IP header) was read before these writes.
    unsafe {
        (*eth).dst_addr = node_mac;
        (*eth).src_addr = client_mac;
        (*eth).ether_type = ETH_P_IP_RAW;
        reject::write_icmp(ip, message, refused, Completion::None);
    }
    Ok(())
}
