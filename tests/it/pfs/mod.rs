//! What the `pfs://` sink's tests (`pfs_sink`, `pfs_binary`) run against: a fake
//! pachd in Python (fake_pachd.py, on Pachyderm's published stubs, its packages in
//! requirements.txt) with its Rust driver, and the library's pipeline assembled in
//! process.

pub mod fake;
pub mod pipeline;
