//! Flow hashing used for backend selection, shared by every datapath hook
//! so the XDP and socket paths pick backends the same way.

/// Finalizer of MurmurHash3 (`fmix32`): cheap, well mixed, verifier friendly.
#[inline(always)]
pub const fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Hash of a flow's 5-tuple (fields in packet byte order).
#[inline(always)]
pub const fn flow_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = mix32(saddr ^ 0x9e37_79b9);
    h = mix32(h ^ daddr);
    h = mix32(h ^ ((sport as u32) << 16 | dport as u32));
    mix32(h ^ proto as u32)
}

/// Maps a hash onto `0..count` without division bias worth caring about
/// (Lemire's multiply-shift); `count` must be non-zero.
#[inline(always)]
pub const fn reduce(hash: u32, count: u32) -> u32 {
    ((hash as u64 * count as u64) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_stays_in_range_and_spreads() {
        let mut hits = [0u32; 7];
        for sport in 0..7000u16 {
            let slot = reduce(flow_hash(0x0a01_0002, 0x0a60_000a, sport, 80, 6), 7);
            hits[slot as usize] += 1;
        }
        for count in hits {
            assert!((800..1200).contains(&count), "uneven spread: {hits:?}");
        }
    }

    #[test]
    fn hash_depends_on_every_field() {
        let base = flow_hash(1, 2, 3, 4, 6);
        assert_ne!(base, flow_hash(9, 2, 3, 4, 6));
        assert_ne!(base, flow_hash(1, 9, 3, 4, 6));
        assert_ne!(base, flow_hash(1, 2, 9, 4, 6));
        assert_ne!(base, flow_hash(1, 2, 3, 9, 6));
        assert_ne!(base, flow_hash(1, 2, 3, 4, 17));
    }
}
