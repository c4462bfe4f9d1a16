//! A load generator for spout-sidecar that measures it against baselines and checks
//! that every message it sent was committed exactly once, bytes unchanged.
//!
//! ```text
//! scenario ─► run: sink + read-back, sidecar process, load (workers on connections)
//!                  └─► flush, stop, read back ─► verify ─► report (table, JSON)
//! suite ─► scenarios + baselines (bare hyper, pipe, Python tarfile) ─► targets
//! curves ─► sweeps of scenarios beside their baselines ─► JSON ─► plot ─► PNGs
//! ```

pub mod baselines;
pub mod body;
pub mod client;
pub mod curves;
pub mod load;
pub mod msg;
pub mod pin;
#[cfg(feature = "plot")]
pub mod plot;
pub mod process;
pub mod readback;
pub mod report;
pub mod run;
pub mod scenario;
pub mod suite;
pub mod tar_stream;
pub mod verify;
pub mod wrk;
