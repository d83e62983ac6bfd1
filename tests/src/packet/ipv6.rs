//! IPv6 frames: the builder ([`Packet6`], Ethernet + IPv6 + extension
//! headers + TCP/UDP with a finished, partial or absent checksum) and its
//! verifier ([`verify6`]: etherparse walks the extension headers and
//! computes the finished checksums; partial ones are finished as the
//! kernel would) — never mcs's own arithmetic.

use std::net::Ipv6Addr;

use anyhow::{Context as _, Result, bail, ensure};
use etherparse::{IpNumber, Ipv6Extensions, Ipv6Header, TcpHeader, UdpHeader};

use super::{Csum, ETH_LEN, ETHERNET, Proto, finish_segment, rfc1071, tcp_flags, tcp_header};

/// The Ethernet header of every built IPv6 frame (EtherType IPv6).
pub const ETHERNET6: [u8; ETH_LEN] = {
    let mut eth = ETHERNET;
    eth[12] = 0x86;
    eth[13] = 0xdd;
    eth
};
/// Length of the IPv6 header.
pub const IPV6_LEN: usize = 40;

/// An IPv6 extension header of a built frame (eight bytes each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options (a PadN option).
    HopByHop,
    /// A routing header with no segments left (experimental type 253).
    Routing,
    /// Destination options (a PadN option).
    DestOptions,
    /// A fragment header: offset in 8-byte units, more-fragments bit.
    Fragment { offset: u16, more: bool },
    /// Another header with this number, eight bytes, length field 0 (e.g.
    /// 51, an authentication header; 135, mobility).
    Other(u8),
}

impl Ext {
    fn number(self) -> u8 {
        match self {
            Self::HopByHop => 0,
            Self::Routing => 43,
            Self::DestOptions => 60,
            Self::Fragment { .. } => 44,
            Self::Other(number) => number,
        }
    }

    fn bytes(self, next: u8) -> [u8; 8] {
        match self {
            Self::HopByHop | Self::DestOptions => [next, 0, 1, 4, 0, 0, 0, 0],
            Self::Routing => [next, 0, 253, 0, 0, 0, 0, 0],
            Self::Fragment { offset, more } => {
                let [hi, lo] = (offset << 3 | u16::from(more)).to_be_bytes();
                [next, 0, hi, lo, 0, 0, 0x12, 0x34]
            }
            Self::Other(_) => [next, 0, 0, 0, 0, 0, 0, 0],
        }
    }
}

/// One IPv6 frame to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet6 {
    pub src: Ipv6Addr,
    pub sport: u16,
    pub dst: Ipv6Addr,
    pub dport: u16,
    pub proto: Proto,
    pub csum: Csum,
    /// Extension headers between the IPv6 and the TCP/UDP header.
    pub exts: Vec<Ext>,
    /// TCP flags; ignored for UDP.
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
}

