//! Bounds-checked packet access and IPv4 TCP/UDP parsing, and the header
//! offsets the datapath reads and writes by name. The same for every hook:
//! XDP and tc both hand the program an Ethernet frame ([`PacketData`]).

use core::mem::{offset_of, size_of};

use aya_ebpf::programs::{TcContext, XdpContext};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use mcs_common::{PROTO_TCP, PROTO_UDP};

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
/// Fragment offset mask and "more fragments" bit of `frags`, in host order.
const IP_FRAG_MASK: u16 = 0x3fff;

/// Where the L4 ports and checksum of a TCP or UDP packet are.
pub struct L4Fields {
    pub sport: *mut [u8; 2],
    pub dport: *mut [u8; 2],
    pub check: *mut [u8; 2],
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
}

/// A parsed IPv4 TCP/UDP packet.
pub struct Packet {
    pub ip: *mut Ipv4Hdr,
    pub proto: u8,
    /// IPv4 header length in bytes (20 without options).
    pub ihl_bytes: usize,
    /// L4 length in host order (IP total length minus header).
    pub l4_len: u16,
    pub l4: L4Fields,
    /// Frame length, for byte counters.
    pub len: u64,
}

/// What kind of packet this is, when it is not a plain TCP/UDP one.
pub enum ParseError {
    /// Not IPv4, or not TCP/UDP: not ours.
    NotTcpUdpV4,
    /// Headers cut short: the kernel will drop it; we leave it alone.
    Truncated,
    /// An IPv4 fragment (with its destination for the VIP check).
    Fragment { daddr: u32, proto: u8 },
    /// IPv4 TCP/UDP whose L4 header is cut short.
    L4Truncated { daddr: u32, proto: u8 },
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

#[inline(always)]
pub fn parse<C: PacketData>(ctx: &C) -> Result<Packet, ParseError> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(ParseError::Truncated)?;
    // SAFETY: `ptr_at` checked the bounds.
    if unsafe { (*eth).ether_type } != ETH_P_IP_RAW {
        return Err(ParseError::NotTcpUdpV4);
    }
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
        return Err(ParseError::NotTcpUdpV4);
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(ParseError::NotTcpUdpV4);
    }
    let ihl_bytes = ((vihl & 0x0f) as usize) * 4;
    if ihl_bytes < Ipv4Hdr::LEN || (tot_len as usize) < ihl_bytes {
        return Err(ParseError::Truncated);
    }
    if frags & IP_FRAG_MASK != 0 {
        return Err(ParseError::Fragment { daddr, proto });
    }
    let l4_len = tot_len - ihl_bytes as u16;
    // The IP total length must cover the L4 header: otherwise the ports and
    // checksum we would rewrite lie in padding outside the datagram.
    let l4_header = if proto == PROTO_TCP {
        TcpHdr::LEN
    } else {
        UdpHdr::LEN
    };
    if (l4_len as usize) < l4_header {
        return Err(ParseError::L4Truncated { daddr, proto });
    }
    let l4_off = EthHdr::LEN + ihl_bytes;
    let len = ctx.frame_len();
    let l4 = if proto == PROTO_TCP {
        let tcp: *mut TcpHdr =
            ptr_at(ctx, l4_off).ok_or(ParseError::L4Truncated { daddr, proto })?;
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
            ptr_at(ctx, l4_off).ok_or(ParseError::L4Truncated { daddr, proto })?;
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
        ihl_bytes,
        l4_len,
        l4,
        len,
    })
}

impl Packet {
    /// Offset of the L4 header in the frame (for hooks that rewrite
    /// through helpers, which take offsets).
    #[inline(always)]
    pub fn l4_off(&self) -> usize {
        EthHdr::LEN + self.ihl_bytes
    }

    /// Offset of the L4 checksum field in the frame.
    #[inline(always)]
    pub fn check_off(&self) -> usize {
        self.l4_off()
            + if self.proto == PROTO_TCP {
                offset_of!(TcpHdr, check)
            } else {
                offset_of!(UdpHdr, check)
            }
    }

    #[inline(always)]
    pub fn saddr(&self) -> u32 {
        // SAFETY: `ip` was bounds-checked in `parse`.
        unsafe { u32::from_ne_bytes((*self.ip).src_addr) }
    }

    #[inline(always)]
    pub fn daddr(&self) -> u32 {
        // SAFETY: `ip` was bounds-checked in `parse`.
        unsafe { u32::from_ne_bytes((*self.ip).dst_addr) }
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
