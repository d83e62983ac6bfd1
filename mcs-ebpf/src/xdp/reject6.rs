//! The XDP side of an IPv6 refusal (`crate::reject6` writes the headers),
//! sent as the IPv4 one is (`reject.rs`): resized in place, Ethernet
//! header kept, handed to the node's stack, every checksum finished.

use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use mcs_common::{PROTO_TCP, byte_order::Addr6};
use network_types::{eth::EthHdr, ip::Ipv6Hdr, tcp::TcpHdr};

use crate::{
    datapath::Unreplied,
    packet::{Packet, ptr_at},
    reject::{Completion, Rst},
    reject6::{self, GROW, ICMP6_HDR_LEN, QuoteSum, RST_LEN, Refused6},
};

/// Turns the packet into its refusal (RST for TCP, ICMPv6 for UDP).
#[inline(always)]
pub fn refuse(ctx: &XdpContext, pkt: &Packet<Addr6>) -> Result<(), Unreplied> {
    let refused = Refused6::of(pkt)?;
    if pkt.proto == PROTO_TCP {
        tcp_reset(ctx, pkt)
    } else {
        port_unreachable(ctx, pkt.len, &refused)
    }
}

#[inline(always)]
fn tcp_reset(ctx: &XdpContext, pkt: &Packet<Addr6>) -> Result<(), Unreplied> {
    let tcp: *mut TcpHdr = ptr_at(ctx, EthHdr::LEN + Ipv6Hdr::LEN).ok_or(Unreplied)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let rst = unsafe { Rst::answering(tcp, pkt.l4_len)? };
    let new_len = (EthHdr::LEN + RST_LEN) as i32;
    // The frame's length as parsed (not `data_end - data` here: the
    // compiler may fold that into arithmetic on `data_end`, which the
    // verifier refuses).
    let old_len = pkt.len as i32;
    // SAFETY: the helper checks the resulting length itself.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, new_len - old_len) } != 0 {
        return Err(Unreplied);
    }
    // Packet pointers are invalid after resizing: re-derive them.
    let ip: *mut Ipv6Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(Unreplied)?;
    let tcp: *mut TcpHdr = ptr_at(ctx, EthHdr::LEN + Ipv6Hdr::LEN).ok_or(Unreplied)?;
    // SAFETY: both headers were bounds-checked just above.
    unsafe { reject6::write_rst(ip, tcp, &rst, Completion::None) };
    Ok(())
}

/// Quotes the datagram's IPv6 header and as much of the datagram as fits
/// in the minimum MTU (RFC 4443 §3.1).
#[inline(always)]
fn port_unreachable(ctx: &XdpContext, frame_len: u64, refused: &Refused6) -> Result<(), Unreplied> {
    let old_eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Unreplied)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let eth_copy = unsafe { *old_eth };
    // The quoted datagram's sum, taken before the frame moves (its UDP
    // checksum field is quoted as received: nothing completes it later).
    let quoted = reject6::sum_packet(ctx, EthHdr::LEN + Ipv6Hdr::LEN, refused.quoted_l4)?;

    // Make room in front for the new IPv6 and ICMPv6 headers; the original
    // IPv6 header and datagram become the quote.
    // SAFETY: the helper checks the available headroom itself.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GROW as i32)) } != 0 {
        return Err(Unreplied);
    }
    let total = (EthHdr::LEN + Ipv6Hdr::LEN + refused.message_len()) as i32;
    // The frame as parsed and the room made (see `tcp_reset`).
    let old_len = (frame_len as usize + GROW) as i32;
    // SAFETY: the helper checks the resulting length itself.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, total - old_len) } != 0 {
        return Err(Unreplied);
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Unreplied)?;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(Unreplied)?;
    let icmp: *mut [u8; ICMP6_HDR_LEN] =
        ptr_at(ctx, EthHdr::LEN + Ipv6Hdr::LEN).ok_or(Unreplied)?;
    let quoted_ip: *mut [u8; Ipv6Hdr::LEN] = ptr_at(ctx, EthHdr::LEN + GROW).ok_or(Unreplied)?;
    // SAFETY: all bounds-checked just above; the old Ethernet header (now
    // overlapping the new IPv6 header) was copied before these writes.
    unsafe {
        *eth = eth_copy;
        reject6::write_icmp(
            ip,
            icmp,
            quoted_ip,
            refused,
            QuoteSum::Summed(u32::from(quoted)),
        );
    }
    Ok(())
}
