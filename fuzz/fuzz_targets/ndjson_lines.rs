//! Fuzz target: `spout_fuzz::ndjson_lines` (the checks live in the library, shared with `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spout_fuzz::ndjson_lines(data));
