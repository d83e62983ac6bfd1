//! The tc side of a refusal (`crate::reject` writes the headers): the
//! socket buffer is resized in place, its Ethernet addresses swapped, and
//! the caller redirects it out of the interface it came in on — straight
//! back to the client pod, without routing.
//!
//! A socket buffer from a pod usually still carries `CHECKSUM_PARTIAL`
//! (the kernel completes the L4 checksum at its checksum start later);
//! BPF cannot read that state, but the L4 checksum helper acts on it, so a
//! probe tells (`checksum_partial`). A partial buffer's reply leaves its
//! checksum for that completion (`reject::Completion::Kernel`); any other
//! is finished here.

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, helpers::generated::bpf_skb_change_tail,
    programs::TcContext,
};
use mcs_common::PROTO_TCP;
use network_types::{eth::EthHdr, icmp::Icmpv4Hdr, ip::Ipv4Hdr, tcp::TcpHdr};

use crate::{
    datapath::Unreplied,
    packet::{Packet, ptr_at},
    reject::{self, Completion, ICMP_LEN, MESSAGE_LEN, RST_LEN, Refused, Rst},
};

/// Turns the packet into its refusal (RST for TCP, ICMP for UDP).
#[inline(always)]
pub fn refuse(ctx: &TcContext, pkt: &Packet<u32>) -> Result<(), Unreplied> {
    let refused = Refused::of(pkt)?;
    // SAFETY: the context pointer is valid for the program's run.
    if unsafe { (*ctx.skb.skb).gso_size } != 0 {
        return Err(Unreplied); // a segmentation-offload batch: not one segment
    }
    let completion = if checksum_partial(ctx, pkt.check_off())? {
        Completion::Kernel
    } else {
        Completion::None
    };
    if pkt.proto == PROTO_TCP {
        tcp_reset(ctx, pkt, &refused, completion)
    } else {
        icmp_port_unreachable(ctx, &refused, completion)
    }
}

/// Whether the buffer is `CHECKSUM_PARTIAL`: the L4 helper changes a field
/// for a non-pseudo-header update unless the buffer is partial (then only
/// the pseudo header counts). The field at `check_off` is restored.
#[inline(always)]
pub(super) fn checksum_partial(ctx: &TcContext, check_off: usize) -> Result<bool, Unreplied> {
    let received: u16 = ctx.load(check_off).map_err(|_| Unreplied)?;
    ctx.store(check_off, &0u16, 0).map_err(|_| Unreplied)?;
    ctx.l4_csum_replace(check_off, 0, 1, 2)
        .map_err(|_| Unreplied)?;
    let probed: u16 = ctx.load(check_off).map_err(|_| Unreplied)?;
    ctx.store(check_off, &received, 0).map_err(|_| Unreplied)?;
    Ok(probed == 0)
}

/// Cuts (or extends) the buffer to `len` bytes.
#[inline(always)]
pub(super) fn change_tail(ctx: &TcContext, len: usize) -> Result<(), Unreplied> {
    // SAFETY: the helper checks the length against the buffer itself.
    match unsafe { bpf_skb_change_tail(ctx.skb.skb, len as u32, 0) } {
        0 => Ok(()),
        _ => Err(Unreplied),
    }
}

/// Swaps the frame's Ethernet addresses: back to where it came from.
#[inline(always)]
pub(super) fn swap_macs(ctx: &TcContext) -> Result<(), Unreplied> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Unreplied)?;
    // SAFETY: bounds-checked by `ptr_at`.
    unsafe {
        let (src, dst) = ((*eth).src_addr, (*eth).dst_addr);
        (*eth).src_addr = dst;
        (*eth).dst_addr = src;
    }
    Ok(())
}

#[inline(always)]
fn tcp_reset(
    ctx: &TcContext,
    pkt: &Packet<u32>,
    refused: &Refused,
    completion: Completion,
) -> Result<(), Unreplied> {
    let tcp: *mut TcpHdr = ptr_at(ctx, EthHdr::LEN + Ipv4Hdr::LEN).ok_or(Unreplied)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let rst = unsafe { Rst::answering(tcp, pkt.l4_len)? };
    change_tail(ctx, EthHdr::LEN + RST_LEN)?;
    // Packet pointers are invalid after resizing: re-derive them.
    let ip: *mut Ipv4Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(Unreplied)?;
    let tcp: *mut TcpHdr = ptr_at(ctx, EthHdr::LEN + Ipv4Hdr::LEN).ok_or(Unreplied)?;
    // SAFETY: both headers were bounds-checked just above.
    unsafe { reject::write_rst(ip, tcp, refused, &rst, completion) };
    swap_macs(ctx)
}

/// Quotes the datagram's IP header and first 8 bytes (RFC 792).
#[inline(always)]
fn icmp_port_unreachable(
    ctx: &TcContext,
    refused: &Refused,
    completion: Completion,
) -> Result<(), Unreplied> {
    const GROW: i32 = (Ipv4Hdr::LEN + Icmpv4Hdr::LEN) as i32;
    // Room between the Ethernet and IP headers for the new IP and ICMP
    // headers; the original IP and UDP headers become the quote (and stay
    // where the buffer's checksum start points).
    ctx.adjust_room(GROW, BPF_ADJ_ROOM_MAC, 0)
        .map_err(|_| Unreplied)?;
    change_tail(ctx, EthHdr::LEN + ICMP_LEN)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(Unreplied)?;
    let message: *mut [u8; MESSAGE_LEN] =
        ptr_at(ctx, EthHdr::LEN + Ipv4Hdr::LEN).ok_or(Unreplied)?;
    // SAFETY: both bounds-checked just above.
    unsafe { reject::write_icmp(ip, message, refused, completion) };
    swap_macs(ctx)
}
