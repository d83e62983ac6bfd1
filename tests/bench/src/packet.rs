//! Test frames for `BPF_PROG_TEST_RUN`: Ethernet + IPv4 + TCP with full
//! checksums (what a NIC hands to XDP).

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use etherparse::{IpNumber, Ipv4Header, TcpHeader};

/// A TCP segment with a small HTTP-like payload; `syn` makes it the first
/// packet of a flow, otherwise it is an ACK of an established one.
pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, syn: bool) -> Result<Vec<u8>> {
    let payload: &[u8] = if syn {
        b""
    } else {
        b"GET / HTTP/1.1\r\nHost: b\r\n\r\n"
    };
    let mut tcp = TcpHeader::new(sport, dport, 1000, 64240);
    tcp.syn = syn;
    tcp.ack = !syn;
    tcp.checksum = tcp
        .calc_checksum_ipv4_raw(src.octets(), dst.octets(), payload)
        .context("TCP checksum")?;
    let mut segment = Vec::with_capacity(tcp.header_len() + payload.len());
    tcp.write(&mut segment).context("write TCP header")?;
    segment.extend_from_slice(payload);
    let mut ip = Ipv4Header::new(
        u16::try_from(segment.len()).context("segment length")?,
        64,
        IpNumber::TCP,
        src.octets(),
        dst.octets(),
    )
    .context("IPv4 header")?;
    ip.dont_fragment = true;
    ip.header_checksum = ip.calc_header_checksum();
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    ip.write(&mut frame).context("write IPv4 header")?;
    frame.extend_from_slice(&segment);
    Ok(frame)
}

/// Source address, destination address and ports of a frame made by
/// [`tcp`] (after the program rewrote it).
pub fn addresses(frame: &[u8]) -> Option<(Ipv4Addr, u16, Ipv4Addr, u16)> {
    let ip = frame.get(14..34)?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let l4 = frame.get(14 + ihl..14 + ihl + 4)?;
    Some((
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        u16::from_be_bytes([l4[0], l4[1]]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        u16::from_be_bytes([l4[2], l4[3]]),
    ))
}

/// The 16 bytes `mcs_bench_lookup` uses as its key (frame bytes 26..42).
pub fn lookup_key(frame: &[u8]) -> Option<[u8; 16]> {
    frame.get(26..42)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_their_addresses() {
        let src = Ipv4Addr::new(10, 1, 2, 3);
        let dst = Ipv4Addr::new(10, 96, 0, 10);
        let frame = tcp(src, 4000, dst, 80, true).unwrap();
        assert_eq!(addresses(&frame), Some((src, 4000, dst, 80)));
        let key = lookup_key(&frame).unwrap();
        assert_eq!(&key[..4], &src.octets());
        assert_eq!(&key[4..8], &dst.octets());
        assert!(addresses(&frame[..20]).is_none());
        let parsed = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        assert!(parsed.net.is_some());
    }
}
