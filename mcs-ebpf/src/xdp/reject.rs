//! Refusing new flows to a frontend without usable backend, at once and in
//! the protocol's own words (never a silent timeout): TCP gets a RST, UDP an
//! ICMP port unreachable, with the ClusterSetIP as source and the client as
//! destination. The reply is handed to the node's stack (`XDP_PASS`), which
//! routes it to the client like any packet for a local pod. (`XDP_TX` would
//! bounce it straight back, but on veth a native-mode `XDP_TX` is dropped
//! unless the pod side runs XDP too — and that is not ours to change.) The
//! Ethernet header is kept as received, so the frame stays addressed to the
//! node.
//!
//! Only packets without IP options are answered (fixed-size headers keep the
//! verifier and the checksum loops simple); others are dropped and counted.

use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use mcs_common::{
    PROTO_TCP,
    checksum::{finish, pseudo_header_seed, sum_words},
};
use network_types::{eth::EthHdr, icmp::Icmpv4Hdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::packet::{
    ETH_P_IP_RAW, Packet, TCP_DOFF_BYTE, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN,
    TCP_FLAGS_BYTE, ptr_at,
};

/// The reply could not be built; the caller drops the packet.
pub struct Unreplied;

const IPPROTO_ICMP: u8 = 1;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const TTL: u8 = 64;
/// IPv4 `frags` with Don't Fragment set.
const IP_DF: u16 = 0x4000;
/// TCP data offset of a header without options, in 32-bit words.
const TCP_DOFF_NO_OPTIONS: u8 = (TcpHdr::LEN / 4) as u8;

/// Fills a fresh 20-byte IPv4 header and its checksum.
///
/// # Safety
/// `ip` must point at 20 writable bytes inside the packet.
#[inline(always)]
unsafe fn write_ip(ip: *mut Ipv4Hdr, saddr: u32, daddr: u32, proto: u8, tot_len: u16) {
    // SAFETY: per the function contract.
    unsafe {
        (*ip).vihl = 0x45;
        (*ip).tos = 0;
        (*ip).tot_len = tot_len.to_be_bytes();
        (*ip).id = [0, 0];
        (*ip).frags = IP_DF.to_be_bytes();
        (*ip).ttl = TTL;
        (*ip).proto = proto;
        (*ip).check = [0, 0];
        (*ip).src_addr = saddr.to_ne_bytes();
        (*ip).dst_addr = daddr.to_ne_bytes();
        let check = finish(sum_words(0, &*ip.cast::<[u8; Ipv4Hdr::LEN]>()));
        (*ip).check = check.to_ne_bytes();
    }
}

/// Turns a TCP segment to a dead frontend into the RST that refuses it
/// (RFC 9293 §3.10.7.1, reset generation for a CLOSED port).
#[inline(always)]
pub fn tcp_reset(ctx: &XdpContext, pkt: &Packet) -> Result<(), Unreplied> {
    if pkt.ihl_bytes != Ipv4Hdr::LEN || pkt.proto != PROTO_TCP {
        return Err(Unreplied);
    }
    let (saddr, daddr, sport, dport) = (pkt.saddr(), pkt.daddr(), pkt.sport(), pkt.dport());
    let tcp: *mut TcpHdr = ptr_at(ctx, EthHdr::LEN + Ipv4Hdr::LEN).ok_or(Unreplied)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let (seq, ack_seq, flags, doff) = unsafe {
        (
            u32::from_be_bytes((*tcp).seq),
            u32::from_be_bytes((*tcp).ack_seq),
            *(tcp as *const u8).add(TCP_FLAGS_BYTE),
            u32::from(*(tcp as *const u8).add(TCP_DOFF_BYTE) >> 4) * 4,
        )
    };
    if flags & TCP_FLAG_RST != 0 {
        return Err(Unreplied); // never answer a RST
    }
    let payload = u32::from(pkt.l4_len).saturating_sub(doff);
    let (reply_seq, reply_ack, reply_flags) = if flags & TCP_FLAG_ACK != 0 {
        (ack_seq, 0, TCP_FLAG_RST)
    } else {
        let consumed =
            payload + u32::from(flags & TCP_FLAG_SYN != 0) + u32::from(flags & TCP_FLAG_FIN != 0);
        (0, seq.wrapping_add(consumed), TCP_FLAG_RST | TCP_FLAG_ACK)
    };

    let new_len = (EthHdr::LEN + Ipv4Hdr::LEN + TcpHdr::LEN) as i32;
    let old_len = (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: the helper checks the resulting length itself.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, new_len - old_len) } != 0 {
        return Err(Unreplied);
    }
    // Packet pointers are invalid after resizing: re-derive them.
    let ip: *mut Ipv4Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(Unreplied)?;
    let tcp: *mut TcpHdr = ptr_at(ctx, EthHdr::LEN + Ipv4Hdr::LEN).ok_or(Unreplied)?;
    // SAFETY: both headers were bounds-checked just above.
    unsafe {
        write_ip(
            ip,
            daddr,
            saddr,
            PROTO_TCP,
            (Ipv4Hdr::LEN + TcpHdr::LEN) as u16,
        );
        let bytes = tcp.cast::<u8>();
        (*tcp).source = dport.to_ne_bytes();
        (*tcp).dest = sport.to_ne_bytes();
        (*tcp).seq = reply_seq.to_be_bytes();
        (*tcp).ack_seq = reply_ack.to_be_bytes();
        *bytes.add(TCP_DOFF_BYTE) = TCP_DOFF_NO_OPTIONS << 4;
        *bytes.add(TCP_FLAGS_BYTE) = reply_flags;
        (*tcp).window = [0, 0];
        (*tcp).check = [0, 0];
        (*tcp).urg_ptr = [0, 0];
        let pseudo = pseudo_header_seed(daddr, saddr, PROTO_TCP, TcpHdr::LEN as u16);
        let segment = sum_words(u32::from(pseudo), &*tcp.cast::<[u8; TcpHdr::LEN]>());
        (*tcp).check = finish(segment).to_ne_bytes();
    }
    Ok(())
}

