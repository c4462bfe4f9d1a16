//! Sinks: where a sealed batch becomes a commit.
//!
//! A sink is small: it takes the files of one batch and commits them atomically,
//! retrying what can be retried. Everything around it (layout, the thread it runs
//! on, health reporting, shutdown) lives here, once, for all of them.
//!
//! | URI | sink |
//! |---|---|
//! | `fifo:PATH` | [`fifo::FifoSink`]: tar archives into a spout's named pipe |
//! | `dir:PATH` | [`dir::DirSink`]: one directory per commit, renamed into place |
//! | `stdout:` | [`stdout::StdoutSink`]: tar archives on standard output |
//! | `pfs://HOST:PORT/REPO@BRANCH` | [`pfs::PfsSink`]: one Pachyderm 2.x commit per batch over gRPC |

pub mod backoff;
pub mod dir;
pub mod fifo;
pub mod health;
pub mod pfs;
pub mod stdout;
pub mod vectored;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use crate::ack::{BatchAck, Receipt};
use crate::batch::Batch;
use crate::message::{batch_file_name, File, Payload, Sequencer};

pub use health::{Health, SinkState};

/// One batch, laid out as files, for a sink to commit.
#[derive(Debug)]
pub struct Commit {
    pub files: Vec<File>,
    pub ack: BatchAck,
}

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

    /// Checks, while no commit is in flight, that the destination is reachable, so
    /// that health (and `/readyz`) tell the truth before the next batch arrives.
    fn probe(&mut self, _ctx: &SinkContext) {}
}

/// What every sink needs from the process around it.
#[derive(Debug, Clone)]
pub struct SinkContext {
    pub health: Arc<Health>,
    /// Set when the shutdown timeout has passed: stop retrying, fail what is left.
    pub give_up: Arc<AtomicBool>,
    /// Pachyderm's `overwrite`: a file name already in the repo is replaced.
    pub overwrite: bool,
    /// How batches become files; [`run`] sets it, so sinks can write [`receipt`]s.
    pub layout: Layout,
}

impl SinkContext {
    pub fn new(health: Arc<Health>, overwrite: bool) -> Self {
        Self { health, give_up: Arc::new(AtomicBool::new(false)), overwrite, layout: Layout::Message }
    }

    /// The receipt for `files` committed as `commit`.
    pub fn receipt(&self, commit: String, files: &[File]) -> Receipt {
        receipt(commit, files, self.layout)
    }

    pub fn giving_up(&self) -> bool {
        self.give_up.load(Ordering::Relaxed)
    }

    /// Sleeps `delay` unless told to give up meanwhile; returns false if so.
    pub fn pause(&self, delay: Duration) -> bool {
        let step = Duration::from_millis(20);
        let mut left = delay;
        while !left.is_zero() {
            if self.giving_up() {
                return false;
            }
            let nap = left.min(step);
            std::thread::sleep(nap);
            left -= nap;
        }
        !self.giving_up()
    }
}

/// How a batch's messages become files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// One file per message, named by `Spout-File` or the message's sequence number.
    Message,
    /// One file per batch holding all its messages (lines end with `\n`).
    Batch,
}

static NEWLINE: Bytes = Bytes::from_static(b"\n");

/// Lays a batch out as files. Payload bytes are shared, not copied.
pub fn layout(batch: Batch, layout: Layout) -> Commit {
    let files = match layout {
        Layout::Message => batch
            .messages
            .into_iter()
            .map(|m| {
                let name = m.file_name();
                let mut data = m.payload;
                // Lines sent under one name (`Spout-File` on NDJSON) append to one
                // file: each keeps its line end so they do not run together. A line
                // in a file of its own is stored without one.
                if m.line && m.name.is_some() {
                    data.push(NEWLINE.clone());
                }
                File { name, data }
            })
            .collect(),
        Layout::Batch => {
            let mut data = Payload::new();
            for m in &batch.messages {
                data.extend(&m.payload);
                if m.line {
                    data.push(NEWLINE.clone());
                }
            }
            vec![File { name: batch_file_name(batch.ack.first_seq), data }]
        }
    };
    Commit { files, ack: batch.ack }
}

/// The receipt for a batch committed as `commit`, naming its file under `--layout batch`.
pub fn receipt(commit: String, files: &[File], layout: Layout) -> Receipt {
    let batch_file = match layout {
        Layout::Batch => files.first().map(|f| f.name.clone()),
        Layout::Message => None,
    };
    Receipt { commit, batch_file }
}

