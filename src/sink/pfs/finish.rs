//! Waiting for pachd to finish a commit, after FinishCommit.
//!
//! In Pachyderm 2.x FinishCommit only marks a commit *finishing*; pachd's master
//! then compacts and validates it and marks it *finished*, with `error` set if
//! validation failed (a path that is both a file and a directory). An errored
//! commit's files are left out of every later commit, so its batch is not in the
//! branch: only a commit finished without `error` is committed. The wait is
//! `InspectCommit(wait = FINISHED)`, retried through failures like any call.
//!
//! A finisher waits for one commit after the other, in the order they were
//! finished, so acknowledgements go out in order while the committer already
//! streams the next batch.

use std::time::Duration;

use tonic::Code;

use super::client::Pachd;
use super::committer::{classify, pause, AttemptError};
use super::proto::pfs_v2::Commit;
use crate::sink::backoff::Backoff;
use crate::sink::SinkContext;

/// How long, once giving up, the finisher still waits for a commit already finishing.
const LAST_WAIT: Duration = Duration::from_secs(3);

/// Why a batch whose FinishCommit went through is not committed.
#[derive(Debug, thiserror::Error)]
pub enum NotFinished {
    #[error("pachd finished commit {commit} with an error, so its batch is not in the branch: {message}")]
    Errored { commit: String, message: String },
    #[error(
        "gave up at shutdown waiting for pachd to finish commit {commit} ({last}); it may still be finished \
         (pachctl inspect commit)"
    )]
    GaveUp { commit: String, last: String },
}

pub struct Finisher {
    pachd: Pachd,
    ctx: SinkContext,
    backoff: Backoff,
}

impl Finisher {
    pub fn new(pachd: Pachd, ctx: SinkContext) -> Self {
        Self { pachd, ctx, backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(5)) }
    }

    /// Waits until pachd has finished `commit`: Ok if without error.
    pub async fn finished(&mut self, commit: &Commit) -> Result<(), NotFinished> {
        let give_up = self.ctx.give_up.clone();
        loop {
            // Giving up still allows one short wait: the commit is usually moments away.
            let limit = give_up.is_cancelled().then_some(LAST_WAIT);
            let waited = tokio::select! {
                result = self.pachd.wait_finished(commit, limit) => result,
                () = give_up.cancelled(), if limit.is_none() => continue,
            };
            let status = match waited {
                Ok(info) if info.error.is_empty() => {
                    self.backoff.reset();
                    return Ok(());
                }
                Ok(info) => return Err(NotFinished::Errored { commit: commit.id.clone(), message: info.error }),
                Err(status) => status,
            };
            // Still finishing after the call's whole deadline: pachd is slow, not gone.
            if status.code() == Code::DeadlineExceeded && limit.is_none() {
                continue;
            }
            let error = classify("InspectCommit(wait=FINISHED)", status, &self.pachd);
            self.report(&error);
            if limit.is_some() {
                return Err(NotFinished::GaveUp { commit: commit.id.clone(), last: error.to_string() });
            }
            pause(&give_up, self.backoff.next_delay()).await;
        }
    }

    fn report(&self, error: &AttemptError) {
        self.ctx.health.failing(error.state(), error.kind(), error);
        tracing::debug!(kind = error.kind(), "waiting for a pfs commit to finish failed: {error}");
    }
}
