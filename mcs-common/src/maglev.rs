//! Maglev lookup tables (`MCS_MAGLEV_V2`): every frontend's table lives in
//! one flat array of 8-byte chunks, at the chunk its service entry names
//! (`ServiceValue::maglev_base`), with as many entries as the service entry
//! says (`maglev_size`, a prime chosen per frontend from its backend count).
//! An entry is a backend slot: one byte while the frontend has at most
//! [`MAGLEV_NARROW_SLOTS`] backends, two bytes (native order) above that
//! (`SVC_F_MAGLEV_WIDE`).
//!
//! The array is an array map (the verifier inlines its lookups: cheaper than
//! the hash lookup of a per-frontend table) and mmapable (the agent writes
//! tables without a system call). The position arithmetic is here, shared by
//! the datapath and the agent.

use core::mem::size_of;

/// Largest table (entries, prime): frontends with more than 163 backends
/// share it, so each of the at most 1021 backends still owns ≥ 16 entries.
pub const MAGLEV_MAX_TABLE_SIZE: u32 = 16_381;
/// Backends of a frontend whose slots fit one-byte entries.
pub const MAGLEV_NARROW_SLOTS: u32 = 256;
/// Bytes of one chunk (one element of the array map).
pub const MAGLEV_CHUNK_BYTES: u32 = 8;

/// One element of the table array: eight one-byte or four two-byte entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaglevChunk {
    pub bytes: [u8; 8],
}

/// Where a frontend's table is: its first chunk, its entries (a prime) and
/// their width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaglevPlace {
    pub base: u32,
    pub size: u32,
    /// Two-byte entries.
    pub wide: bool,
}

impl MaglevPlace {
    /// Chunks the table takes.
    pub const fn chunks(&self) -> u32 {
        maglev_chunks(self.size, self.wide)
    }

    /// Its chunks, `base..base + chunks`.
    pub const fn range(&self) -> core::ops::Range<u32> {
        self.base..self.base.saturating_add(self.chunks())
    }

    /// Whether another table of `size` entries, `wide` or not, fits this
    /// place exactly (it can be rewritten in place).
    pub const fn fits(&self, size: u32, wide: bool) -> bool {
        self.size == size && self.wide == wide
    }
}

/// Where entry `index` of a table starting at chunk `base` lies: the chunk
/// and the byte offset inside it (even for two-byte entries, so both bytes
/// are in the chunk).
#[inline(always)]
pub const fn maglev_position(base: u32, index: u32, wide: bool) -> (u32, usize) {
    let byte = if wide { index << 1 } else { index };
    (base.wrapping_add(byte >> 3), (byte & 7) as usize)
}

/// Chunks a table of `size` entries takes.
pub const fn maglev_chunks(size: u32, wide: bool) -> u32 {
    let bytes = if wide { size * 2 } else { size };
    bytes.div_ceil(MAGLEV_CHUNK_BYTES)
}

/// Whether a frontend with `backends` backends needs two-byte entries.
pub const fn maglev_wide(backends: u32) -> bool {
    backends > MAGLEV_NARROW_SLOTS
}

const _: () = assert!(size_of::<MaglevChunk>() == MAGLEV_CHUNK_BYTES as usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_tile_their_chunks() {
        for wide in [false, true] {
            let size = 1009;
            let base = 5;
            let mut seen = [[false; 8]; 300];
            for index in 0..size {
                let (chunk, byte) = maglev_position(base, index, wide);
                assert!(chunk >= base && chunk < base + maglev_chunks(size, wide));
                let width = if wide { 2 } else { 1 };
                assert!(byte + width <= 8);
                for cell in &mut seen[(chunk - base) as usize][byte..byte + width] {
                    assert!(!*cell, "entry {index} overlaps");
                    *cell = true;
                }
            }
        }
        assert_eq!(maglev_chunks(1009, false), 127);
        assert_eq!(maglev_chunks(1009, true), 253);
        assert!(!maglev_wide(256) && maglev_wide(257));
    }
}
