#![no_main]
//! libFuzzer's entry to `mobilus_fuzz::outside::config_files`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mobilus_fuzz::outside::config_files(data));
