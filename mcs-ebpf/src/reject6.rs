//! IPv6 refusals (the IPv4 ones are `crate::reject`): a TCP RST, or an
//! ICMPv6 destination unreachable / port unreachable (RFC 4443 §3.1) that
//! quotes as much of the refused datagram as fits in the minimum IPv6 MTU.
//! The hooks resize and send the reply (`xdp/reject.rs`, `tc/reject.rs`);
//! this module writes its headers and checksums.
//!
//! Only packets without extension headers are answered (as IPv4 answers
//! only packets without options); fragments and chains the parser does not
//! follow never get here.
//!
//! The quoted datagram can be longer than any header the program writes,
//! so its sum is not taken word by word: [`sum_packet`] has the kernel's
//! `bpf_csum_diff` add it up in fixed-size chunks, and a socket buffer whose
//! UDP checksum the kernel completes later needs no sum at all (see
//! [`QuoteSum`]).

use aya_ebpf::helpers::generated::bpf_csum_diff;
use mcs_common::{
    PROTO_TCP,
    byte_order::Addr6,
    checksum::{finish, pseudo_header_seed_of, sum_words},
};
use network_types::{ip::Ipv6Hdr, tcp::TcpHdr};

use crate::{
    datapath::Unreplied,
    packet::{IpFamily, Packet, PacketData, TCP_DOFF_BYTE, TCP_FLAGS_BYTE, ptr_at},
    reject::{Completion, Rst},
};

const IPPROTO_ICMPV6: u8 = 58;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PORT_UNREACH: u8 = 4;
const HOP_LIMIT: u8 = 64;
/// The minimum IPv6 MTU (RFC 8200 §5): an ICMPv6 error is no longer.
const MIN_MTU: usize = 1280;
/// Bytes of an ICMPv6 error's own header (type, code, checksum, unused).
pub const ICMP6_HDR_LEN: usize = 8;
/// The reply's headers in front of the quote: IPv6 and ICMPv6.
pub const GROW: usize = Ipv6Hdr::LEN + ICMP6_HDR_LEN;
/// The longest quoted UDP datagram: the rest of the minimum MTU after the
/// reply's headers and the quoted IPv6 header.
pub const QUOTED_L4_MAX: usize = MIN_MTU - GROW - Ipv6Hdr::LEN;
/// The RST after the Ethernet header.
pub const RST_LEN: usize = Ipv6Hdr::LEN + TcpHdr::LEN;
/// Chunk `bpf_csum_diff` sums at a time (the helper takes at most 512
/// bytes, a multiple of four).
const CHUNK: usize = 64;
/// TCP data offset of a header without options, in 32-bit words.
const TCP_DOFF_NO_OPTIONS: u8 = (TcpHdr::LEN / 4) as u8;

const _: () = assert!(QUOTED_L4_MAX == 1192 && QUOTED_L4_MAX.is_multiple_of(4));

/// A refusable packet: one without extension headers (so its addresses
/// and ports are still where the reply's go once resized), and how much of
/// its datagram an ICMPv6 error quotes. The addresses and ports are read
/// from the packet when the reply is written, not carried: the tc program's
/// stack has no room for two more IPv6 addresses.
#[derive(Clone, Copy)]
pub struct Refused6 {
    /// Bytes of the datagram quoted after its IPv6 header.
    pub quoted_l4: usize,
}

impl Refused6 {
    /// The refused packet, if it can be answered at all (no extension
    /// headers).
    #[inline(always)]
    pub fn of(pkt: &Packet<Addr6>) -> Result<Self, Unreplied> {
        if !pkt.plain() {
            return Err(Unreplied);
        }
        Ok(Self {
            quoted_l4: usize::from(pkt.l4_len).min(QUOTED_L4_MAX),
        })
    }

    /// The ICMPv6 message's length: its header and the quote.
    #[inline(always)]
    pub fn message_len(&self) -> usize {
        ICMP6_HDR_LEN + Ipv6Hdr::LEN + self.quoted_l4
    }
}

/// Fills a fresh IPv6 header.
///
/// # Safety
/// `ip` must point at 40 writable bytes inside the packet.
#[inline(always)]
unsafe fn write_ip(ip: *mut Ipv6Hdr, saddr: Addr6, daddr: Addr6, next: u8, payload_len: u16) {
    // SAFETY: per the function contract.
    unsafe {
        (*ip).vcf = [0x60, 0, 0, 0];
        (*ip).payload_len = payload_len.to_be_bytes();
        (*ip).next_hdr = next;
        (*ip).hop_limit = HOP_LIMIT;
        <Addr6 as IpFamily>::store((*ip).src_addr.as_mut_ptr(), saddr);
        <Addr6 as IpFamily>::store((*ip).dst_addr.as_mut_ptr(), daddr);
    }
}

