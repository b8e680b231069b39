//! libFuzzer target `manifest`: see `revisor_fuzzing::manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| revisor_fuzzing::manifest(data));
