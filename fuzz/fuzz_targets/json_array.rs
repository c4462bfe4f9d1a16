//! Fuzz target: `spout_fuzz::json_array` (the checks live in the library, shared with `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spout_fuzz::json_array(data));
