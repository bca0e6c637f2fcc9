#![no_main]
//! libFuzzer's entry to `mobilus_fuzz::wire::requests`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mobilus_fuzz::wire::requests(data));
