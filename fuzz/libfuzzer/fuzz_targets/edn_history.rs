#![no_main]
//! libFuzzer's entry to `mobilus_fuzz::outside::edn_history`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mobilus_fuzz::outside::edn_history(data));
