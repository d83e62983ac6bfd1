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
