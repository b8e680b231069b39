//! libFuzzer target `inference`: see `revisor_fuzzing::inference`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| revisor_fuzzing::inference(data));