/// Turns the refused segment's IPv6 and TCP headers (`ip` then `tcp`, in
/// place, cut to a header without options) into the RST's.
///
/// # Safety
/// `ip` and `tcp` must point at whole writable headers inside the packet,
/// holding the refused segment's.
#[inline(always)]
pub unsafe fn write_rst(ip: *mut Ipv6Hdr, tcp: *mut TcpHdr, rst: &Rst, completion: Completion) {
    // SAFETY: per the function contract.
    unsafe {
        let client = <Addr6 as IpFamily>::load((*ip).src_addr.as_ptr());
        let vip = <Addr6 as IpFamily>::load((*ip).dst_addr.as_ptr());
        write_ip(ip, vip, client, PROTO_TCP, TcpHdr::LEN as u16);
        let (client_port, vip_port) = ((*tcp).source, (*tcp).dest);
        let bytes = tcp.cast::<u8>();
        (*tcp).source = vip_port;
        (*tcp).dest = client_port;
        (*tcp).seq = rst.seq.to_be_bytes();
        (*tcp).ack_seq = rst.ack.to_be_bytes();
        *bytes.add(TCP_DOFF_BYTE) = TCP_DOFF_NO_OPTIONS << 4;
        *bytes.add(TCP_FLAGS_BYTE) = rst.flags;
        (*tcp).window = [0, 0];
        (*tcp).check = [0, 0];
        (*tcp).urg_ptr = [0, 0];
        let pseudo = pseudo_header_seed_of(vip, client, PROTO_TCP, TcpHdr::LEN as u16);
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

/// How the quoted UDP datagram adds to the ICMPv6 checksum.
#[derive(Clone, Copy)]
pub enum QuoteSum {
    /// Its words sum to this (unfolded), as they are in the packet.
    Summed(u32),
    /// The kernel completes the quoted UDP checksum later, over the quoted
    /// datagram, from the seed this field holds: whatever the data, a
    /// datagram with its finished checksum in place sums to the seed's
    /// complement (the completion writes `~(rest + seed)`, and
    /// `rest + ~(rest + seed) = ~seed` in ones-complement arithmetic).
    KernelCompleted { seed: u16 },
}

/// Sums `LEN` bytes of the packet at `off` onto `acc` (a `bpf_csum_diff`
/// accumulator).
#[inline(always)]
fn sum_chunk<const LEN: usize>(
    ctx: &impl PacketData,
    off: usize,
    acc: u32,
) -> Result<u32, Unreplied> {
    let chunk: *mut [u8; LEN] = ptr_at(ctx, off).ok_or(Unreplied)?;
    // SAFETY: bounds-checked by `ptr_at`; the helper only reads `LEN`
    // bytes (a multiple of four).
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, chunk.cast(), LEN as u32, acc) };
    if sum < 0 {
        return Err(Unreplied);
    }
    Ok(sum as u32)
}

/// The ones-complement sum of the packet's `len` bytes at `off`
/// (`len <= QUOTED_L4_MAX`), folded to 16 bits; words are paired from
/// `off`, an odd last byte padded with zero.
#[inline(always)]
pub fn sum_packet(ctx: &impl PacketData, off: usize, len: usize) -> Result<u16, Unreplied> {
    let mut acc = 0u32;
    let mut done = 0usize;
    for _ in 0..QUOTED_L4_MAX / CHUNK {
        if len - done < CHUNK {
            break;
        }
        acc = sum_chunk::<CHUNK>(ctx, off + done, acc)?;
        done += CHUNK;
    }
    // Under a chunk left: halve down to whole 32-bit words.
    if len - done >= 32 {
        acc = sum_chunk::<32>(ctx, off + done, acc)?;
        done += 32;
    }
    if len - done >= 16 {
        acc = sum_chunk::<16>(ctx, off + done, acc)?;
        done += 16;
    }
    if len - done >= 8 {
        acc = sum_chunk::<8>(ctx, off + done, acc)?;
        done += 8;
    }
    if len - done >= 4 {
        acc = sum_chunk::<4>(ctx, off + done, acc)?;
        done += 4;
    }
    // The helper's sum is 32 bits wide with end-around carry: fold it.
    let mut sum = u32::from(mcs_common::checksum::fold(acc));
    let rest = len - done;
    if rest >= 2 {
        let word: *const [u8; 2] = ptr_at(ctx, off + done).ok_or(Unreplied)?;
        // SAFETY: bounds-checked by `ptr_at`.
        sum += u32::from(u16::from_ne_bytes(unsafe { *word }));
        done += 2;
    }
    if rest & 1 == 1 {
        let byte: *const u8 = ptr_at(ctx, off + done).ok_or(Unreplied)?;
        // SAFETY: bounds-checked by `ptr_at`.
        sum += u32::from(u16::from_ne_bytes([unsafe { *byte }, 0]));
    }
    Ok(mcs_common::checksum::fold(sum))
}

/// Writes the ICMPv6 port unreachable's IPv6 header and ICMPv6 header in
/// front of the quote (the refused packet's IPv6 header at `quoted_ip`,
/// its datagram after it, summing as `quote`).
///
/// # Safety
/// `ip`, `icmp` and `quoted_ip` must point at whole writable areas inside
/// the packet.
#[inline(always)]
pub unsafe fn write_icmp(
    ip: *mut Ipv6Hdr,
    icmp: *mut [u8; ICMP6_HDR_LEN],
    quoted_ip: *const [u8; Ipv6Hdr::LEN],
    refused: &Refused6,
    quote: QuoteSum,
) {
    let message_len = refused.message_len() as u16;
    // SAFETY: per the function contract.
    unsafe {
        // The refused packet's addresses, from its quoted header.
        let quoted = quoted_ip.cast::<Ipv6Hdr>();
        let client = <Addr6 as IpFamily>::load((*quoted).src_addr.as_ptr());
        let vip = <Addr6 as IpFamily>::load((*quoted).dst_addr.as_ptr());
        write_ip(ip, vip, client, IPPROTO_ICMPV6, message_len);
        // Type, code, checksum (zero while summing), unused.
        *icmp = [ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, 0, 0, 0, 0, 0, 0];
        let pseudo = pseudo_header_seed_of(vip, client, IPPROTO_ICMPV6, message_len);
        let mut sum = sum_words(u32::from(pseudo), &*icmp);
        sum = sum_words(sum, &*quoted_ip);
        sum += match quote {
            QuoteSum::Summed(words) => words,
            QuoteSum::KernelCompleted { seed } => u32::from(!seed),
        };
        let check = finish(sum).to_ne_bytes();
        (*icmp)[2] = check[0];
        (*icmp)[3] = check[1];
    }
}
