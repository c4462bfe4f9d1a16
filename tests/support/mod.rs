//! Helpers shared by the integration tests; each test file uses a part of them.
#![allow(dead_code)]

pub mod client;
pub mod ndjson_lines;
pub mod pachyderm_reader;
pub mod sidecar;