/// The sink thread: commits batches in order until the batcher closes, then settles
/// what is still in flight. Blocking writes happen here, never on the async runtime.
pub fn run(mut sink: Box<dyn Sink>, batches: Receiver<Batch>, layout_kind: Layout, ctx: SinkContext) {
    const POLL: Duration = Duration::from_millis(2);
    const PROBE_EVERY: Duration = Duration::from_millis(250);
    let ctx = SinkContext { layout: layout_kind, ..ctx };
    let mut in_flight = 0;
    sink.probe(&ctx);
    loop {
        let next = if in_flight > 0 {
            batches.try_recv().map_err(|e| match e {
                TryRecvError::Empty => RecvTimeoutError::Timeout,
                TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            })
        } else {
            batches.recv_timeout(PROBE_EVERY)
        };
        // With nothing new to submit, the sink does the waiting: it can wake as soon
        // as its pipe has room instead of when a fixed sleep ends.
        let wait = match next {
            Ok(batch) => {
                sink.submit(layout(batch, layout_kind), &ctx);
                Duration::ZERO
            }
            Err(RecvTimeoutError::Timeout) if in_flight == 0 => {
                sink.probe(&ctx);
                Duration::ZERO
            }
            Err(RecvTimeoutError::Timeout) => POLL,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        in_flight = sink.settle(wait, &ctx);
    }
    while sink.settle(Duration::from_millis(50), &ctx) > 0 && !ctx.giving_up() {}
}

/// The next id of a sink that names commits itself (stdout, fifo): zero-padded so
/// ids sort, and increasing across restarts when `ids` starts from the clock.
pub fn next_commit_id(ids: &mut Sequencer) -> String {
    format!("{:020}", ids.take(1))
}

/// A parsed `--sink` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    Fifo(PathBuf),
    Dir(PathBuf),
    Stdout,
    Pfs(pfs::Target),
    Auto,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSinkUri(String);

impl fmt::Display for BadSinkUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadSinkUri {}

impl FromStr for SinkSpec {
    type Err = BadSinkUri;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let path = |rest: &str, scheme: &str| {
            if rest.is_empty() {
                Err(BadSinkUri(format!("`{scheme}:` needs a path, e.g. `{scheme}:/pfs/out`")))
            } else {
                Ok(PathBuf::from(rest))
            }
        };
        if uri == "auto" {
            Ok(SinkSpec::Auto)
        } else if uri == "stdout:" || uri == "stdout" {
            Ok(SinkSpec::Stdout)
        } else if let Some(rest) = uri.strip_prefix("fifo:") {
            path(rest, "fifo").map(SinkSpec::Fifo)
        } else if let Some(rest) = uri.strip_prefix("dir:") {
            path(rest, "dir").map(SinkSpec::Dir)
        } else if uri.starts_with("pfs:") {
            uri.parse().map(SinkSpec::Pfs).map_err(|e: pfs::target::BadPfsUri| BadSinkUri(e.to_string()))
        } else {
            Err(BadSinkUri(format!(
                "unknown sink `{uri}`: expected fifo:PATH, dir:PATH, stdout:, \
                 pfs://HOST:PORT/REPO@BRANCH or auto"
            )))
        }
    }
}

/// The path Pachyderm 1.x spouts write to.
pub const PFS_OUT: &str = "/pfs/out";

/// Resolves `auto`: the spout pipe when it is one, else pachd inside a Pachyderm
/// 2.x worker, else a local directory.
pub fn resolve_auto() -> SinkSpec {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(PFS_OUT) {
        Ok(meta) if meta.file_type().is_fifo() => SinkSpec::Fifo(PFS_OUT.into()),
        _ => match pfs::detect_worker(|name| std::env::var(name).ok()) {
            Some(target) => SinkSpec::Pfs(target),
            None => SinkSpec::Dir("./spout-out".into()),
        },
    }
}

impl SinkSpec {
    /// Gives a `pfs://` sink the token of `--pachd-token-file` / `SPOUT_PACHD_TOKEN`;
    /// without them it uses the pachctl config's.
    pub fn with_pachd_token(self, file: Option<PathBuf>, token: Option<String>) -> Self {
        match self {
            SinkSpec::Pfs(target) if target.token == pfs::TokenSource::Unset => {
                SinkSpec::Pfs(pfs::Target { token: pfs::TokenSource::from_options(file, token), ..target })
            }
            other => other,
        }
    }
}

/// Opens the sink `spec` names (`auto` already resolved).
pub fn open(spec: &SinkSpec) -> std::io::Result<Box<dyn Sink>> {
    Ok(match spec {
        SinkSpec::Fifo(path) => Box::new(fifo::FifoSink::new(path.clone())),
        SinkSpec::Dir(path) => Box::new(dir::DirSink::open(path.clone())?),
        SinkSpec::Stdout => Box::new(stdout::StdoutSink::new()?),
        SinkSpec::Pfs(target) => Box::new(pfs::PfsSink::new(target.clone())),
        SinkSpec::Auto => return open(&resolve_auto()),
    })
}

impl fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkSpec::Fifo(path) => write!(f, "fifo:{}", path.display()),
            SinkSpec::Dir(path) => write!(f, "dir:{}", path.display()),
            SinkSpec::Stdout => f.write_str("stdout:"),
            SinkSpec::Pfs(target) => target.fmt(f),
            SinkSpec::Auto => f.write_str("auto"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sink_uris() {
        assert_eq!("fifo:/pfs/out".parse(), Ok(SinkSpec::Fifo("/pfs/out".into())));
        assert_eq!("dir:out".parse(), Ok(SinkSpec::Dir("out".into())));
        assert_eq!("stdout:".parse(), Ok(SinkSpec::Stdout));
        assert!("fifo:".parse::<SinkSpec>().is_err());
        assert!("kafka://x".parse::<SinkSpec>().unwrap_err().0.contains("unknown sink"));
        let pfs: SinkSpec = "pfs://pachd:1650/out@master".parse().unwrap();
        assert_eq!(pfs.to_string(), "pfs://pachd:1650/out@master");
        assert!("pfs:/pachd/out".parse::<SinkSpec>().unwrap_err().0.contains("does not start with pfs://"));
    }
}
