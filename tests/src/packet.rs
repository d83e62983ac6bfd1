//! Test frames for the datapath: one builder for Ethernet + IPv4 + TCP/UDP
//! frames with a finished, partial or absent L4 checksum, and one verifier
//! ([`verify`]) that checks a frame's checksums without any of mcs's own
//! arithmetic; the same for IPv6 with extension headers ([`Packet6`],
//! [`verify6`], in `ipv6.rs`). Used by the `BPF_PROG_TEST_RUN` tier, the fuzz targets and
//! the per-packet benchmark, so they all send the same frames.

mod icmp6;
mod ipv6;
pub mod rfc1071;
mod verify;

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, ensure};
use etherparse::{IpNumber, Ipv4Header, Ipv4Options, TcpHeader, UdpHeader};

pub use icmp6::{Icmp6Seen, verify_icmp6};
pub use ipv6::{ETHERNET6, Ext, IPV6_LEN, Packet6, Seen6, verify6};
pub use verify::{Seen, verify};

/// Length of the Ethernet header every frame starts with.
pub const ETH_LEN: usize = 14;
/// The Ethernet header of every built frame: locally administered
/// addresses, EtherType IPv4.
pub const ETHERNET: [u8; ETH_LEN] = [0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];

/// TCP flag bits (byte 13 of the TCP header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// IPv4 flags and fragment offset (bytes 6–7 of the header).
pub mod frag {
    /// Don't fragment.
    pub const DF: u16 = 0x4000;
    /// More fragments: a first fragment when the offset is 0.
    pub const MF: u16 = 0x2000;
}

/// The kind of L4 checksum a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Csum {
    /// Finished checksum (what a sender with TX checksum offload off, or a
    /// NIC, hands over).
    Full,
    /// The pseudo-header seed Linux leaves in the field of a
    /// CHECKSUM_PARTIAL packet (veth with TX offload on).
    Partial,
    /// UDP without checksum (field 0).
    Zero,
}

/// The transport protocol of a built frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> IpNumber {
        match self {
            Proto::Tcp => IpNumber::TCP,
            Proto::Udp => IpNumber::UDP,
        }
    }

    /// Offset of the checksum field in the L4 header.
    pub fn check_offset(self) -> usize {
        match self {
            Proto::Tcp => 16,
            Proto::Udp => 6,
        }
    }
}

/// Every kind of L4 checksum a datapath meets, per protocol: TCP full or
/// partial, UDP full, partial or none.
pub const CHECKSUM_KINDS: [(Proto, Csum); 5] = [
    (Proto::Tcp, Csum::Full),
    (Proto::Tcp, Csum::Partial),
    (Proto::Udp, Csum::Full),
    (Proto::Udp, Csum::Partial),
    (Proto::Udp, Csum::Zero),
];

/// One frame to build: every header field a test varies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub proto: Proto,
    pub csum: Csum,
    /// IPv4 options, a multiple of 4 bytes.
    pub options: Vec<u8>,
    /// IPv4 flags and fragment offset ([`frag`]).
    pub frags: u16,
    /// TCP flags ([`tcp_flags`]); ignored for UDP.
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
}

/// Sequence number of every built TCP segment.
pub const TCP_SEQ: u32 = 1000;
/// Window of every built TCP segment.
const TCP_WINDOW: u16 = 64240;

impl Packet {
    /// [`Packet::tcp`] or [`Packet::udp`].
    pub fn new(
        proto: Proto,
        src: impl Into<Ipv4Addr>,
        sport: u16,
        dst: impl Into<Ipv4Addr>,
        dport: u16,
    ) -> Self {
        match proto {
            Proto::Tcp => Self::tcp(src, sport, dst, dport),
            Proto::Udp => Self::udp(src, sport, dst, dport),
        }
    }

    /// A TCP SYN with an HTTP-like payload, DF set, full checksum.
    pub fn tcp(src: impl Into<Ipv4Addr>, sport: u16, dst: impl Into<Ipv4Addr>, dport: u16) -> Self {
        Self {
            src: src.into(),
            sport,
            dst: dst.into(),
            dport,
            proto: Proto::Tcp,
            csum: Csum::Full,
            options: Vec::new(),
            frags: frag::DF,
            tcp_flags: tcp_flags::SYN,
            payload: b"GET / HTTP/1.1\r\nHost: web\r\n\r\n".to_vec(),
        }
    }

