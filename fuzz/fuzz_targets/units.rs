//! libFuzzer target `units`: see `revisor_fuzzing::units`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| revisor_fuzzing::units(data));