/// Turns a UDP datagram to a dead frontend into an ICMP port unreachable
/// quoting its IP header and first 8 bytes (RFC 792).
#[inline(always)]
pub fn icmp_port_unreachable(ctx: &XdpContext, pkt: &Packet) -> Result<(), Unreplied> {
    /// The quoted part: the datagram's IP header and UDP header.
    const QUOTE_LEN: usize = Ipv4Hdr::LEN + UdpHdr::LEN;
    /// The ICMP message: its header and the quote.
    const MESSAGE_LEN: usize = Icmpv4Hdr::LEN + QUOTE_LEN;
    const GROW: i32 = (Ipv4Hdr::LEN + Icmpv4Hdr::LEN) as i32;
    if pkt.ihl_bytes != Ipv4Hdr::LEN {
        return Err(Unreplied);
    }
    let (saddr, daddr) = (pkt.saddr(), pkt.daddr());
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
    let total = EthHdr::LEN + Ipv4Hdr::LEN + MESSAGE_LEN;
    let old_len = (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: the helper checks the resulting length itself.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, total as i32 - old_len) } != 0 {
        return Err(Unreplied);
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Unreplied)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(Unreplied)?;
    let message: *mut [u8; MESSAGE_LEN] =
        ptr_at(ctx, EthHdr::LEN + Ipv4Hdr::LEN).ok_or(Unreplied)?;
    let icmp = message.cast::<Icmpv4Hdr>();
    // SAFETY: all bounds-checked just above; the old Ethernet header (now
    // overlapping the new IP header) was read before these writes.
    unsafe {
        (*eth).dst_addr = node_mac;
        (*eth).src_addr = client_mac;
        (*eth).ether_type = ETH_P_IP_RAW;
        write_ip(
            ip,
            daddr,
            saddr,
            IPPROTO_ICMP,
            (Ipv4Hdr::LEN + MESSAGE_LEN) as u16,
        );
        (*icmp).type_ = ICMP_DEST_UNREACH;
        (*icmp).code = ICMP_PORT_UNREACH;
        (*icmp).check = [0, 0];
        (*icmp).data = [0; 4]; // unused for port unreachable
        (*icmp).check = finish(sum_words(0, &*message)).to_ne_bytes();
    }
    Ok(())
}
