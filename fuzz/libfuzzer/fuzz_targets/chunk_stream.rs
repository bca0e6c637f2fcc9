#![no_main]
//! libFuzzer's entry to `mobilus_fuzz::data::chunk_stream`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mobilus_fuzz::data::chunk_stream(data));
