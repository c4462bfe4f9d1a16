//! Finding a batch's commit and waiting for pachd to finish it.
//!
//! In Pachyderm 2.x a commit that FinishCommit (or a one-off ModifyFile) leaves is
//! only *finishing*; pachd's master then compacts and validates it and marks it
//! *finished*, with `error` set if validation failed (a path that is both a file and
//! a directory). An errored commit's files are left out of every later commit, so
//! its batch is not in the branch: only a commit finished without `error` is
//! committed. The wait is `InspectCommit(wait = FINISHED)`, retried through failures
//! like any call.
//!
//! A one-off ModifyFile does not answer with its commit, so the finisher finds it by
//! this writer's marker (see `marker`): walking back from the branch head, the oldest
//! commit whose marker reaches the batch's last message (the walk stops at the first
//! commit whose marker does not, or at this writer's previous commit). Reading a
//! finishing commit's file waits until pachd has finished it, so this runs here, not
//! in the committer, which meanwhile streams the next batch. The finisher takes one
//! batch after the other, so acknowledgements go out in order.

use std::time::Duration;

use tonic::{Code, Status};

use super::client::Pachd;
use super::committer::{classify, pause, AttemptError};
use super::marker::{Span, Writer, MARKER_LIMIT};
use super::proto::pfs_v2::{Commit, CommitInfo};
use crate::sink::backoff::Backoff;
use crate::sink::SinkContext;

/// How long, once giving up, the finisher still waits for a commit already finishing.
const LAST_WAIT: Duration = Duration::from_secs(3);

/// Why a batch whose FinishCommit went through is not committed.
#[derive(Debug, thiserror::Error)]
pub enum NotFinished {
    #[error(
        "pachd took the batch but its commit is not on the branch between the head and this writer's \
         previous commit (was the branch moved or squashed?)"
    )]
    NotFound,
    #[error("pachd finished commit {commit} with an error, so its batch is not in the branch: {message}")]
    Errored { commit: String, message: String },
    #[error(
        "gave up at shutdown waiting for pachd to finish the batch's commit ({last}); it may still be \
         finished (the marker {marker} tells)"
    )]
    GaveUp { marker: String, last: String },
}

/// How far the walk back from the head has got.
#[derive(Default)]
struct Walk {
    started: bool,
    /// The next commit to look at.
    at: Option<CommitInfo>,
    /// The oldest commit whose marker covers the batch so far.
    found: Option<Commit>,
}

pub struct Finisher {
    pachd: Pachd,
    ctx: SinkContext,
    writer: Writer,
    backoff: Backoff,
    /// This writer's last commit: the walk for the next one stops there.
    previous: Option<String>,
}

impl Finisher {
    pub fn new(pachd: Pachd, ctx: SinkContext, writer: Writer) -> Self {
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        Self { pachd, ctx, writer, backoff, previous: None }
    }

    /// Finds the commit holding the batch `span` and waits until pachd has finished
    /// it: its id if without error.
    pub async fn finished(&mut self, span: &Span) -> Result<String, NotFinished> {
        let give_up = self.ctx.give_up.clone();
        // Kept across retries: a failed call resumes the walk where it was, so the
        // walk back over other writers' commits does not start over each time.
        let mut walk = Walk::default();
        loop {
            // Giving up still allows one short wait: the commit is usually moments away.
            let limit = give_up.is_cancelled().then_some(LAST_WAIT);
            let waited = match limit {
                None => tokio::select! {
                    result = self.find_and_wait(span, &mut walk) => result,
                    () = give_up.cancelled() => continue,
                },
                Some(limit) => tokio::time::timeout(limit, self.find_and_wait(span, &mut walk))
                    .await
                    .unwrap_or_else(|_| Err(Status::deadline_exceeded("pachd has not finished the commit yet"))),
            };
            let status = match waited {
                Ok(Some(info)) => {
                    self.backoff.reset();
                    let id = info.commit.map(|c| c.id).unwrap_or_default();
                    self.previous = Some(id.clone());
                    return match info.error.is_empty() {
                        true => Ok(id),
                        false => Err(NotFinished::Errored { commit: id, message: info.error }),
                    };
                }
                Ok(None) => return Err(NotFinished::NotFound),
                Err(status) => status,
            };
            // Still finishing after the call's whole deadline: pachd is slow, not gone.
            if status.code() == Code::DeadlineExceeded && limit.is_none() {
                continue;
            }
            let error = classify("finding the batch's commit", status, &self.pachd);
            self.report(&error);
            if limit.is_some() {
                return Err(NotFinished::GaveUp { marker: self.writer.path().into(), last: error.to_string() });
            }
            pause(&give_up, self.backoff.next_delay()).await;
        }
    }

    /// The finished commit holding `span`, if it is on the branch.
    async fn find_and_wait(&mut self, span: &Span, walk: &mut Walk) -> Result<Option<CommitInfo>, Status> {
        let Some(commit) = self.find(span, walk).await? else {
            return Ok(None);
        };
        self.pachd.wait_finished(&commit).await.map(Some)
    }

    /// Walks back from the branch head to this writer's previous commit (or to a
    /// commit whose marker does not cover `span`): the oldest commit whose marker does.
    async fn find(&mut self, span: &Span, walk: &mut Walk) -> Result<Option<Commit>, Status> {
        if !walk.started {
            walk.at = self.pachd.inspect_head().await?;
            walk.started = true;
        }
        while let Some(CommitInfo { commit: Some(commit), parent_commit, .. }) = &walk.at {
            if self.previous.as_ref() == Some(&commit.id) {
                break;
            }
            let marker = self.pachd.get_small_file(commit, self.writer.path(), MARKER_LIMIT).await?;
            if !marker.is_some_and(|marker| self.writer.covers(&marker, span)) {
                break;
            }
            let found = commit.clone();
            let parent = match parent_commit {
                Some(parent) => Some(self.pachd.inspect_commit(parent).await?),
                None => None,
            };
            walk.found = Some(found);
            walk.at = parent;
        }
        Ok(walk.found.clone())
    }

    fn report(&self, error: &AttemptError) {
        self.ctx.health.failing(error.state(), error.kind(), error);
        tracing::debug!(kind = error.kind(), "waiting for a pfs commit to finish failed: {error}");
    }
}
