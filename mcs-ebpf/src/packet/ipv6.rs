//! IPv6: the family's address type ([`IpFamily`] for `Addr6`) and the
//! parser of an IPv6 TCP/UDP frame: the fixed header, the bounded walk of
//! its extension headers (hop-by-hop, routing, destination options), and
//! the fragment rule.

use core::mem::offset_of;

use network_types::{eth::EthHdr, ip::Ipv6Hdr};

use mcs_common::{PROTO_TCP, PROTO_UDP, byte_order::Addr6};

use super::{Dest, IpFamily, Packet, PacketData, ParseError, l4, ptr_at};

/// IPv6 extension headers the parser walks (RFC 8200 §4).
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTIONS: u8 = 60;
/// Extension headers a packet may carry before its TCP/UDP header; a
/// longer chain is not followed.
pub const IPV6_EXT_MAX: usize = 4;
/// Bytes of an IPv6 fragment header.
const IPV6_FRAG_LEN: usize = 8;
/// Fragment offset (high 13 bits) and "more fragments" bit (lowest) of a
/// fragment header's third and fourth bytes, host order.
const IPV6_FRAG_MASK: u16 = 0xfff9;

impl IpFamily for Addr6 {
    const HDR_LEN: usize = Ipv6Hdr::LEN;
    const WORDS: usize = 4;
    const HEADER_CHECKSUM: bool = false;

    #[inline(always)]
    fn word(self, i: usize) -> u32 {
        self[i & 3]
    }

    #[inline(always)]
    fn v4(_pkt: &Packet<Self>) -> Option<&Packet<u32>> {
        None
    }

    #[inline(always)]
    fn parse<C: PacketData>(ctx: &C) -> Result<Packet<Self>, ParseError> {
        parse_v6(ctx)
    }
    const SRC_OFF: usize = offset_of!(Ipv6Hdr, src_addr);
    const DST_OFF: usize = offset_of!(Ipv6Hdr, dst_addr);

    #[inline(always)]
    unsafe fn load(at: *const u8) -> Self {
        // SAFETY: per the function contract (16 bytes: four words).
        unsafe {
            let words = at.cast::<[u8; 4]>();
            [
                u32::from_ne_bytes(*words),
                u32::from_ne_bytes(*words.add(1)),
                u32::from_ne_bytes(*words.add(2)),
                u32::from_ne_bytes(*words.add(3)),
            ]
        }
    }

    #[inline(always)]
    unsafe fn store(at: *mut u8, addr: Self) {
        // SAFETY: per the function contract.
        unsafe {
            let words = at.cast::<[u8; 4]>();
            *words = addr[0].to_ne_bytes();
            *words.add(1) = addr[1].to_ne_bytes();
            *words.add(2) = addr[2].to_ne_bytes();
            *words.add(3) = addr[3].to_ne_bytes();
        }
    }

    #[inline(always)]
    fn ip(self) -> core::net::IpAddr {
        core::net::IpAddr::V6(mcs_common::byte_order::ipv6(self))
    }
}

#[inline(always)]
pub fn parse_v6<C: PacketData>(ctx: &C) -> Result<Packet<Addr6>, ParseError> {
    let ip: *mut Ipv6Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(ParseError::Truncated)?;
    // SAFETY: `ptr_at` checked the bounds.
    let (version, mut next, payload_len, daddr) = unsafe {
        (
            (*ip).vcf[0] >> 4,
            (*ip).next_hdr,
            u16::from_be_bytes((*ip).payload_len),
            <Addr6 as IpFamily>::load((*ip).dst_addr.as_ptr()),
        )
    };
    if version != 6 {
        return Err(ParseError::NotTcpUdp);
    }
    let mut off = EthHdr::LEN + Ipv6Hdr::LEN;
    let mut ext_len = 0usize;
    let mut followed = false;
    for _ in 0..IPV6_EXT_MAX + 1 {
        if next == PROTO_TCP || next == PROTO_UDP {
            followed = true;
            break;
        }
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTIONS => {
                let ext: *const [u8; 2] = ptr_at(ctx, off).ok_or(ParseError::Truncated)?;
                // SAFETY: `ptr_at` checked the bounds.
                let [nh, units] = unsafe { *ext };
                let len = (usize::from(units) + 1) * 8;
                next = nh;
                off += len;
                ext_len += len;
            }
            IPV6_FRAGMENT => {
                let frag: *const [u8; IPV6_FRAG_LEN] =
                    ptr_at(ctx, off).ok_or(ParseError::Truncated)?;
                // SAFETY: `ptr_at` checked the bounds.
                let (nh, offset_m) =
                    unsafe { ((*frag)[0], u16::from_be_bytes([(*frag)[2], (*frag)[3]])) };
                if offset_m & IPV6_FRAG_MASK != 0 {
                    return Err(ParseError::Fragment(Dest::V6 { daddr, proto: nh }));
                }
                // An atomic fragment (offset 0, no more fragments) is a
                // whole packet (RFC 6946): walked on.
                next = nh;
                off += IPV6_FRAG_LEN;
                ext_len += IPV6_FRAG_LEN;
            }
            // Not an extension header: an upper layer that is not ours
            // (ICMPv6, No Next Header, ...).
            other if !is_extension_header(other) => return Err(ParseError::NotTcpUdp),
            _ => return Err(ParseError::Unfollowed { daddr }),
        }
    }
    if !followed {
        return Err(ParseError::Unfollowed { daddr });
    }
    let proto = next;
    if usize::from(payload_len) < ext_len {
        return Err(ParseError::Truncated);
    }
    let l4_len = payload_len - ext_len as u16;
    l4(ctx, ip.cast(), proto, off, l4_len, || Dest::V6 {
        daddr,
        proto,
    })
}

/// Whether `next` names an IPv6 extension header (RFC 8200 §4, the IANA
/// list) rather than an upper layer.
#[inline(always)]
fn is_extension_header(next: u8) -> bool {
    matches!(
        next,
        IPV6_HOP_BY_HOP
            | IPV6_ROUTING
            | IPV6_FRAGMENT
            | IPV6_DEST_OPTIONS
            | 50
            | 51
            | 135
            | 139
            | 140
            | 253
            | 254
    )
}
