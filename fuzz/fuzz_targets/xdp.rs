//! libFuzzer entry of the `xdp` target; the checks live in
//! `mcs_fuzz::xdp` so the stable fallback driver runs the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcs_fuzz::xdp::run(data));
