#![no_main]
//! libFuzzer's entry to `mobilus_fuzz::meta::log_entries`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mobilus_fuzz::meta::log_entries(data));
