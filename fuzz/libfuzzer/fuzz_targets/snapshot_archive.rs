#![no_main]
//! libFuzzer's entry to `mobilus_fuzz::meta::snapshot_archive`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mobilus_fuzz::meta::snapshot_archive(data));
