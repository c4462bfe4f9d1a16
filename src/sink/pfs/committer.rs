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
//!
//! A batch replayed from the disk spool may have landed before the crash: before it is
//! started, the branch's recent commits are walked back (InspectCommit, parent by
//! parent) for a commit whose description carries its identity ([`BatchIdentity`]).
//! A finished one is the batch's commit, and nothing is written. An open one is what
//! the crash interrupted; the dead run's FinishCommit may still be on its way, so it is
//! given [`REMNANT_WAIT`] to finish (then it is the batch's commit), and is otherwise
//! cleared and refilled. A FinishCommit later than that, landing after the clear,
//! would finish the commit with part of the batch: the one window left.
//! Once a ModifyFile stream has succeeded the commit is never cleared again, so a
//! slow FinishCommit that lands late cannot finish a half-cleared commit.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Status};

use super::client::{BadAddress, BadToken, Pachd};
use super::identity::BatchIdentity;
use super::proto::pfs_v2::Commit;
use super::requests::modify_file_requests;
use crate::cancel::Cancel;
use crate::encode::CommitFile;
use crate::metrics::METRICS;
use crate::sink::backoff::Backoff;
use crate::sink::{SinkContext, SinkState};

/// Starts the description of every commit the sidecar opens, so that after a lost
/// StartCommit answer or a crash the open commit is recognised as ours.
pub const MARKER: &str = "spout-sidecar";

/// How many commits back a replayed batch looks for itself, at most: a crash leaves
/// only the batches in flight unrecorded, and the walk stops at the first older batch.
const LANDED_LOOKBACK: usize = 256;

/// How long an open commit of a replayed batch, left by a crash, is given to finish
/// (a FinishCommit the dead run sent, still in pachd) before it is taken over.
pub const REMNANT_WAIT: Duration = Duration::from_secs(3);

/// Where a replayed batch's commit is, if anywhere.
enum Found {
    Finished(String),
    Open(Commit),
    Nowhere,
}

/// How long giving up may spend cleaning up the open commit.
const ABANDON_TIMEOUT: Duration = Duration::from_secs(3);

/// How far a batch's commit has got: where the next attempt resumes.
#[derive(Debug)]
enum CommitStep {
    /// No commit yet.
    Start,
    /// The commit is open; `dirty` when a ModifyFile stream may have left part of
    /// the batch in it.
    Write { commit: Commit, dirty: bool },
    /// Every file is in the commit; FinishCommit is left. `tried` when a FinishCommit
    /// failed, which may have gone through all the same.
    Finish { commit: Commit, tried: bool },
}

/// Why one attempt at a commit failed, as `Health` and the log see it.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error(transparent)]
    Address(#[from] BadAddress),
    #[error(transparent)]
    Token(#[from] BadToken),
    #[error(
        "{step}: pachd refused the token from {origin} ({code:?}: {message}); fix it there, the sidecar \
         reads it again before each retry"
    )]
    Refused { step: &'static str, origin: String, code: Code, message: String },
    #[error("{step}: {code:?}: {message}")]
    Unreachable { step: &'static str, code: Code, message: String },
    #[error("{step}: {code:?}: {message}")]
    Rpc { step: &'static str, code: Code, message: String },
    #[error(
        "the branch head {0} is an open commit that spout-sidecar did not start; finish or delete it \
         (pachctl finish commit / squash commit)"
    )]
    ForeignOpenCommit(String),
}

impl AttemptError {
    /// The `kind` label of `spout_sink_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            AttemptError::Address(_) => "config",
            AttemptError::Token(_) | AttemptError::Refused { .. } => "auth",
            AttemptError::Unreachable { .. } => "unavailable",
            AttemptError::Rpc { .. } => "rpc",
            AttemptError::ForeignOpenCommit(_) => "open_commit",
        }
    }

    pub fn state(&self) -> SinkState {
        match self {
            AttemptError::Address(_) | AttemptError::Unreachable { .. } => SinkState::Down,
            _ => SinkState::Retrying,
        }
    }
}

/// A batch given up: its last attempt's error, or why giving up was the end.
#[derive(Debug, thiserror::Error)]
#[error("gave up at shutdown; {0}")]
pub struct GaveUp(String);

