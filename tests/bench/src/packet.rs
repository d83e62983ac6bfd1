//! The per-packet benchmark's frames: TCP segments of the flow under test,
//! built and checked by `mcs_tests::packet` (full checksums, as a NIC hands
//! frames to XDP).

use std::net::Ipv4Addr;

use anyhow::Result;
use mcs_tests::packet::{Csum, Packet, verify};

/// A TCP segment: a bare SYN opening a flow (`syn`), otherwise an ACK of an
/// established one with a small HTTP-like payload.
pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, syn: bool) -> Result<Vec<u8>> {
    let packet = Packet::tcp(src, sport, dst, dport);
    if syn {
        packet.payload(b"")
    } else {
        packet
            .established()
            .payload(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
    }
    .try_build()
}

/// Source address and port, destination address and port of a frame the
/// program rewrote, once its checksums are verified.
pub fn addresses(frame: &[u8]) -> Result<(Ipv4Addr, u16, Ipv4Addr, u16)> {
    let seen = verify(frame, Csum::Full)?;
    Ok((seen.src, seen.sport, seen.dst, seen.dport))
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
        let syn = tcp(src, 4000, dst, 80, true).unwrap();
        assert_eq!(syn.len(), 14 + 20 + 20, "a bare SYN");
        assert_eq!(addresses(&syn).unwrap(), (src, 4000, dst, 80));
        let ack = tcp(src, 4000, dst, 80, false).unwrap();
        assert_eq!(addresses(&ack).unwrap(), (src, 4000, dst, 80));
        assert!(ack.len() > syn.len());
        let key = lookup_key(&syn).unwrap();
        assert_eq!(&key[..4], &src.octets());
        assert_eq!(&key[4..8], &dst.octets());
        assert!(addresses(&syn[..20]).is_err());
    }
}
