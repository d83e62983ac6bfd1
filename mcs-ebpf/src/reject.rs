//! Refusing new flows to a frontend without usable backend, at once and in
//! the protocol's own words (never a silent timeout): TCP gets a RST, UDP an
//! ICMP port unreachable, with the ClusterSetIP as source and the client as
//! destination. This module writes the reply's headers; each hook resizes
//! its packet its own way and sends the reply (XDP: `xdp/reject.rs`, tc:
//! `tc/reject.rs`).
//!
//! Only packets without IP options are answered (fixed-size headers keep the
//! verifier and the checksum loops simple); others are dropped and counted.

use mcs_common::{
    PROTO_TCP,
    checksum::{finish, pseudo_header_seed, sum_words},
};
use network_types::{icmp::Icmpv4Hdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::{
    datapath::Unreplied,
    packet::{
        Packet, TCP_DOFF_BYTE, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN,
        TCP_FLAGS_BYTE,
    },
};

const IPPROTO_ICMP: u8 = 1;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const TTL: u8 = 64;
/// IPv4 `frags` with Don't Fragment set.
const IP_DF: u16 = 0x4000;
/// TCP data offset of a header without options, in 32-bit words.
const TCP_DOFF_NO_OPTIONS: u8 = (TcpHdr::LEN / 4) as u8;

/// The quoted part of an ICMP error: the datagram's IP and UDP headers.
pub const QUOTE_LEN: usize = Ipv4Hdr::LEN + UdpHdr::LEN;
/// The ICMP message: its header and the quote.
pub const MESSAGE_LEN: usize = Icmpv4Hdr::LEN + QUOTE_LEN;
/// The RST after the Ethernet header.
pub const RST_LEN: usize = Ipv4Hdr::LEN + TcpHdr::LEN;
/// The ICMP error after the Ethernet header.
pub const ICMP_LEN: usize = Ipv4Hdr::LEN + MESSAGE_LEN;

/// What the refused packet's addresses and ports were (packet byte order).
#[derive(Clone, Copy)]
pub struct Refused {
    pub client: u32,
    pub vip: u32,
    pub client_port: u16,
    pub vip_port: u16,
}

impl Refused {
    /// The refused packet, if it can be answered at all (no IP options).
    #[inline(always)]
    pub fn of(pkt: &Packet<u32>) -> Result<Self, Unreplied> {
        if pkt.ihl_bytes() != Ipv4Hdr::LEN {
            return Err(Unreplied);
        }
        Ok(Self {
            client: pkt.saddr(),
            vip: pkt.daddr(),
            client_port: pkt.sport(),
            vip_port: pkt.dport(),
        })
    }
}

/// The sequence numbers and flags of the RST answering a segment (RFC 9293
/// §3.10.7.1, reset generation for a CLOSED port).
#[derive(Clone, Copy)]
pub struct Rst {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
}

impl Rst {
    /// The RST for the segment whose header `tcp` points at (`l4_len`: the
    /// segment's length in host order). A RST is never answered.
    ///
    /// # Safety
    /// `tcp` must point at a whole TCP header inside the packet.
    #[inline(always)]
    pub unsafe fn answering(tcp: *const TcpHdr, l4_len: u16) -> Result<Self, Unreplied> {
        // SAFETY: per the function contract.
        let (seq, ack_seq, flags, doff) = unsafe {
            (
                u32::from_be_bytes((*tcp).seq),
                u32::from_be_bytes((*tcp).ack_seq),
                *tcp.cast::<u8>().add(TCP_FLAGS_BYTE),
                u32::from(*tcp.cast::<u8>().add(TCP_DOFF_BYTE) >> 4) * 4,
            )
        };
        if flags & TCP_FLAG_RST != 0 {
            return Err(Unreplied);
        }
        let payload = u32::from(l4_len).saturating_sub(doff);
        Ok(if flags & TCP_FLAG_ACK != 0 {
            Self {
                seq: ack_seq,
                ack: 0,
                flags: TCP_FLAG_RST,
            }
        } else {
            let consumed = payload
                + u32::from(flags & TCP_FLAG_SYN != 0)
                + u32::from(flags & TCP_FLAG_FIN != 0);
            Self {
                seq: 0,
                ack: seq.wrapping_add(consumed),
                flags: TCP_FLAG_RST | TCP_FLAG_ACK,
            }
        })
    }
}

/// How the L4 checksum field of a reply is to be filled.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Nobody completes it: the field holds the finished checksum.
    None,
    /// The kernel completes the checksum later (a socket buffer still marked
    /// `CHECKSUM_PARTIAL`, whose start is the reply's first L4 byte for a
    /// RST, the quoted UDP header for an ICMP error): the field is left for
    /// that completion.
    Kernel,
}

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