    /// A UDP datagram with an odd-length payload (the checksum's padding
    /// byte matters), DF set, full checksum.
    pub fn udp(src: impl Into<Ipv4Addr>, sport: u16, dst: impl Into<Ipv4Addr>, dport: u16) -> Self {
        Self {
            proto: Proto::Udp,
            tcp_flags: 0,
            payload: b"ping, an odd-length payload".to_vec(),
            ..Self::tcp(src, sport, dst, dport)
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

    /// A later segment of the flow: ACK instead of SYN.
    pub fn established(self) -> Self {
        self.flags(tcp_flags::ACK)
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self
    }

    pub fn frags(mut self, frags: u16) -> Self {
        self.frags = frags;
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
        .established()
    }

    /// The frame; panics where [`Packet::try_build`] fails (test input
    /// that cannot be a frame is a bug in the test).
    pub fn build(&self) -> Vec<u8> {
        self.try_build().expect("a packet that fits in a frame")
    }

    /// The frame, or why these fields make none (options not a multiple of
    /// 4 or over 40 bytes, a payload beyond the IPv4 total length).
    pub fn try_build(&self) -> Result<Vec<u8>> {
        let segment = self.segment()?;
        let mut ip = Ipv4Header::new(
            u16::try_from(segment.len()).context("segment length")?,
            64,
            self.proto.number(),
            self.src.octets(),
            self.dst.octets(),
        )
        .context("IPv4 header")?;
        ip.options = Ipv4Options::try_from(self.options.as_slice())
            .map_err(|_| anyhow::anyhow!("{} bytes of IPv4 options", self.options.len()))?;
        // The total length again, now that the options are known.
        ip.set_payload_len(segment.len())
            .context("IPv4 total length")?;
        ip.dont_fragment = self.frags & frag::DF != 0;
        ip.more_fragments = self.frags & frag::MF != 0;
        ip.fragment_offset = (self.frags & 0x1fff).try_into().context("13 bits")?;
        ip.header_checksum = ip.calc_header_checksum();
        let mut frame = ETHERNET.to_vec();
        ip.write(&mut frame).context("write IPv4 header")?;
        frame.extend_from_slice(&segment);
        Ok(frame)
    }

    /// The L4 header and payload, with the checksum field per `csum`.
    fn segment(&self) -> Result<Vec<u8>> {
        let (src, dst) = (self.src.octets(), self.dst.octets());
        let mut segment = Vec::new();
        match self.proto {
            Proto::Udp => {
                let mut udp =
                    UdpHeader::without_ipv4_checksum(self.sport, self.dport, self.payload.len())
                        .context("UDP length")?;
                udp.checksum = udp
                    .calc_checksum_ipv4_raw(src, dst, &self.payload)
                    .context("UDP checksum")?;
                udp.write(&mut segment).context("write UDP header")?;
            }
            Proto::Tcp => {
                let mut tcp = tcp_header(self.sport, self.dport, self.tcp_flags);
                tcp.checksum = tcp
                    .calc_checksum_ipv4_raw(src, dst, &self.payload)
                    .context("TCP checksum")?;
                tcp.write(&mut segment).context("write TCP header")?;
            }
        }
        finish_segment(segment, self.proto, self.csum, &self.payload, |len| {
            let len = u16::try_from(len).context("segment length")?;
            Ok(rfc1071::seed(src, dst, self.proto.number().0, len))
        })
    }
}

/// The TCP header of every built segment ([`TCP_SEQ`], [`TCP_WINDOW`],
/// the flags of `tcp_flags`); the caller computes its family's checksum.
fn tcp_header(sport: u16, dport: u16, tcp_flags: u8) -> TcpHeader {
    let mut tcp = TcpHeader::new(sport, dport, TCP_SEQ, TCP_WINDOW);
    let flag = |bit: u8| tcp_flags & bit != 0;
    tcp.fin = flag(tcp_flags::FIN);
    tcp.syn = flag(tcp_flags::SYN);
    tcp.rst = flag(tcp_flags::RST);
    tcp.psh = flag(tcp_flags::PSH);
    tcp.ack = flag(tcp_flags::ACK);
    tcp.urg = flag(0x20);
    tcp.ece = flag(0x40);
    tcp.cwr = flag(0x80);
    tcp
}

/// Appends `payload` to an L4 header written with its finished checksum,
/// then sets the checksum field as `csum` says: kept (full), 0 (UDP
/// without checksum), or the pseudo-header seed `seed(segment length)` a
/// CHECKSUM_PARTIAL segment carries (the family's pseudo-header).
fn finish_segment(
    mut segment: Vec<u8>,
    proto: Proto,
    csum: Csum,
    payload: &[u8],
    seed: impl FnOnce(usize) -> Result<u16>,
) -> Result<Vec<u8>> {
    segment.extend_from_slice(payload);
    let field = match csum {
        Csum::Full => return Ok(segment),
        Csum::Zero => {
            ensure!(proto == Proto::Udp, "only UDP may go without checksum");
            0
        }
        Csum::Partial => seed(segment.len())?,
    };
    let at = proto.check_offset();
    segment[at..at + 2].copy_from_slice(&field.to_be_bytes());
    Ok(segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 4] = [10, 1, 2, 3];
    const B: [u8; 4] = [10, 96, 0, 10];

    #[test]
    fn every_checksum_kind_verifies_as_built() {
        let kinds = CHECKSUM_KINDS
            .iter()
            .map(|(proto, csum)| Packet::new(*proto, A, 4000, B, 80).csum(*csum));
        for packet in kinds.chain([Packet::tcp(A, 4000, B, 80).options(&[1, 1, 1, 0])]) {
            let seen = verify(&packet.build(), packet.csum).unwrap();
            assert_eq!(
                (seen.src, seen.sport, seen.dst, seen.dport),
                (packet.src, packet.sport, packet.dst, packet.dport),
                "{packet:?}"
            );
            assert_eq!(seen.proto, packet.proto.number());
        }
    }

    #[test]
    fn a_checksum_of_the_wrong_kind_fails() {
        let full = Packet::tcp(A, 4000, B, 80).build();
        assert!(verify(&full, Csum::Partial).is_err());
        let partial = Packet::udp(A, 4000, B, 53).csum(Csum::Partial).build();
        assert!(verify(&partial, Csum::Full).is_err());
        assert!(verify(&partial, Csum::Zero).is_err());
        let mut corrupt = Packet::udp(A, 4000, B, 53).build();
        *corrupt.last_mut().unwrap() ^= 1;
        assert!(verify(&corrupt, Csum::Full).is_err());
        let mut bad_header = full.clone();
        bad_header[ETH_LEN + 8] = 1; // TTL, header checksum not updated
        assert!(verify(&bad_header, Csum::Full).is_err());
        assert!(verify(&full[..ETH_LEN + 30], Csum::Full).is_err());
    }

    #[test]
    fn fields_land_where_the_datapath_reads_them() {
        let frame = Packet::tcp(A, 4000, B, 80)
            .flags(tcp_flags::RST | tcp_flags::ACK)
            .frags(frag::MF | 3)
            .payload(b"")
            .build();
        assert_eq!(frame.len(), ETH_LEN + 20 + 20);
        assert_eq!(&frame[..ETH_LEN], &ETHERNET);
        assert_eq!(&frame[ETH_LEN + 6..ETH_LEN + 8], &[0x20, 3]);
        assert_eq!(frame[ETH_LEN + 20 + 13], 0x14);
        assert_eq!(&frame[ETH_LEN + 12..ETH_LEN + 16], &A);
        let seq = u32::from_be_bytes(frame[ETH_LEN + 24..ETH_LEN + 28].try_into().unwrap());
        assert_eq!(seq, TCP_SEQ);
        let reply = Packet::tcp(A, 4000, B, 80).reply();
        assert_eq!(
            (
                reply.src,
                reply.sport,
                reply.dst,
                reply.dport,
                reply.tcp_flags
            ),
            (B.into(), 80, A.into(), 4000, tcp_flags::ACK)
        );
    }

    #[test]
    fn impossible_packets_are_errors() {
        assert!(
            Packet::tcp(A, 1, B, 2)
                .options(&[1, 1])
                .try_build()
                .is_err()
        );
        assert!(
            Packet::tcp(A, 1, B, 2)
                .csum(Csum::Zero)
                .try_build()
                .is_err()
        );
        assert!(
            Packet::udp(A, 1, B, 2)
                .payload(&vec![0; 70_000])
                .try_build()
                .is_err()
        );
    }
}
