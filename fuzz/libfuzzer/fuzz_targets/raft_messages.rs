#![no_main]
//! libFuzzer's entry to `mobilus_fuzz::meta::raft_messages`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mobilus_fuzz::meta::raft_messages(data));
