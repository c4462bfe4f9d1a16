//! What every sink is given by the process around it: where to report its health,
//! when to give up, and how the batch it commits was laid out.

use std::sync::Arc;
use std::time::Duration;

use crate::ack::Receipt;
use crate::cancel::Cancel;
use crate::encode::{CommitFile, Layout};
use crate::sink::Health;

#[derive(Debug, Clone)]
pub struct SinkContext {
    pub health: Arc<Health>,
    /// Cancelled when the shutdown timeout has passed: stop retrying, fail what is left.
    pub give_up: Cancel,
    /// Pachyderm's `overwrite`: a file name already in the repo is replaced.
    pub overwrite: bool,
    /// How batches became files, so sinks can write [`Receipt`]s.
    pub layout: Layout,
}

impl SinkContext {
    /// A context of its own (nothing else cancels it), for `--layout message`.
    pub fn new(health: Arc<Health>, overwrite: bool) -> Self {
        Self { health, give_up: Cancel::new(), overwrite, layout: Layout::Message }
    }

    /// The receipt for `files` committed as `commit`.
    pub fn receipt(&self, commit: String, files: &[CommitFile]) -> Receipt {
        self.layout.receipt(commit, files)
    }

    pub fn giving_up(&self) -> bool {
        self.give_up.is_cancelled()
    }

    /// Sleeps `delay` unless told to give up meanwhile (waking at once then);
    /// returns false if giving up.
    pub fn pause(&self, delay: Duration) -> bool {
        !self.give_up.wait_timeout(delay)
    }
}
