//! libFuzzer entry of the `checksum` target; the checks live in
//! `mcs_fuzz::checksum` so the stable fallback driver runs the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcs_fuzz::checksum::run(data));
