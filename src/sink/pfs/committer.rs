//! One batch, one commit: takes a batch into pachd as exactly one finished commit,
//! retrying through failures, or gives it up without leaving an open commit.
//!
//! Retrying reuses the commit already started: it is cleared (ClearCommit) and the
//! whole batch is sent again. The other way, finishing the commit with `error` and
//! starting a new one, was rejected: a finished commit, errored or not, stays in the
//! branch's history with whatever part of the batch had arrived, later commits build
//! on it (PFS commits are snapshots of the branch), and downstream pipelines are
//! triggered by it; every retry would also add one more commit. Clearing keeps one
//! commit per batch, with one id from first attempt to last, and nothing of a failed
//! attempt is ever visible. A commit is only ever finished with `error` when the
//! batch is given up at shutdown, and then cleared first, so it is empty.
//!
//! A failed call does not say whether pachd applied it, so each step is one whose
//! repetition is harmless: StartCommit's lost answer is recovered from the branch's
//! open head (our commits carry [`MARKER`] in their description); a ModifyFile
//! stream that failed anywhere is followed by ClearCommit before the next one; a
//! FinishCommit that failed is checked with InspectCommit before it is repeated.
//! Once a ModifyFile stream has succeeded the commit is never cleared again, so a
//! slow FinishCommit that lands late cannot finish a half-cleared commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Status};

use super::client::Pachd;
use super::proto::pfs_v2::Commit;
use super::requests::modify_file_requests;
use crate::message::File;
use crate::metrics::METRICS;
use crate::sink::backoff::Backoff;
use crate::sink::{SinkContext, SinkState};

/// Starts the description of every commit the sidecar opens, so that after a lost
/// StartCommit answer or a crash the open commit is recognised as ours.
pub const MARKER: &str = "spout-sidecar";

/// How long giving up may spend cleaning up the open commit.
const ABANDON_TIMEOUT: Duration = Duration::from_secs(3);

/// How far a batch's commit has got: where the next attempt resumes.
#[derive(Debug)]
enum Progress {
    /// No commit yet.
    Start,
    /// The commit is open; `dirty` when a ModifyFile stream may have left part of
    /// the batch in it.
    Write { commit: Commit, dirty: bool },
    /// Every file is in the commit; FinishCommit is left. `tried` when a FinishCommit
    /// failed, which may have gone through all the same.
    Finish { commit: Commit, tried: bool },
}

/// A failed attempt, as `Health` and the log see it.
#[derive(Debug)]
struct Failure {
    kind: &'static str,
    state: SinkState,
    message: String,
}

/// One batch for [`Committer::commit`].
pub struct Batch<'a> {
    pub files: &'a Arc<[File]>,
    pub bytes: u64,
    pub description: String,
}

pub struct Committer {
    pachd: Pachd,
    ctx: SinkContext,
    backoff: Backoff,
    repo_ready: bool,
}

