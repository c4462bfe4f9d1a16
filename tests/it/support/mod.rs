//! Helpers shared by the integration tests: a raw HTTP client, the sidecar as a child
//! process, a crash round, a Pachyderm-like pipe reader, numbered NDJSON lines, and the Python the
//! tests run.

pub mod client;
pub mod crash;
pub mod curl;
pub mod ndjson_lines;
pub mod pachyderm_reader;
pub mod python;
pub mod sidecar;
