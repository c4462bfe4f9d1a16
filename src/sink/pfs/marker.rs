//! The marker file: how a sidecar, one of any number writing the same branch, tells
//! its own commits apart and learns after a lost answer, or a crash, whether a batch
//! landed.
//!
//! Each batch's commit also writes `.spout-sidecar/WRITER` (replacing it), holding
//! `RUN FIRST LAST`: `RUN` is random per process, and `FIRST LAST` are the sequence
//! numbers of the batch's first and last message. Commits are snapshots, so every
//! later commit on the branch carries the marker as the last batch of this writer
//! left it, and a writer's batches land in order of their sequence numbers: the branch
//! head says up to which message this writer's batches have landed, and walking back
//! from the head, the oldest commit whose marker reaches a batch's last message is the
//! commit that wrote it. Pachyderm's own 1.x spouts kept their resume state in a
//! `marker` the same way.
//!
//! Within one run, sequence numbers only grow. Across runs they may not (the clock
//! seeds them), so a marker speaks for a batch only if this run wrote it, except for a
//! batch replayed from the disk spool: its numbers are the ones its first run gave it,
//! and the spool numbers its messages past every earlier one, so an earlier run's
//! marker that reaches its last message means it landed before the crash.
//!
//! `WRITER` must differ between sidecars writing one branch at the same time and must
//! stay the same across restarts for a replayed batch to be recognised; it defaults to
//! the spool's writer id with `--spool-dir`, else to `HOST-PID`: in Kubernetes the
//! pod's name and the process id, the same after a container restart.

use bytes::Bytes;

use crate::message::random_u64;

/// The directory of marker files in the repo.
pub const MARKER_DIR: &str = ".spout-sidecar";
/// The largest marker worth reading: `RUN FIRST LAST\n` is about 60 bytes.
pub const MARKER_LIMIT: usize = 256;

/// One batch as markers name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub first: u64,
    pub last: u64,
    /// Sealed by an earlier run and replayed from the spool: that run's markers count.
    pub replayed: bool,
}

/// This process as one writer of the branch.
#[derive(Debug, Clone)]
pub struct Writer {
    path: String,
    run: String,
}

impl Writer {
    pub fn new(id: &str) -> Self {
        Self { path: format!("{MARKER_DIR}/{id}"), run: format!("{:016x}", random_u64()) }
    }

    /// The marker file's path in the repo.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What the marker holds once `span` has landed.
    pub fn mark(&self, span: &Span) -> Bytes {
        Bytes::from(format!("{} {} {}\n", self.run, span.first, span.last))
    }

    /// Whether `marker`, read back at some commit, shows that `span` had landed by then.
    pub fn covers(&self, marker: &[u8], span: &Span) -> bool {
        let text = std::str::from_utf8(marker).unwrap_or("");
        let mut fields = text.split_ascii_whitespace();
        let (Some(run), Some(_first), Some(last), None) = (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        (run == self.run || span.replayed) && last.parse::<u64>().is_ok_and(|last| last >= span.last)
    }
}

/// The writer id to use when neither the URI nor the spool gives one: `HOST-PID`.
pub fn default_writer_id() -> String {
    let host = crate::message::hostname().unwrap_or_else(|| "spout-sidecar".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn span(first: u64, last: u64, replayed: bool) -> Span {
        Span { first, last, replayed }
    }

    #[test]
    fn a_marker_covers_the_batches_up_to_its_last_message() {
        let a = Writer::new("pod-1");
        assert_eq!(a.path(), ".spout-sidecar/pod-1");
        let marker = a.mark(&span(10, 19, false));
        assert!(a.covers(&marker, &span(10, 19, false)));
        assert!(a.covers(&marker, &span(3, 9, false)), "an earlier batch landed before it");
        assert!(!a.covers(&marker, &span(20, 29, false)), "a later batch has not landed");
        assert!(!a.covers(b"", &span(1, 1, false)));
        assert!(!a.covers(b"garbage 1 2 3", &span(1, 1, true)));
        assert!(!a.covers(b"run 1 x", &span(1, 1, true)));
    }

    #[test]
    fn another_run_s_marker_counts_only_for_a_replayed_batch() {
        let (before, now) = (Writer::new("pod-1"), Writer::new("pod-1"));
        let marker = before.mark(&span(10, 19, false));
        assert_ne!(marker, now.mark(&span(10, 19, false)));
        assert!(!now.covers(&marker, &span(10, 19, false)), "a fresh batch with numbers from a clock set back");
        assert!(now.covers(&marker, &span(10, 19, true)));
        assert!(!now.covers(&marker, &span(20, 29, true)));
    }
}