/// Writes the RST's IPv4 and TCP headers (`ip` then `tcp`, no options).
///
/// # Safety
/// `ip` and `tcp` must point at whole writable headers inside the packet.
#[inline(always)]
pub unsafe fn write_rst(
    ip: *mut Ipv4Hdr,
    tcp: *mut TcpHdr,
    refused: &Refused,
    rst: &Rst,
    completion: Completion,
) {
    // SAFETY: per the function contract.
    unsafe {
        write_ip(ip, refused.vip, refused.client, PROTO_TCP, RST_LEN as u16);
        let bytes = tcp.cast::<u8>();
        (*tcp).source = refused.vip_port.to_ne_bytes();
        (*tcp).dest = refused.client_port.to_ne_bytes();
        (*tcp).seq = rst.seq.to_be_bytes();
        (*tcp).ack_seq = rst.ack.to_be_bytes();
        *bytes.add(TCP_DOFF_BYTE) = TCP_DOFF_NO_OPTIONS << 4;
        *bytes.add(TCP_FLAGS_BYTE) = rst.flags;
        (*tcp).window = [0, 0];
        (*tcp).check = [0, 0];
        (*tcp).urg_ptr = [0, 0];
        let pseudo = pseudo_header_seed(refused.vip, refused.client, PROTO_TCP, TcpHdr::LEN as u16);
        let check = match completion {
            Completion::None => finish(sum_words(
                u32::from(pseudo),
                &*tcp.cast::<[u8; TcpHdr::LEN]>(),
            )),
            // The kernel sums the segment onto the pseudo-header seed.
            Completion::Kernel => pseudo,
        };
        (*tcp).check = check.to_ne_bytes();
    }
}

/// Writes the ICMP port unreachable's IPv4 header and ICMP header in front
/// of the quote (the refused datagram's IP and UDP headers, already in
/// place after `message`'s ICMP header).
///
/// With [`Completion::Kernel`] the kernel will later write the quoted UDP
/// header's checksum (the socket buffer's checksum start is still that
/// header): the quoted field is zeroed, so the completion writes the
/// complement of the rest of the quoted header's sum, and the ICMP checksum
/// is computed over the message as it will be after that write.
///
/// # Safety
/// `ip` and `message` must point at whole writable areas inside the packet.
#[inline(always)]
pub unsafe fn write_icmp(
    ip: *mut Ipv4Hdr,
    message: *mut [u8; MESSAGE_LEN],
    refused: &Refused,
    completion: Completion,
) {
    /// The quoted UDP checksum field, from the start of the message.
    const QUOTED_UDP_CHECK: usize = Icmpv4Hdr::LEN + Ipv4Hdr::LEN + 6;
    // SAFETY: per the function contract.
    unsafe {
        write_ip(
            ip,
            refused.vip,
            refused.client,
            IPPROTO_ICMP,
            ICMP_LEN as u16,
        );
        let icmp = message.cast::<Icmpv4Hdr>();
        (*icmp).type_ = ICMP_DEST_UNREACH;
        (*icmp).code = ICMP_PORT_UNREACH;
        (*icmp).check = [0, 0];
        (*icmp).data = [0; 4]; // unused for port unreachable
        let bytes = message.cast::<u8>();
        let mut sum = sum_words(0, &*message);
        if completion == Completion::Kernel {
            let quoted_check = bytes.add(QUOTED_UDP_CHECK).cast::<[u8; 2]>();
            // Take the received value out of the message's sum, zero it and
            // count what the completion will write instead.
            sum += u32::from(!u16::from_ne_bytes(*quoted_check));
            *quoted_check = [0, 0];
            let udp = bytes
                .add(Icmpv4Hdr::LEN + Ipv4Hdr::LEN)
                .cast::<[u8; UdpHdr::LEN]>();
            sum += u32::from(finish(sum_words(0, &*udp)));
        }
        (*icmp).check = finish(sum).to_ne_bytes();
    }
}
