//! The tc side of an IPv6 refusal (`crate::reject6` writes the headers),
//! sent as the IPv4 one is (`reject.rs`): resized in place, Ethernet
//! addresses swapped, redirected back out of the interface. A
//! `CHECKSUM_PARTIAL` buffer's RST leaves its checksum to the kernel's
//! completion, and its ICMPv6 error counts the quoted UDP checksum the
//! completion will write (`reject6::QuoteSum::KernelCompleted`).

use aya_ebpf::{bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, programs::TcContext};
use mcs_common::{PROTO_TCP, byte_order::Addr6};
use network_types::{eth::EthHdr, ip::Ipv6Hdr, tcp::TcpHdr};

use super::reject::{change_tail, checksum_partial, swap_macs};
use crate::{
    datapath::Unreplied,
    packet::{Packet, ptr_at},
    reject::{Completion, Rst},
    reject6::{self, GROW, ICMP6_HDR_LEN, QuoteSum, RST_LEN, Refused6},
};

/// Turns the packet into its refusal (RST for TCP, ICMPv6 for UDP).
#[inline(always)]
pub fn refuse(ctx: &TcContext, pkt: &Packet<Addr6>) -> Result<(), Unreplied> {
    let refused = Refused6::of(pkt)?;
    // SAFETY: the context pointer is valid for the program's run.
    if unsafe { (*ctx.skb.skb).gso_size } != 0 {
        return Err(Unreplied); // a segmentation-offload batch: not one segment
    }
    let check_off = pkt.check_off();
    let completion = if checksum_partial(ctx, check_off)? {
        Completion::Kernel
    } else {
        Completion::None
    };
    if pkt.proto == PROTO_TCP {
        tcp_reset(ctx, pkt.l4_len, completion)
    } else {
        port_unreachable(ctx, check_off, &refused, completion)
    }
}

#[inline(always)]
fn tcp_reset(ctx: &TcContext, l4_len: u16, completion: Completion) -> Result<(), Unreplied> {
    let tcp: *mut TcpHdr = ptr_at(ctx, EthHdr::LEN + Ipv6Hdr::LEN).ok_or(Unreplied)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let rst = unsafe { Rst::answering(tcp, l4_len)? };
    change_tail(ctx, EthHdr::LEN + RST_LEN)?;
    // Packet pointers are invalid after resizing: re-derive them.
    let ip: *mut Ipv6Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(Unreplied)?;
    let tcp: *mut TcpHdr = ptr_at(ctx, EthHdr::LEN + Ipv6Hdr::LEN).ok_or(Unreplied)?;
    // SAFETY: both headers were bounds-checked just above.
    unsafe { reject6::write_rst(ip, tcp, &rst, completion) };
    swap_macs(ctx)
}

/// Quotes the datagram's IPv6 header and as much of the datagram as fits
/// in the minimum MTU (RFC 4443 §3.1).
#[inline(always)]
fn port_unreachable(
    ctx: &TcContext,
    check_off: usize,
    refused: &Refused6,
    completion: Completion,
) -> Result<(), Unreplied> {
    let quote = match completion {
        Completion::Kernel => QuoteSum::KernelCompleted {
            seed: ctx.load(check_off).map_err(|_| Unreplied)?,
        },
        Completion::None => {
            // The quote must lie in the linear part to be summed.
            let quoted_end = EthHdr::LEN + Ipv6Hdr::LEN + refused.quoted_l4;
            if (ctx.data_end() - ctx.data()) < quoted_end {
                ctx.pull_data(quoted_end as u32).map_err(|_| Unreplied)?;
            }
            let sum = reject6::sum_packet(ctx, EthHdr::LEN + Ipv6Hdr::LEN, refused.quoted_l4)?;
            QuoteSum::Summed(u32::from(sum))
        }
    };
    // Room between the Ethernet and IPv6 headers for the new IPv6 and
    // ICMPv6 headers; the original packet becomes the quote (and stays
    // where the buffer's checksum start points).
    ctx.adjust_room(GROW as i32, BPF_ADJ_ROOM_MAC, 0)
        .map_err(|_| Unreplied)?;
    change_tail(ctx, EthHdr::LEN + Ipv6Hdr::LEN + refused.message_len())?;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(Unreplied)?;
    let icmp: *mut [u8; ICMP6_HDR_LEN] =
        ptr_at(ctx, EthHdr::LEN + Ipv6Hdr::LEN).ok_or(Unreplied)?;
    let quoted_ip: *mut [u8; Ipv6Hdr::LEN] = ptr_at(ctx, EthHdr::LEN + GROW).ok_or(Unreplied)?;
    // SAFETY: all bounds-checked just above.
    unsafe { reject6::write_icmp(ip, icmp, quoted_ip, refused, quote) };
    swap_macs(ctx)
}
