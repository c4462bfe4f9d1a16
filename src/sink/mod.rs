//! Sinks: where a sealed batch, laid out as files, becomes a commit.
//!
//! A sink is small: it takes the files of one batch and commits them atomically,
//! retrying what can be retried, and settles the batch's acknowledgement. What
//! surrounds every sink lives beside the implementations, once: [`context`] (what a
//! sink is given), [`runner`] (the thread that drives it), [`spec`] (the `--sink`
//! URI and `auto`), [`health`] (its state for `/readyz`), [`commit_id`],
//! [`backoff`], and [`committer_thread`] for sinks whose commits are async work;
//! [`reader`] reads commits back out for the HTTP API (`pfs://` and `dir:`), and
//! [`fifo_holder`] is the process that holds `fifo:`'s pipe across a crash.
//!
//! | URI | sink |
//! |---|---|
//! | `fifo:PATH` | [`fifo::FifoSink`]: tar archives into a spout's named pipe |
//! | `dir:PATH` | [`dir::DirSink`]: one directory per commit, renamed into place |
//! | `stdout:` | [`stdout::StdoutSink`]: tar archives on standard output |
//! | `pfs://HOST:PORT/REPO@BRANCH` | [`pfs::PfsSink`]: one Pachyderm 2.x commit per batch over gRPC |
//! | `s3://`, `gs://`, `wasb://` | [`object::ObjectSink`]: objects and a manifest per commit in a bucket |
//!
//! Adding a sink is a new module here and one line in [`spec::SCHEMES`].

pub mod backoff;
pub mod commit_id;
pub mod committer_thread;
pub mod context;
pub mod dir;
pub mod dir_reader;
pub mod fifo;
pub mod fifo_holder;
pub mod fifo_marker;
pub mod health;
pub mod object;
pub mod pfs;
pub mod reader;
pub mod runner;
pub mod spec;
pub mod stdout;
pub mod vectored;

use std::time::Duration;

pub use self::context::SinkContext;
pub use self::health::{Health, SinkState};
pub use self::spec::{SinkSettings, SinkSpec};
pub use crate::encode::Commit;

pub trait Sink: Send {
    /// What the sink writes to, for logs and `/status` (e.g. `fifo:/pfs/out`).
    fn describe(&self) -> String;

    /// Commits one batch, retrying transient failures until it succeeds or `ctx`
    /// says to give up. The sink settles `commit.ack` when the commit is final: at
    /// once, or later from [`Sink::settle`] (a FIFO's reader has yet to read it).
    fn submit(&mut self, commit: Commit, ctx: &SinkContext);

    /// Makes progress on commits still in flight, waiting at most `wait` when
    /// there are some. Returns how many remain unsettled.
    fn settle(&mut self, _wait: Duration, _ctx: &SinkContext) -> usize {
        0
    }

    /// The highest sequence number a previous run may have named a commit here by
    /// (`dir:` names commits by their batch's first seq): new messages are numbered
    /// past it, so a commit id already there means that very batch.
    fn seq_floor(&self) -> u64 {
        0
    }

    /// Checks, while no commit is in flight, that the destination is reachable, so
    /// that health (and `/readyz`) tell the truth before the next batch arrives.
    fn probe(&mut self, _ctx: &SinkContext) {}
}
