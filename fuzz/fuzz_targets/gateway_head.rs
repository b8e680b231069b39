//! libFuzzer target `gateway_head`: see `revisor_fuzzing::gateway_head`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| revisor_fuzzing::gateway_head(data));
