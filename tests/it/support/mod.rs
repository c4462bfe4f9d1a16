//! Helpers shared by the integration tests: a raw HTTP client, the sidecar as a child
//! process, a Pachyderm-like pipe reader, and numbered NDJSON lines.

pub mod client;
pub mod ndjson_lines;
pub mod pachyderm_reader;
pub mod sidecar;
