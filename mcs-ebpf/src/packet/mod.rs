//! Bounds-checked packet access and IPv4/IPv6 TCP/UDP parsing, and the
//! header offsets the datapath reads and writes by name. The same for every
//! hook: XDP and tc both hand the program an Ethernet frame
//! ([`PacketData`]).
//!
//! [`l3`] tells the family by the EtherType; [`parse`] then gives a
//! [`Packet<A>`] of that family's address type (`u32` or `Addr6`,
//! [`IpFamily`]), so the datapath is one generic translation with two
//! instantiations (no enum of both: a packet pointer must stay whole in a
//! register or a 64-bit stack slot for the verifier). IPv6 extension headers (hop-by-hop, routing,
//! destination options) are walked by a bounded loop; a fragment header
//! takes the fragment rule; a chain the parser does not follow (another
//! extension header, or more than [`IPV6_EXT_MAX`]) is
//! [`ParseError::Unfollowed`]: passed untouched, counted by the caller.
//! Each family's parser lives in its own module (`ipv4`, `ipv6`); this one
//! holds what both share (bounds checks, the L4 part, the parsed packet).

mod ipv4;
mod ipv6;

use core::mem::{offset_of, size_of};

use aya_ebpf::programs::{TcContext, XdpContext};
use network_types::{eth::EthHdr, tcp::TcpHdr, udp::UdpHdr};

use mcs_common::{
    PROTO_TCP,
    byte_order::{Addr6, NetAddr},
};

pub use ipv4::parse_v4;
pub use ipv6::{IPV6_EXT_MAX, parse_v6};

/// A program context with direct packet access: the frame lies in
/// `[data, data_end)`.
pub trait PacketData {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole frame's length, for byte counters (a socket buffer may
    /// hold more than its linear part `[data, data_end)`).
    fn frame_len(&self) -> u64;
}

impl PacketData for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn frame_len(&self) -> u64 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u64
    }
}

impl PacketData for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn frame_len(&self) -> u64 {
        u64::from(self.len())
    }
}

/// Returns a pointer to a `T` at `offset` bytes into the packet.
///
/// # Safety
///
/// The returned pointer is within `[data, data_end)` for `size_of::<T>()`
/// bytes (checked here, in the form the verifier understands). It is valid
/// until the packet is resized (we never resize) and may be unaligned: `T`
/// must have alignment 1, as every network-types header has.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl PacketData, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Ethernet type IPv4, as it sits in the header.
pub const ETH_P_IP_RAW: u16 = u16::from_ne_bytes(0x0800u16.to_be_bytes());
/// Ethernet type IPv6, as it sits in the header.
pub const ETH_P_IPV6_RAW: u16 = u16::from_ne_bytes(0x86ddu16.to_be_bytes());
/// An IP family as the packet carries it: its address type and where the
/// addresses sit in its header.
pub trait IpFamily: NetAddr {
    /// Length of the IP header without options or extension headers.
    const HDR_LEN: usize;
    /// Offsets of the source and destination address in the IP header.
    const SRC_OFF: usize;
    const DST_OFF: usize;

    /// Loads an address from the packet.
    ///
    /// # Safety
    /// `at` must point at a whole address inside the packet.
    unsafe fn load(at: *const u8) -> Self;

    /// The address as the standard library has it (log lines).
    fn ip(self) -> core::net::IpAddr;

    /// 32-bit words of an address (the kernel's checksum helpers take at
    /// most four bytes at a time).
    const WORDS: usize;

    /// Word `i` of the address (`i < WORDS`).
    fn word(self, i: usize) -> u32;

    /// Whether the IP header has a checksum of its own (IPv4; IPv6 has none).
    const HEADER_CHECKSUM: bool;

    /// The packet as an IPv4 one, if it is (refusals are built per family).
    fn v4(pkt: &Packet<Self>) -> Option<&Packet<u32>>;

    /// Parses a frame of this family (after the Ethernet header).
    fn parse<C: PacketData>(ctx: &C) -> Result<Packet<Self>, ParseError>;

    /// Stores an address into the packet.
    ///
    /// # Safety
    /// `at` must point at a whole writable address inside the packet.
    unsafe fn store(at: *mut u8, addr: Self);
}

/// Where the L4 ports and checksum of a TCP or UDP packet are.
pub struct L4Fields {
    pub sport: *mut [u8; 2],
    pub dport: *mut [u8; 2],
    pub check: *mut [u8; 2],
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
}

/// A parsed TCP/UDP packet of family `A` (`u32`: IPv4, `Addr6`: IPv6).
pub struct Packet<A> {
    /// The IP header.
    pub ip: *mut u8,
    pub proto: u8,
    /// Offset of the L4 header in the frame: after the IPv4 header and its
    /// options, or after the IPv6 header and its extension headers.
    pub l4_off: usize,
    /// L4 length in host order (IPv4: total length minus header; IPv6:
    /// payload length minus extension headers).
    pub l4_len: u16,
    pub l4: L4Fields,
    /// Frame length, for byte counters.
    pub len: u64,
    _family: core::marker::PhantomData<A>,
}

/// The IP family a frame carries, by its EtherType.
pub enum L3 {
    V4,
    V6,
}

/// The destination of a packet the parser stopped at, for the
/// ClusterSetIP check.
pub enum Dest {
    V4 { daddr: u32, proto: u8 },
    V6 { daddr: Addr6, proto: u8 },
}

