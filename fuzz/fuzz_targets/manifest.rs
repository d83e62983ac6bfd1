//! libFuzzer entry of the `manifest` target; the checks live in
//! `mcs_fuzz::manifest` so the stable fallback driver runs the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mcs_fuzz::manifest::run(data));
