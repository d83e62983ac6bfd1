//! IPv4: the family's address type ([`IpFamily`] for `u32`) and the parser
//! of an IPv4 TCP/UDP frame (header, options, fragments).

use core::mem::offset_of;

use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use mcs_common::{PROTO_TCP, PROTO_UDP};

use super::{Dest, IpFamily, Packet, PacketData, ParseError, l4, ptr_at};

/// Fragment offset mask and "more fragments" bit of `frags`, in host order.
const IP_FRAG_MASK: u16 = 0x3fff;

impl IpFamily for u32 {
    const HDR_LEN: usize = Ipv4Hdr::LEN;
    const WORDS: usize = 1;
    const HEADER_CHECKSUM: bool = true;

    #[inline(always)]
    fn word(self, _i: usize) -> u32 {
        self
    }

    #[inline(always)]
    fn v4(pkt: &Packet<Self>) -> Option<&Packet<u32>> {
        Some(pkt)
    }

    #[inline(always)]
    fn parse<C: PacketData>(ctx: &C) -> Result<Packet<Self>, ParseError> {
        parse_v4(ctx)
    }
    const SRC_OFF: usize = offset_of!(Ipv4Hdr, src_addr);
    const DST_OFF: usize = offset_of!(Ipv4Hdr, dst_addr);

    #[inline(always)]
    unsafe fn load(at: *const u8) -> Self {
        // SAFETY: per the function contract.
        u32::from_ne_bytes(unsafe { *at.cast::<[u8; 4]>() })
    }

    #[inline(always)]
    unsafe fn store(at: *mut u8, addr: Self) {
        // SAFETY: per the function contract.
        unsafe { *at.cast::<[u8; 4]>() = addr.to_ne_bytes() };
    }

    #[inline(always)]
    fn ip(self) -> core::net::IpAddr {
        core::net::IpAddr::V4(mcs_common::byte_order::ipv4(self))
    }
}

#[inline(always)]
pub fn parse_v4<C: PacketData>(ctx: &C) -> Result<Packet<u32>, ParseError> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(ParseError::Truncated)?;
    // SAFETY: `ptr_at` checked the bounds.
    let (vihl, proto, tot_len, frags, daddr) = unsafe {
        (
            (*ip).vihl,
            (*ip).proto,
            u16::from_be_bytes((*ip).tot_len),
            u16::from_be_bytes((*ip).frags),
            u32::from_ne_bytes((*ip).dst_addr),
        )
    };
    if vihl >> 4 != 4 {
        return Err(ParseError::NotTcpUdp);
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(ParseError::NotTcpUdp);
    }
    let ihl_bytes = ((vihl & 0x0f) as usize) * 4;
    if ihl_bytes < Ipv4Hdr::LEN || (tot_len as usize) < ihl_bytes {
        return Err(ParseError::Truncated);
    }
    let dest = || Dest::V4 { daddr, proto };
    if frags & IP_FRAG_MASK != 0 {
        return Err(ParseError::Fragment(dest()));
    }
    let l4_len = tot_len - ihl_bytes as u16;
    l4(ctx, ip.cast(), proto, EthHdr::LEN + ihl_bytes, l4_len, dest)
}

impl Packet<u32> {
    /// The IPv4 header.
    #[inline(always)]
    pub fn ipv4(&self) -> *mut Ipv4Hdr {
        self.ip.cast()
    }

    /// IPv4 header length in bytes (20 without options).
    #[inline(always)]
    pub fn ihl_bytes(&self) -> usize {
        self.l4_off - EthHdr::LEN
    }
}