impl Dest {
    /// The destination and protocol (log lines).
    #[inline(always)]
    pub fn parts(&self) -> (core::net::IpAddr, u8) {
        match *self {
            Self::V4 { daddr, proto } => (daddr.ip(), proto),
            Self::V6 { daddr, proto } => (daddr.ip(), proto),
        }
    }
}

/// What kind of packet this is, when it is not a plain TCP/UDP one.
pub enum ParseError {
    /// Not IP, or not TCP/UDP: not ours.
    NotTcpUdp,
    /// Headers cut short: the kernel will drop it; we leave it alone.
    Truncated,
    /// An IP fragment (with its destination for the VIP check).
    Fragment(Dest),
    /// TCP/UDP whose L4 header is cut short.
    L4Truncated(Dest),
    /// An IPv6 extension header chain the parser does not follow (another
    /// extension header, or too long a chain): the upper layer is unknown.
    Unfollowed { daddr: Addr6 },
}

pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// Byte of the TCP header holding the data offset (high nibble, in 32-bit
/// words) — the first byte of network-types' flag bitfield.
pub const TCP_DOFF_BYTE: usize = offset_of!(TcpHdr, _bitfield_1);
/// Byte of the TCP header holding the flags (`TCP_FLAG_*`).
pub const TCP_FLAGS_BYTE: usize = TCP_DOFF_BYTE + 1;

const _: () = assert!(TCP_DOFF_BYTE == 12 && TCP_FLAGS_BYTE == 13);

/// The IP family of the frame (`None`: not IP, or no whole Ethernet
/// header).
#[inline(always)]
pub fn l3<C: PacketData>(ctx: &C) -> Option<L3> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked the bounds.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == ETH_P_IP_RAW {
        Some(L3::V4)
    } else if ether_type == ETH_P_IPV6_RAW {
        Some(L3::V6)
    } else {
        None
    }
}

/// Parses a frame [`l3`] found to be of family `A`.
#[inline(always)]
pub fn parse<A: IpFamily, C: PacketData>(ctx: &C) -> Result<Packet<A>, ParseError> {
    A::parse(ctx)
}

/// The L4 part of a packet whose IP header is at `ip` and L4 header at
/// frame offset `l4_off`.
#[inline(always)]
fn l4<A, C: PacketData>(
    ctx: &C,
    ip: *mut u8,
    proto: u8,
    l4_off: usize,
    l4_len: u16,
    dest: impl Fn() -> Dest,
) -> Result<Packet<A>, ParseError> {
    // The IP length must cover the L4 header: otherwise the ports and
    // checksum we would rewrite lie in padding outside the datagram.
    let l4_header = if proto == PROTO_TCP {
        TcpHdr::LEN
    } else {
        UdpHdr::LEN
    };
    if (l4_len as usize) < l4_header {
        return Err(ParseError::L4Truncated(dest()));
    }
    let len = ctx.frame_len();
    let l4 = if proto == PROTO_TCP {
        let tcp: *mut TcpHdr =
            ptr_at(ctx, l4_off).ok_or_else(|| ParseError::L4Truncated(dest()))?;
        // SAFETY: `ptr_at` checked the bounds of the whole TCP header, the
        // flags byte included.
        unsafe {
            L4Fields {
                sport: &raw mut (*tcp).source,
                dport: &raw mut (*tcp).dest,
                check: &raw mut (*tcp).check,
                tcp_flags: *(tcp as *const u8).add(TCP_FLAGS_BYTE),
            }
        }
    } else {
        let udp: *mut UdpHdr =
            ptr_at(ctx, l4_off).ok_or_else(|| ParseError::L4Truncated(dest()))?;
        // SAFETY: `ptr_at` checked the bounds of the whole UDP header.
        unsafe {
            L4Fields {
                sport: &raw mut (*udp).src,
                dport: &raw mut (*udp).dst,
                check: &raw mut (*udp).check,
                tcp_flags: 0,
            }
        }
    };
    Ok(Packet {
        ip,
        proto,
        l4_off,
        l4_len,
        l4,
        len,
        _family: core::marker::PhantomData,
    })
}

impl<A: IpFamily> Packet<A> {
    /// Offset of the L4 checksum field in the frame.
    #[inline(always)]
    pub fn check_off(&self) -> usize {
        self.l4_off
            + if self.proto == PROTO_TCP {
                offset_of!(TcpHdr, check)
            } else {
                offset_of!(UdpHdr, check)
            }
    }

    /// Whether the L4 header follows the IP header directly (no IPv4
    /// options, no IPv6 extension headers).
    #[inline(always)]
    pub fn plain(&self) -> bool {
        self.l4_off == EthHdr::LEN + A::HDR_LEN
    }

    #[inline(always)]
    pub fn saddr(&self) -> A {
        // SAFETY: the IP header was bounds-checked in `parse`.
        unsafe { A::load(self.ip.add(A::SRC_OFF)) }
    }

    #[inline(always)]
    pub fn daddr(&self) -> A {
        // SAFETY: the IP header was bounds-checked in `parse`.
        unsafe { A::load(self.ip.add(A::DST_OFF)) }
    }

    #[inline(always)]
    pub fn sport(&self) -> u16 {
        // SAFETY: bounds-checked in `parse`.
        unsafe { u16::from_ne_bytes(*self.l4.sport) }
    }

    #[inline(always)]
    pub fn dport(&self) -> u16 {
        // SAFETY: bounds-checked in `parse`.
        unsafe { u16::from_ne_bytes(*self.l4.dport) }
    }
}