impl Packet6 {
    pub fn new(proto: Proto, src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Self {
        Self {
            src,
            sport,
            dst,
            dport,
            proto,
            csum: Csum::Full,
            exts: Vec::new(),
            tcp_flags: match proto {
                Proto::Tcp => tcp_flags::SYN,
                Proto::Udp => 0,
            },
            payload: match proto {
                Proto::Tcp => b"GET / HTTP/1.1\r\nHost: web\r\n\r\n".to_vec(),
                Proto::Udp => b"ping, an odd-length payload".to_vec(),
            },
        }
    }

    pub fn csum(mut self, csum: Csum) -> Self {
        self.csum = csum;
        self
    }

    pub fn flags(mut self, tcp_flags: u8) -> Self {
        self.tcp_flags = tcp_flags;
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub fn exts(mut self, exts: &[Ext]) -> Self {
        self.exts = exts.to_vec();
        self
    }

    /// The packet the other end sends back: addresses and ports swapped,
    /// an established segment.
    pub fn reply(&self) -> Self {
        Self {
            src: self.dst,
            sport: self.dport,
            dst: self.src,
            dport: self.sport,
            ..self.clone()
        }
        .flags(tcp_flags::ACK)
    }

    /// The frame; panics on fields that make none (a bug in the test).
    pub fn build(&self) -> Vec<u8> {
        self.try_build()
            .expect("an IPv6 packet that fits in a frame")
    }

    pub fn try_build(&self) -> Result<Vec<u8>> {
        let segment = self.segment()?;
        let proto = self.proto.number().0;
        let mut exts = Vec::new();
        for (i, ext) in self.exts.iter().enumerate() {
            let next = self.exts.get(i + 1).map_or(proto, |next| next.number());
            exts.extend_from_slice(&ext.bytes(next));
        }
        let payload_len = u16::try_from(exts.len() + segment.len()).context("payload length")?;
        let mut frame = ETHERNET6.to_vec();
        frame.extend_from_slice(&[0x60, 0, 0, 0]);
        frame.extend_from_slice(&payload_len.to_be_bytes());
        frame.push(self.exts.first().map_or(proto, |ext| ext.number()));
        frame.push(64);
        frame.extend_from_slice(&self.src.octets());
        frame.extend_from_slice(&self.dst.octets());
        frame.extend_from_slice(&exts);
        frame.extend_from_slice(&segment);
        Ok(frame)
    }

    fn segment(&self) -> Result<Vec<u8>> {
        let (src, dst) = (self.src.octets(), self.dst.octets());
        let mut segment = Vec::new();
        match self.proto {
            Proto::Udp => {
                let udp = UdpHeader::with_ipv6_checksum(
                    self.sport,
                    self.dport,
                    &Ipv6Header {
                        source: src,
                        destination: dst,
                        ..Ipv6Header::default()
                    },
                    &self.payload,
                )
                .context("UDP length")?;
                udp.write(&mut segment).context("write UDP header")?;
            }
            Proto::Tcp => {
                let mut tcp = tcp_header(self.sport, self.dport, self.tcp_flags);
                tcp.checksum = tcp
                    .calc_checksum_ipv6_raw(src, dst, &self.payload)
                    .context("TCP checksum")?;
                tcp.write(&mut segment).context("write TCP header")?;
            }
        }
        finish_segment(segment, self.proto, self.csum, &self.payload, |len| {
            let len = u32::try_from(len).context("segment length")?;
            Ok(rfc1071::seed6(src, dst, self.proto.number().0, len))
        })
    }
}

/// What a verified IPv6 frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen6 {
    pub src: Ipv6Addr,
    pub sport: u16,
    pub dst: Ipv6Addr,
    pub dport: u16,
    pub proto: IpNumber,
}

/// Parses an Ethernet + IPv6 (+ extension headers) + TCP/UDP frame and
/// checks its L4 checksum as `csum` says it must be (see
/// [`super::verify`]; IPv6 has no header checksum).
pub fn verify6(frame: &[u8], csum: Csum) -> Result<Seen6> {
    ensure!(
        frame.len() >= ETH_LEN && frame[12..ETH_LEN] == [0x86, 0xdd],
        "not an Ethernet frame carrying IPv6: {frame:02x?}"
    );
    let (ip, rest) = Ipv6Header::from_slice(&frame[ETH_LEN..]).context("IPv6 header")?;
    let payload = rest
        .get(..usize::from(ip.payload_length))
        .context("the frame is shorter than the IPv6 payload length")?;
    let (_, proto, segment) =
        Ipv6Extensions::from_slice(ip.next_header, payload).context("IPv6 extension headers")?;
    let (src, dst) = (ip.source, ip.destination);
    let (sport, dport, field, expected) = match proto {
        IpNumber::TCP => {
            let (tcp, data) = TcpHeader::from_slice(segment).context("TCP header")?;
            let expected = tcp.calc_checksum_ipv6_raw(src, dst, data)?;
            (
                tcp.source_port,
                tcp.destination_port,
                tcp.checksum,
                expected,
            )
        }
        IpNumber::UDP => {
            let (udp, data) = UdpHeader::from_slice(segment).context("UDP header")?;
            let expected = udp.calc_checksum_ipv6_raw(src, dst, data)?;
            (
                udp.source_port,
                udp.destination_port,
                udp.checksum,
                expected,
            )
        }
        other => bail!("IPv6 upper layer {other:?}, not TCP or UDP"),
    };
    let udp = proto == IpNumber::UDP;
    match csum {
        Csum::Full => ensure!(
            field == expected,
            "full L4 checksum {field:#06x}, expected {expected:#06x}"
        ),
        Csum::Zero => ensure!(udp && field == 0, "UDP zero checksum must stay zero"),
        Csum::Partial => {
            let len = u32::try_from(segment.len()).context("segment length")?;
            let seed = rfc1071::seed6(src, dst, proto.0, len);
            ensure!(
                field == seed,
                "partial checksum {field:#06x} is not the pseudo-header seed {seed:#06x}"
            );
            let finished = rfc1071::finish_partial(segment, udp);
            ensure!(
                finished == expected,
                "partial checksum finished gives {finished:#06x}, expected {expected:#06x}"
            );
        }
    }
    Ok(Seen6 {
        src: src.into(),
        sport,
        dst: dst.into(),
        dport,
        proto,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::CHECKSUM_KINDS;

    fn addr(text: &str) -> Ipv6Addr {
        text.parse().unwrap()
    }

    #[test]
    fn every_checksum_kind_and_chain_verifies_as_built() {
        let chains: [&[Ext]; 3] = [
            &[],
            &[Ext::HopByHop, Ext::Routing, Ext::DestOptions],
            &[Ext::Fragment {
                offset: 0,
                more: false,
            }],
        ];
        for (proto, csum) in CHECKSUM_KINDS {
            for exts in chains {
                let packet = Packet6::new(proto, addr("fd00:1::2"), 4000, addr("fd00:96::a"), 80)
                    .csum(csum)
                    .exts(exts);
                let frame = packet.build();
                assert_eq!(
                    frame.len(),
                    ETH_LEN + IPV6_LEN + 8 * exts.len() + {
                        let l4 = if proto == Proto::Tcp { 20 } else { 8 };
                        l4 + packet.payload.len()
                    }
                );
                let seen = verify6(&frame, csum).unwrap();
                assert_eq!(
                    (seen.src, seen.sport, seen.dst, seen.dport),
                    (packet.src, 4000, packet.dst, 80)
                );
            }
        }
    }

    #[test]
    fn a_wrong_checksum_fails() {
        let packet = Packet6::new(Proto::Udp, addr("fd00:1::2"), 4000, addr("fd00:96::a"), 53);
        let mut frame = packet.build();
        *frame.last_mut().unwrap() ^= 1;
        assert!(verify6(&frame, Csum::Full).is_err());
        assert!(verify6(&packet.build(), Csum::Partial).is_err());
        // A changed address breaks the pseudo header's sum.
        let mut moved = packet.build();
        moved[ETH_LEN + 39] ^= 1;
        assert!(verify6(&moved, Csum::Full).is_err());
    }
}
