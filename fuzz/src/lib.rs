//! The checks the fuzz targets run, one function per target, each taking the raw fuzz
//! input. `tests/it/fuzz_checks.rs` in the main crate includes this same file to replay the
//! inputs kept in `tests/fuzz-regressions/<target>/` and to drive the checks from
//! proptest, so a finding stays a test without a second copy of its oracle.
//!
//! A check panics when the code under test misbehaves: a panic inside it, a result that
//! disagrees with the reference written here, or a broken invariant.

mod file_name;
mod framing;
mod json_array;
mod knobs;
mod multipart;
mod tar;

pub use self::file_name::{documented_rule_allows, file_name};
pub use self::framing::{length_frames, ndjson_lines, raw_splitter, whole_body};
pub use self::json_array::json_array;
pub use self::multipart::multipart;
pub use self::tar::tar_encoder;

/// Runs one of the async decoders to completion: their input is all in memory, so a
/// current-thread runtime made once per thread does, and keeps each run cheap.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime =
            tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime");
    }
    RUNTIME.with(|runtime| runtime.block_on(future))
}
