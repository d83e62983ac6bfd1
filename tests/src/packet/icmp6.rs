//! ICMPv6 errors the datapath sends (RFC 4443): [`verify_icmp6`] parses
//! the frame with etherparse and checks the ICMPv6 checksum over the IPv6
//! pseudo header with the RFC 1071 sum of `rfc1071.rs` — never mcs's own
//! arithmetic.

use std::net::Ipv6Addr;

use anyhow::{Context as _, Result, ensure};
use etherparse::{IpNumber, Ipv6Header};

use super::{ETH_LEN, rfc1071};

/// The minimum IPv6 MTU: no ICMPv6 error is longer (RFC 4443 §2.4 (c)).
pub const MIN_MTU: usize = 1280;

/// What a verified ICMPv6 error carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Icmp6Seen {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub icmp_type: u8,
    pub code: u8,
    /// The invoking packet as quoted (after the 8-byte ICMPv6 header).
    pub quote: Vec<u8>,
}

/// Parses an Ethernet + IPv6 + ICMPv6 frame: the IPv6 payload length must
/// match the frame, the packet must fit in the minimum MTU, and the
/// ICMPv6 checksum must verify over the pseudo header (RFC 4443 §2.3).
pub fn verify_icmp6(frame: &[u8]) -> Result<Icmp6Seen> {
    ensure!(
        frame.len() >= ETH_LEN && frame[12..ETH_LEN] == [0x86, 0xdd],
        "not an Ethernet frame carrying IPv6: {frame:02x?}"
    );
    let (ip, rest) = Ipv6Header::from_slice(&frame[ETH_LEN..]).context("IPv6 header")?;
    ensure!(
        ip.next_header == IpNumber::IPV6_ICMP,
        "next header {:?}, not ICMPv6",
        ip.next_header
    );
    ensure!(
        usize::from(ip.payload_length) == rest.len(),
        "payload length {} but {} bytes follow the IPv6 header",
        ip.payload_length,
        rest.len()
    );
    ensure!(
        frame.len() - ETH_LEN <= MIN_MTU,
        "{} bytes of IPv6 packet exceed the minimum MTU",
        frame.len() - ETH_LEN
    );
    ensure!(rest.len() >= 8, "ICMPv6 header cut short");
    let len = u32::try_from(rest.len()).context("message length")?;
    let pseudo = rfc1071::pseudo6(ip.source, ip.destination, 58, len);
    let sum = rfc1071::sum(rfc1071::sum(0, &pseudo), rest);
    ensure!(
        rfc1071::fold(sum) == 0xffff,
        "ICMPv6 checksum {:#06x} does not verify",
        u16::from_be_bytes([rest[2], rest[3]])
    );
    Ok(Icmp6Seen {
        src: ip.source.into(),
        dst: ip.destination.into(),
        icmp_type: rest[0],
        code: rest[1],
        quote: rest[8..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::ETHERNET6;

    /// A port unreachable built by hand (checksum from the pseudo header).
    fn message(quote: &[u8]) -> Vec<u8> {
        let (src, dst): (Ipv6Addr, Ipv6Addr) =
            ("fd00:96::a".parse().unwrap(), "fd00:1::2".parse().unwrap());
        let mut icmp = vec![1, 4, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quote);
        let pseudo = rfc1071::pseudo6(src.octets(), dst.octets(), 58, icmp.len() as u32);
        let check = !rfc1071::fold(rfc1071::sum(rfc1071::sum(0, &pseudo), &icmp));
        icmp[2..4].copy_from_slice(&check.to_be_bytes());
        let mut frame = ETHERNET6.to_vec();
        frame.extend_from_slice(&[0x60, 0, 0, 0]);
        frame.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        frame.extend_from_slice(&[58, 64]);
        frame.extend_from_slice(&src.octets());
        frame.extend_from_slice(&dst.octets());
        frame.extend_from_slice(&icmp);
        frame
    }

    #[test]
    fn a_right_message_verifies_and_a_changed_one_fails() {
        let frame = message(&[9; 61]);
        let seen = verify_icmp6(&frame).unwrap();
        assert_eq!((seen.icmp_type, seen.code, seen.quote.len()), (1, 4, 61));
        for at in [ETH_LEN + 8, ETH_LEN + 40, frame.len() - 1] {
            let mut changed = frame.clone();
            changed[at] ^= 1;
            assert!(verify_icmp6(&changed).is_err(), "byte {at} changed");
        }
        let too_long = message(&[0; MIN_MTU]);
        assert!(verify_icmp6(&too_long).is_err());
    }
}