impl Committer {
    pub fn new(pachd: Pachd, ctx: SinkContext) -> Self {
        Self { pachd, ctx, backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(5)), repo_ready: false }
    }

    /// Checks once that pachd is reachable, takes the token and has the repo (creating
    /// it if need be), so `/readyz` tells the truth while no batch is in flight.
    pub async fn probe(&mut self) {
        match self.ensure_repo().await {
            Ok(()) => self.ctx.health.up(),
            Err(failure) => self.report(&failure),
        }
    }

    /// Commits the batch; on success its commit id, else why it was given up.
    pub async fn commit(&mut self, batch: Batch<'_>) -> Result<String, String> {
        let give_up = self.ctx.give_up.clone();
        let mut progress = Progress::Start;
        let mut last_error = String::from("the sidecar was already giving up");
        let mut attempt = 0u64;
        loop {
            if give_up.load(Ordering::Relaxed) {
                return self.abandon(progress, &last_error).await;
            }
            attempt += 1;
            if attempt > 1 {
                METRICS.sink_retries.inc();
            }
            let result = tokio::select! {
                result = self.attempt(&mut progress, &batch) => result,
                () = given_up(&give_up) => continue,
            };
            match result {
                Ok(id) => {
                    self.ctx.health.up();
                    self.backoff.reset();
                    return Ok(id);
                }
                Err(failure) => {
                    self.report(&failure);
                    self.repo_ready = false;
                    last_error = format!("attempt {attempt}: {}", failure.message);
                }
            }
            pause(&give_up, self.backoff.next_delay()).await;
        }
    }

    async fn attempt(&mut self, progress: &mut Progress, batch: &Batch<'_>) -> Result<String, Failure> {
        self.pachd.reload_token().map_err(|message| Failure { kind: "auth", state: SinkState::Retrying, message })?;
        if !self.repo_ready {
            self.ensure_repo().await?;
        }
        loop {
            match progress {
                Progress::Start => *progress = self.open_commit(&batch.description).await?,
                Progress::Write { commit, dirty } => {
                    if *dirty {
                        self.pachd.clear_commit(commit).await.map_err(|s| self.failure("ClearCommit", s))?;
                    }
                    *dirty = true;
                    let requests = modify_file_requests(commit.clone(), batch.files.clone(), self.ctx.overwrite);
                    self.pachd.modify_file(requests, batch.bytes).await.map_err(|s| self.failure("ModifyFile", s))?;
                    *progress = Progress::Finish { commit: commit.clone(), tried: false };
                }
                Progress::Finish { commit, tried } => {
                    if *tried && self.is_finishing(commit).await? {
                        return Ok(commit.id.clone());
                    }
                    *tried = true;
                    self.pachd.finish_commit(commit, "").await.map_err(|s| self.failure("FinishCommit", s))?;
                    return Ok(commit.id.clone());
                }
            }
        }
    }

    async fn ensure_repo(&mut self) -> Result<(), Failure> {
        self.pachd.reload_token().map_err(|message| Failure { kind: "auth", state: SinkState::Retrying, message })?;
        self.pachd.ensure_repo().await.map_err(|s| self.failure("InspectRepo/CreateRepo", s))?;
        self.repo_ready = true;
        Ok(())
    }

    /// Starts the batch's commit, or takes over our own open commit at the branch's
    /// head (a StartCommit whose answer was lost, or a previous run that died).
    async fn open_commit(&mut self, description: &str) -> Result<Progress, Failure> {
        let status = match self.pachd.start_commit(description).await {
            Ok(commit) => return Ok(Progress::Write { commit, dirty: false }),
            Err(status) => status,
        };
        let failure = self.failure("StartCommit", status);
        if failure.kind != "rpc" {
            return Err(failure);
        }
        match self.our_open_head().await? {
            Some(commit) => {
                tracing::info!(commit = %commit.id, "resuming the sidecar's open commit at the branch head");
                Ok(Progress::Write { commit, dirty: true })
            }
            None => Err(failure),
        }
    }

    /// The branch head if it is an open commit the sidecar started; an error if it is
    /// someone else's open commit, which the sidecar must not touch.
    async fn our_open_head(&mut self) -> Result<Option<Commit>, Failure> {
        let Some(head) = self.pachd.branch_head().await.map_err(|s| self.failure("InspectBranch", s))? else {
            return Ok(None);
        };
        let info = self.pachd.inspect_commit(&head).await.map_err(|s| self.failure("InspectCommit", s))?;
        if info.finishing.is_some() {
            return Ok(None);
        }
        if !info.description.starts_with(MARKER) {
            return Err(Failure {
                kind: "open_commit",
                state: SinkState::Retrying,
                message: format!(
                    "the branch head {} is an open commit that spout-sidecar did not start; \
                     finish or delete it (pachctl finish commit / squash commit)",
                    head.id
                ),
            });
        }
        Ok(Some(info.commit.unwrap_or(head)))
    }

    async fn is_finishing(&mut self, commit: &Commit) -> Result<bool, Failure> {
        let info = self.pachd.inspect_commit(commit).await.map_err(|s| self.failure("InspectCommit", s))?;
        Ok(info.finishing.is_some())
    }

    /// Gives the batch up. Its commit, if one is open, is cleared and finished with
    /// `error`, so the branch is not left blocked and no part of the batch shows. A
    /// FinishCommit that went through after all makes it a success.
    async fn abandon(&mut self, progress: Progress, last_error: &str) -> Result<String, String> {
        let reason = format!("gave up at shutdown; {last_error}");
        let cleanup = async {
            let commit = match progress {
                Progress::Start => self.our_open_head().await.ok().flatten(),
                Progress::Write { commit, .. } => Some(commit),
                Progress::Finish { commit, .. } => {
                    if self.is_finishing(&commit).await.unwrap_or(false) {
                        return Ok(commit.id);
                    }
                    Some(commit)
                }
            };
            if let Some(commit) = commit {
                let cleared = self.pachd.clear_commit(&commit).await;
                let finished = match cleared {
                    Ok(()) => self.pachd.finish_commit(&commit, &format!("{MARKER}: {reason}")).await,
                    Err(status) => Err(status),
                };
                if let Err(status) = finished {
                    tracing::warn!(
                        commit = %commit.id,
                        "could not close the abandoned commit ({status}); the next spout-sidecar \
                         on this branch clears and reuses it"
                    );
                }
            }
            Err(reason.clone())
        };
        match tokio::time::timeout(ABANDON_TIMEOUT, cleanup).await {
            Ok(result) => result,
            Err(_) => Err(reason),
        }
    }

    fn failure(&self, step: &str, status: Status) -> Failure {
        let (kind, state) = match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => ("auth", SinkState::Retrying),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ("unavailable", SinkState::Down),
            _ => ("rpc", SinkState::Retrying),
        };
        let detail = format!("{:?}: {}", status.code(), status.message());
        let message = match kind {
            "auth" => format!(
                "{step}: pachd refused the token from {} ({detail}); fix it there, the sidecar \
                 reads it again before each retry",
                self.pachd.token_origin()
            ),
            _ => format!("{step}: {detail}"),
        };
        Failure { kind, state, message }
    }

    fn report(&self, failure: &Failure) {
        self.ctx.health.failing(failure.state, failure.kind, &failure.message);
        tracing::debug!(kind = failure.kind, "pfs attempt failed: {}", failure.message);
    }
}

/// Sleeps `delay` unless giving up meanwhile; false if giving up.
async fn pause(give_up: &AtomicBool, delay: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => !give_up.load(Ordering::Relaxed),
        () = given_up(give_up) => false,
    }
}

/// Resolves once the sidecar gives up.
async fn given_up(give_up: &AtomicBool) {
    while !give_up.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
