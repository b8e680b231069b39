//! libFuzzer target `traffic`: see `revisor_fuzzing::traffic`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| revisor_fuzzing::traffic(data));
