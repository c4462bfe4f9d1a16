//! One batch, one commit: takes a batch into pachd's branch as exactly one commit,
//! retrying through failures, with any number of sidecars writing the same branch.
//!
//! A batch is one ModifyFile stream whose `set_commit` names only the branch. For a
//! branch whose head is not open, pachd collects the whole stream and then, in one
//! transaction, starts a commit on the head of that moment, adds the files and marks
//! it finishing (`oneOffModifyFile` in pachd's server_file.go): a stream that fails
//! leaves nothing, no commit is ever left open, and streams from several sidecars run
//! at once, pachd ordering their commits. (StartCommit / ModifyFile / FinishCommit
//! was the other way: a second writer's StartCommit fails while the first's commit is
//! open, `linkParent` in server_commit.go, so writers take turns through retries, and
//! a writer that dies leaves an open commit that blocks every other.)
//!
//! A failed stream does not say whether pachd made the commit before the answer was
//! lost, so each stream also replaces this writer's marker file (see `marker`), and
//! the attempt after a failure first reads the marker at the branch head: a marker
//! that reaches the batch's last message means it landed, and it is not sent again.
//! A batch replayed from the disk spool is checked the same way before its first
//! stream: its earlier run may have landed it just before the crash.
//!
//! A branch-only ModifyFile joins the head if it is an open commit, so before each
//! stream the head is checked: an open head (someone's `start commit`) blocks the
//! sink (`open_commit`) rather than absorb the batch into someone else's commit.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tonic::{Code, Status};

use super::client::{BadAddress, BadToken, Pachd};
use super::marker::{Span, Writer, MARKER_LIMIT};
use super::requests::modify_file_requests;
use crate::cancel::Cancel;
use crate::encode::CommitFile;
use crate::metrics::METRICS;
use crate::sink::backoff::Backoff;
use crate::sink::{SinkContext, SinkState};

/// How long giving up may spend finding out whether the last attempt landed.
const LAST_CHECK: Duration = Duration::from_secs(3);

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
        "the branch head {0} is an open commit, which the batch would join; finish or delete it \
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
    /// The batch's messages, for its mark.
    pub span: Span,
}

pub struct Committer {
    pachd: Pachd,
    ctx: SinkContext,
    writer: Writer,
    backoff: Backoff,
    repo_ready: bool,
}

impl Committer {
    pub fn new(pachd: Pachd, ctx: SinkContext, writer: Writer) -> Self {
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        Self { pachd, ctx, writer, backoff, repo_ready: false }
    }

    /// Checks once that pachd is reachable, takes the token and has the repo (creating
    /// it if need be), so `/readyz` tells the truth while no batch is in flight.
    pub async fn probe(&mut self) {
        match self.ensure_repo().await {
            Ok(()) => self.ctx.health.up(),
            Err(error) => self.report(&error),
        }
    }

    /// Takes the batch into the branch; on success the finisher finds its commit (which
    /// pachd may still be finishing) by its span; else why it was given up.
    pub async fn commit(&mut self, batch: BatchFiles<'_>) -> Result<(), GaveUp> {
        let give_up = self.ctx.give_up.clone();
        let mark = self.writer.mark(&batch.span);
        // A stream failed, or the run that sealed the batch crashed: it may have landed.
        let mut unsure = batch.span.replayed;
        let mut last_error = String::from("the sidecar was already giving up");
        let mut attempt = 0u64;
        loop {
            if give_up.is_cancelled() {
                let landed = unsure
                    && tokio::time::timeout(LAST_CHECK, self.landed(&batch.span))
                        .await
                        .is_ok_and(|r| r.unwrap_or(false));
                return if landed { Ok(()) } else { Err(GaveUp(last_error)) };
            }
            attempt += 1;
            if attempt > 1 {
                METRICS.sink_retries.inc();
            }
            let result = tokio::select! {
                result = self.attempt(&mut unsure, &mark, &batch) => result,
                () = give_up.cancelled() => continue,
            };
            match result {
                Ok(()) => {
                    self.ctx.health.up();
                    self.backoff.reset();
                    return Ok(());
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

    async fn attempt(&mut self, unsure: &mut bool, mark: &Bytes, batch: &BatchFiles<'_>) -> Result<(), AttemptError> {
        self.pachd.reload_token()?;
        if !self.repo_ready {
            self.ensure_repo().await?;
        }
        if *unsure {
            if self.landed(&batch.span).await? {
                match batch.span.replayed {
                    true => tracing::info!(
                        first_seq = batch.span.first,
                        last_seq = batch.span.last,
                        "a replayed batch had landed before the restart; not sending it again"
                    ),
                    false => tracing::info!("a batch whose answer was lost had landed; not sending it again"),
                }
                return Ok(());
            }
            *unsure = false;
        }
        self.refuse_open_head().await?;
        *unsure = true;
        let marker = (self.writer.path().to_owned(), mark.clone());
        let requests =
            modify_file_requests(self.pachd.branch_target(), marker, batch.files.clone(), self.ctx.overwrite);
        self.pachd.modify_file(requests, batch.bytes).await.map_err(|s| self.rpc_error("ModifyFile", s))
    }

    async fn ensure_repo(&mut self) -> Result<(), AttemptError> {
        self.pachd.reload_token()?;
        self.pachd.ensure_repo().await.map_err(|s| self.rpc_error("InspectRepo/CreateRepo", s))?;
        self.repo_ready = true;
        Ok(())
    }

    /// Whether this writer's marker at the branch head covers `span`: the batch landed.
    async fn landed(&mut self, span: &Span) -> Result<bool, AttemptError> {
        let head = self.pachd.branch_target();
        let marker = self.pachd.get_small_file(&head, self.writer.path(), MARKER_LIMIT).await;
        Ok(marker.map_err(|s| self.rpc_error("GetFile", s))?.is_some_and(|m| self.writer.covers(&m, span)))
    }

    /// An error if the branch head is an open commit, which the stream would join.
    async fn refuse_open_head(&mut self) -> Result<(), AttemptError> {
        let head = self.pachd.inspect_head().await.map_err(|s| self.rpc_error("InspectCommit", s))?;
        match head {
            Some(info) if info.finishing.is_none() => {
                Err(AttemptError::ForeignOpenCommit(info.commit.map(|c| c.id).unwrap_or_default()))
            }
            _ => Ok(()),
        }
    }

    fn rpc_error(&self, step: &'static str, status: Status) -> AttemptError {
        classify(step, status, &self.pachd)
    }

    fn report(&self, error: &AttemptError) {
        self.ctx.health.failing(error.state(), error.kind(), error);
        tracing::debug!(kind = error.kind(), "pfs attempt failed: {error}");
    }
}

/// What a failed call at `step` means for health and retries.
pub fn classify(step: &'static str, status: Status, pachd: &Pachd) -> AttemptError {
    let (code, message) = (status.code(), status.message().to_owned());
    match code {
        Code::Unauthenticated | Code::PermissionDenied => {
            AttemptError::Refused { step, origin: pachd.token_origin(), code, message }
        }
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            AttemptError::Unreachable { step, code, message }
        }
        _ => AttemptError::Rpc { step, code, message },
    }
}

/// Sleeps `delay` unless giving up meanwhile.
pub async fn pause(give_up: &Cancel, delay: Duration) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = give_up.cancelled() => {}
    }
}
