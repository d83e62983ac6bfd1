//! RFC 1071 checksum arithmetic on big-endian words, written out plainly:
//! the independent reference for mcs's own native-order checksum code
//! (`mcs_common::checksum`), which it must never share.

/// Ones-complement sum of `bytes` as big-endian words (an odd last byte
/// padded with zero), unfolded.
pub fn sum(mut acc: u64, bytes: &[u8]) -> u64 {
    for chunk in bytes.chunks(2) {
        acc += u64::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    acc
}

/// `acc` folded into 16 bits.
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The IPv4 pseudo header of a TCP/UDP segment.
pub fn pseudo(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> [u8; 12] {
    let mut bytes = [0; 12];
    bytes[..4].copy_from_slice(&src);
    bytes[4..8].copy_from_slice(&dst);
    bytes[9] = proto;
    bytes[10..].copy_from_slice(&len.to_be_bytes());
    bytes
}

/// The folded sum a receiver computes over pseudo header and segment,
/// checksum field included (0xffff when the checksum is right).
pub fn residual(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let pseudo = pseudo(src, dst, proto, segment.len() as u16);
    fold(sum(sum(0, &pseudo), segment))
}

/// Whether a segment (checksum field included) verifies, as a receiver
/// checks it.
pub fn verifies(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> bool {
    residual(src, dst, proto, segment) == 0xffff
}

/// The checksum a sender writes (field zeroed in `segment`).
pub fn checksum(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    !residual(src, dst, proto, segment)
}

/// The non-complemented pseudo-header sum Linux leaves in the field of a
/// CHECKSUM_PARTIAL packet.
pub fn seed(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u16 {
    fold(sum(0, &pseudo(src, dst, proto, len)))
}

/// What the kernel writes when it finishes a CHECKSUM_PARTIAL segment
/// (`skb_checksum_help`): the complement of the sum over the segment with
/// the seed in its field; UDP writes a 0 result as 0xffff (0 means none).
pub fn finish_partial(segment: &[u8], udp: bool) -> u16 {
    match !fold(sum(0, segment)) {
        0 if udp => 0xffff,
        finished => finished,
    }
}

/// The IPv6 pseudo header of a TCP/UDP segment (RFC 8200 §8.1).
pub fn pseudo6(src: [u8; 16], dst: [u8; 16], proto: u8, len: u32) -> [u8; 40] {
    let mut bytes = [0; 40];
    bytes[..16].copy_from_slice(&src);
    bytes[16..32].copy_from_slice(&dst);
    bytes[32..36].copy_from_slice(&len.to_be_bytes());
    bytes[39] = proto;
    bytes
}

/// [`seed`] over the IPv6 pseudo header.
pub fn seed6(src: [u8; 16], dst: [u8; 16], proto: u8, len: u32) -> u16 {
    fold(sum(0, &pseudo6(src, dst, proto, len)))
}

/// [`residual`] over the IPv6 pseudo header (also ICMPv6, which has one).
pub fn residual6(src: [u8; 16], dst: [u8; 16], proto: u8, segment: &[u8]) -> u16 {
    let pseudo = pseudo6(src, dst, proto, segment.len() as u32);
    fold(sum(sum(0, &pseudo), segment))
}

/// Whether an IPv4 header, or an ICMP message (checksum included),
/// verifies: the folded sum over it is 0xffff.
pub fn header_verifies(header: &[u8]) -> bool {
    fold(sum(0, header)) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 0001 f203 f4f5 f6f7 sums to ddf2 (folded).
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &bytes)), 0xddf2);
        assert_eq!(fold(sum(0, &[0xab])), 0xab00, "odd byte padded");
    }

    #[test]
    fn a_written_checksum_verifies_and_a_finished_seed_equals_it() {
        let (src, dst) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let mut segment = vec![0x9c, 0x40, 0x00, 0x35, 0x00, 0x0b, 0, 0, b'a', b'b', b'c'];
        let check = checksum(src, dst, 17, &segment);
        segment[6..8].copy_from_slice(&check.to_be_bytes());
        assert!(verifies(src, dst, 17, &segment));
        segment[6..8].copy_from_slice(&seed(src, dst, 17, 11).to_be_bytes());
        assert_eq!(finish_partial(&segment, true), check);
    }
}
