#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| eniflow_fuzz_targets::pod_eni_annotation(data));
