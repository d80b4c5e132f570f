#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| eniflow_fuzz_targets::packet(data));
