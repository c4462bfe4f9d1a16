//! Fuzz target: `spout_fuzz::whole_body` (the checks live in the library, shared with `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spout_fuzz::whole_body(data));
