//! The marker file: how a sidecar, one of any number writing the same branch, tells
//! its own commits apart and learns after a lost answer whether a batch landed.
//!
//! Each batch's commit also writes `.spout-sidecar/WRITER` (replacing it), holding
//! `RUN BATCH`: `RUN` is random per process, so a restarted sidecar never takes an
//! earlier life's marker for its own, and `BATCH` is the batch's number. Commits are
//! snapshots, so every later commit on the branch carries the marker as the last
//! batch of this writer left it: the branch head says which batch landed last, and
//! walking back from the head, the oldest commit whose marker holds a batch's mark
//! is the commit that wrote it. Pachyderm's own 1.x spouts kept their resume state
//! in a `marker` the same way.
//!
//! `WRITER` must differ between sidecars writing one branch at the same time; it
//! defaults to `HOST-PID`: in Kubernetes the pod's name and the process id, which is
//! the same after a container restart, so a pod keeps one marker file; on a shared
//! host, sidecars differ by process id.

use std::hash::{BuildHasher, Hasher};

use bytes::Bytes;

/// The directory of marker files in the repo.
pub const MARKER_DIR: &str = ".spout-sidecar";
/// The largest marker worth reading: `RUN BATCH\n` is about 40 bytes.
pub const MARKER_LIMIT: usize = 256;

/// This process as one writer of the branch.
#[derive(Debug, Clone)]
pub struct Writer {
    path: String,
    run: String,
}

impl Writer {
    pub fn new(id: &str) -> Self {
        // A random run id, without a dependency: std's hasher keys are random per process.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        Self { path: format!("{MARKER_DIR}/{id}"), run: format!("{:016x}", hasher.finish()) }
    }

    /// The marker file's path in the repo.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What the marker holds once batch `no` has landed.
    pub fn mark(&self, no: u64) -> Bytes {
        Bytes::from(format!("{} {no}\n", self.run))
    }

    /// Whether a marker read back was written by this process (any batch).
    pub fn is_this_run(&self, marker: &[u8]) -> bool {
        marker.strip_prefix(self.run.as_bytes()).is_some_and(|rest| rest.first() == Some(&b' '))
    }
}

/// The writer id to use when none is given: `HOST-PID`.
pub fn default_writer_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "spout-sidecar".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_per_run_and_per_batch() {
        let (a, b) = (Writer::new("pod-1"), Writer::new("pod-1"));
        assert_eq!(a.path(), ".spout-sidecar/pod-1");
        assert_ne!(a.mark(1), b.mark(1), "another run of the same writer");
        assert_ne!(a.mark(1), a.mark(2));
        assert!(a.is_this_run(&a.mark(7)) && !a.is_this_run(&b.mark(7)));
        assert!(!a.is_this_run(b""));
    }
}
