//! The verifier: a frame's IPv4 header checksum and its L4 checksum of the
//! expected kind, checked with etherparse (finished checksums) and by
//! finishing a partial checksum as the kernel would — never with mcs's own
//! arithmetic.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, bail, ensure};
use etherparse::{IpNumber, Ipv4Header, TcpHeader, UdpHeader};

use super::{Csum, ETH_LEN, rfc1071};

/// What a verified frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub src: Ipv4Addr,
    /// 0 for ICMP.
    pub sport: u16,
    pub dst: Ipv4Addr,
    /// 0 for ICMP.
    pub dport: u16,
    pub proto: IpNumber,
}

/// Parses an Ethernet + IPv4 + TCP/UDP/ICMP frame and checks every checksum:
/// the IPv4 header's, and the L4 one as `csum` says it must be. A `Full`
/// field must equal what etherparse computes over the segment; a `Partial`
/// field must be the pseudo-header seed of the frame's (possibly rewritten)
/// addresses, and finishing it as the kernel would must give that same
/// checksum; a `Zero` field (UDP only) must still be 0. ICMP messages always
/// carry a finished checksum.
pub fn verify(frame: &[u8], csum: Csum) -> Result<Seen> {
    ensure!(
        frame.len() >= ETH_LEN && frame[12..ETH_LEN] == [0x08, 0x00],
        "not an Ethernet frame carrying IPv4: {frame:02x?}"
    );
    let (ip, rest) = Ipv4Header::from_slice(&frame[ETH_LEN..]).context("IPv4 header")?;
    ensure!(
        ip.header_checksum == ip.calc_header_checksum(),
        "IPv4 header checksum {:#06x}, expected {:#06x}",
        ip.header_checksum,
        ip.calc_header_checksum()
    );
    let len = usize::from(ip.payload_len().context("IPv4 total length")?);
    let segment = rest.get(..len).with_context(|| {
        format!(
            "the frame holds {} bytes of a {len}-byte segment",
            rest.len()
        )
    })?;
    let (src, dst) = (ip.source, ip.destination);
    let (sport, dport) = match ip.protocol {
        IpNumber::TCP => {
            let (tcp, payload) = TcpHeader::from_slice(segment).context("TCP header")?;
            let expected = tcp
                .calc_checksum_ipv4_raw(src, dst, payload)
                .context("TCP checksum")?;
            check_l4(csum, ip.protocol, src, dst, segment, tcp.checksum, expected)?;
            (tcp.source_port, tcp.destination_port)
        }
        IpNumber::UDP => {
            let (udp, payload) = UdpHeader::from_slice(segment).context("UDP header")?;
            let expected = udp
                .calc_checksum_ipv4_raw(src, dst, payload)
                .context("UDP checksum")?;
            check_l4(csum, ip.protocol, src, dst, segment, udp.checksum, expected)?;
            (udp.source_port, udp.destination_port)
        }
        IpNumber::ICMP => {
            ensure!(csum == Csum::Full, "ICMP has no {csum:?} checksum");
            ensure!(
                rfc1071::header_verifies(segment),
                "ICMP checksum: the message sums to {:#06x}",
                rfc1071::fold(rfc1071::sum(0, segment))
            );
            (0, 0)
        }
        other => bail!("IPv4 protocol {other:?}, not TCP, UDP or ICMP"),
    };
    Ok(Seen {
        src: Ipv4Addr::from(src),
        sport,
        dst: Ipv4Addr::from(dst),
        dport,
        proto: ip.protocol,
    })
}

/// The L4 checksum `field` of `segment` against the kind `csum` says it is;
/// `expected` is the finished checksum etherparse computed.
fn check_l4(
    csum: Csum,
    proto: IpNumber,
    src: [u8; 4],
    dst: [u8; 4],
    segment: &[u8],
    field: u16,
    expected: u16,
) -> Result<()> {
    let udp = proto == IpNumber::UDP;
    match csum {
        Csum::Full => ensure!(
            field == expected,
            "full L4 checksum {field:#06x}, expected {expected:#06x}"
        ),
        Csum::Zero => {
            ensure!(udp, "only UDP goes without checksum");
            ensure!(field == 0, "UDP zero checksum must stay zero: {field:#06x}");
        }
        Csum::Partial => {
            let len = u16::try_from(segment.len()).context("segment length")?;
            let seed = rfc1071::seed(src, dst, proto.0, len);
            ensure!(
                field == seed,
                "partial checksum {field:#06x} is not the pseudo-header seed {seed:#06x} of the frame's addresses"
            );
            let finished = rfc1071::finish_partial(segment, udp);
            ensure!(
                finished == expected,
                "partial checksum finished as the kernel does gives {finished:#06x}, expected {expected:#06x}"
            );
        }
    }
    Ok(())
}
