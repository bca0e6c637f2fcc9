#![no_main]
//! libFuzzer's entry to `mobilus_fuzz::meta::stored_values`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mobilus_fuzz::meta::stored_values(data));
