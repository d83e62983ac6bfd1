//! Fuzz targets of mcs. Each module's `run` takes arbitrary bytes and panics
//! when an invariant breaks; libFuzzer (`fuzz_targets/`, nightly) and the
//! stable fallback driver (`src/bin/fuzz_stable.rs`) call the same code.
//!
//! * [`manifest`] — manifest text → parse → desired state → reconcile into
//!   in-memory maps (and a second version of the text applied as a diff);
//! * [`checksum`] — `mcs_common::checksum` (the datapath's NAT arithmetic)
//!   against straightforward RFC 1071 recomputation;
//! * [`xdp`] — frames through the real XDP program (`BPF_PROG_TEST_RUN`,
//!   root only) with maps programmed by the reconciler.

pub mod checksum;
pub mod manifest;
pub mod xdp;

/// The targets, by name.
pub const TARGETS: [&str; 3] = ["manifest", "checksum", "xdp"];

/// Runs target `name` on `data`; `None` for an unknown name.
pub fn run(name: &str, data: &[u8]) -> Option<()> {
    match name {
        "manifest" => manifest::run(data),
        "checksum" => checksum::run(data),
        "xdp" => xdp::run(data),
        _ => return None,
    }
    Some(())
}

/// Reads fuzzer bytes as fields; missing bytes read as zero, so every input
/// is valid.
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub fn u8(&mut self) -> u8 {
        let byte = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        byte
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        for byte in &mut out {
            *byte = self.u8();
        }
        out
    }

    /// Up to `len` bytes (fewer when the input ends).
    pub fn bytes(&mut self, len: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = (start + len).min(self.data.len());
        self.pos = start + len;
        &self.data[start..end]
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        self.pos = self.data.len();
        &self.data[start..]
    }
}

/// Independent RFC 1071 arithmetic on big-endian words (deliberately not
/// `mcs_common::checksum`, which works on native-order words).
pub mod rfc1071 {
    /// Ones-complement sum of `bytes` as big-endian words, unfolded.
    pub fn sum(mut acc: u64, bytes: &[u8]) -> u64 {
        for chunk in bytes.chunks(2) {
            acc += u64::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
        }
        acc
    }

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

    /// Whether a segment (checksum field included) verifies, as a receiver
    /// checks it: the folded sum over pseudo header and segment is 0xffff.
    pub fn verifies(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> bool {
        residual(src, dst, proto, segment) == 0xffff
    }

    /// The folded sum a receiver computes (0xffff when correct).
    pub fn residual(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
        let pseudo = pseudo(src, dst, proto, segment.len() as u16);
        fold(sum(sum(0, &pseudo), segment))
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

    /// Whether an IPv4 header (checksum included) verifies.
    pub fn header_verifies(header: &[u8]) -> bool {
        fold(sum(0, header)) == 0xffff
    }
}