/// One batch for [`Committer::commit`].
pub struct BatchFiles<'a> {
    pub files: &'a Arc<[CommitFile]>,
    pub bytes: u64,
    pub description: String,
    /// A batch a previous run sealed, and may have committed: who it is.
    pub replayed: Option<BatchIdentity>,
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
            Err(error) => self.report(&error),
        }
    }

    /// Commits the batch; on success its commit id, else why it was given up.
    pub async fn commit(&mut self, batch: BatchFiles<'_>) -> Result<String, GaveUp> {
        let give_up = self.ctx.give_up.clone();
        let mut step = CommitStep::Start;
        let mut last_error = String::from("the sidecar was already giving up");
        let mut attempt = 0u64;
        loop {
            if give_up.is_cancelled() {
                return self.abandon(step, last_error).await;
            }
            attempt += 1;
            if attempt > 1 {
                METRICS.sink_retries.inc();
            }
            let result = tokio::select! {
                result = self.attempt(&mut step, &batch) => result,
                () = give_up.cancelled() => continue,
            };
            match result {
                Ok(id) => {
                    self.ctx.health.up();
                    self.backoff.reset();
                    return Ok(id);
                }
                Err(error) => {
                    self.report(&error);
                    self.repo_ready = false;
                    last_error = format!("attempt {attempt}: {error}");
                }
            }
            pause(&give_up, self.backoff.next_delay()).await;
        }
    }

    async fn attempt(&mut self, step: &mut CommitStep, batch: &BatchFiles<'_>) -> Result<String, AttemptError> {
        self.pachd.reload_token()?;
        if !self.repo_ready {
            self.ensure_repo().await?;
        }
        loop {
            match step {
                CommitStep::Start => {
                    if let Some(identity) = &batch.replayed {
                        match self.find(identity).await? {
                            Found::Finished(id) => return Ok(landed(id)),
                            Found::Open(commit) => {
                                if self.finishes_within(&commit, REMNANT_WAIT).await? {
                                    return Ok(landed(commit.id));
                                }
                                tracing::info!(commit = %commit.id, "refilling the replayed batch's commit a crash left open");
                                *step = CommitStep::Write { commit, dirty: true };
                                continue;
                            }
                            Found::Nowhere => {}
                        }
                    }
                    *step = self.open_commit(&batch.description).await?
                }
                CommitStep::Write { commit, dirty } => {
                    if *dirty && batch.replayed.is_some() && self.is_finishing(commit).await? {
                        // A dead run's FinishCommit landed after all.
                        return Ok(landed(commit.id.clone()));
                    }
                    if *dirty {
                        self.pachd.clear_commit(commit).await.map_err(|s| self.rpc_error("ClearCommit", s))?;
                    }
                    *dirty = true;
                    let requests = modify_file_requests(commit.clone(), batch.files.clone(), self.ctx.overwrite);
                    self.pachd.modify_file(requests, batch.bytes).await.map_err(|s| self.rpc_error("ModifyFile", s))?;
                    *step = CommitStep::Finish { commit: commit.clone(), tried: false };
                }
                CommitStep::Finish { commit, tried } => {
                    if *tried && self.is_finishing(commit).await? {
                        return Ok(commit.id.clone());
                    }
                    *tried = true;
                    self.pachd.finish_commit(commit, "").await.map_err(|s| self.rpc_error("FinishCommit", s))?;
                    return Ok(commit.id.clone());
                }
            }
        }
    }

    async fn ensure_repo(&mut self) -> Result<(), AttemptError> {
        self.pachd.reload_token()?;
        self.pachd.ensure_repo().await.map_err(|s| self.rpc_error("InspectRepo/CreateRepo", s))?;
        self.repo_ready = true;
        Ok(())
    }

    /// Starts the batch's commit, or takes over our own open commit at the branch's
    /// head (a StartCommit whose answer was lost, or a previous run that died).
    async fn open_commit(&mut self, description: &str) -> Result<CommitStep, AttemptError> {
        let status = match self.pachd.start_commit(description).await {
            Ok(commit) => return Ok(CommitStep::Write { commit, dirty: false }),
            Err(status) => status,
        };
        let error = self.rpc_error("StartCommit", status);
        if !matches!(error, AttemptError::Rpc { .. }) {
            return Err(error);
        }
        match self.our_open_head().await? {
            Some(commit) => {
                tracing::info!(commit = %commit.id, "resuming the sidecar's open commit at the branch head");
                Ok(CommitStep::Write { commit, dirty: true })
            }
            None => Err(error),
        }
    }

    /// The branch head if it is an open commit the sidecar started; an error if it is
    /// someone else's open commit, which the sidecar must not touch.
    async fn our_open_head(&mut self) -> Result<Option<Commit>, AttemptError> {
        let Some(head) = self.pachd.branch_head().await.map_err(|s| self.rpc_error("InspectBranch", s))? else {
            return Ok(None);
        };
        let info = self.pachd.inspect_commit(&head).await.map_err(|s| self.rpc_error("InspectCommit", s))?;
        if info.finishing.is_some() {
            return Ok(None);
        }
        if !info.description.starts_with(MARKER) {
            return Err(AttemptError::ForeignOpenCommit(head.id));
        }
        Ok(Some(info.commit.unwrap_or(head)))
    }

    /// The commit on the branch that holds the batch `identity`, if any: walks back
    /// from the head until a batch older than it. A commit finished with an error (a
    /// batch given up) does not count.
    async fn find(&mut self, identity: &BatchIdentity) -> Result<Found, AttemptError> {
        let mut next = self.pachd.branch_head().await.map_err(|s| self.rpc_error("InspectBranch", s))?;
        for _ in 0..LANDED_LOOKBACK {
            let Some(commit) = next else { break };
            let info = self.pachd.inspect_commit(&commit).await.map_err(|s| self.rpc_error("InspectCommit", s))?;
            let commit = info.commit.clone().unwrap_or(commit);
            match BatchIdentity::parse(&info.description) {
                Some(found) if found == *identity && info.finishing.is_none() => return Ok(Found::Open(commit)),
                Some(found) if found == *identity && info.error.is_empty() => return Ok(Found::Finished(commit.id)),
                Some(found) if found.last_seq < identity.first_seq => break,
                _ => {}
            }
            next = info.parent_commit;
        }
        Ok(Found::Nowhere)
    }

    /// Whether `commit` is finishing now or within `wait`.
    async fn finishes_within(&mut self, commit: &Commit, wait: Duration) -> Result<bool, AttemptError> {
        const POLL: Duration = Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.is_finishing(commit).await? {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn is_finishing(&mut self, commit: &Commit) -> Result<bool, AttemptError> {
        let info = self.pachd.inspect_commit(commit).await.map_err(|s| self.rpc_error("InspectCommit", s))?;
        Ok(info.finishing.is_some())
    }

    /// Gives the batch up. Its commit, if one is open, is cleared and finished with
    /// `error`, so the branch is not left blocked and no part of the batch shows. A
    /// FinishCommit that went through after all makes it a success.
    async fn abandon(&mut self, step: CommitStep, last_error: String) -> Result<String, GaveUp> {
        let reason = GaveUp(last_error);
        let cleanup = async {
            let commit = match step {
                CommitStep::Start => self.our_open_head().await.ok().flatten(),
                CommitStep::Write { commit, .. } => Some(commit),
                CommitStep::Finish { commit, .. } => {
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
            Err(())
        };
        match tokio::time::timeout(ABANDON_TIMEOUT, cleanup).await {
            Ok(Ok(id)) => Ok(id),
            Ok(Err(())) | Err(_) => Err(reason),
        }
    }

    fn rpc_error(&self, step: &'static str, status: Status) -> AttemptError {
        let (code, message) = (status.code(), status.message().to_owned());
        match code {
            Code::Unauthenticated | Code::PermissionDenied => {
                AttemptError::Refused { step, origin: self.pachd.token_origin(), code, message }
            }
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                AttemptError::Unreachable { step, code, message }
            }
            _ => AttemptError::Rpc { step, code, message },
        }
    }

    fn report(&self, error: &AttemptError) {
        self.ctx.health.failing(error.state(), error.kind(), error);
        tracing::debug!(kind = error.kind(), "pfs attempt failed: {error}");
    }
}

/// The id of a replayed batch's commit found in the branch, logged.
fn landed(id: String) -> String {
    tracing::info!(commit = %id, "a replayed batch is in the branch already: not committed again");
    id
}

/// Sleeps `delay` unless giving up meanwhile.
async fn pause(give_up: &Cancel, delay: Duration) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = give_up.cancelled() => {}
    }
}
