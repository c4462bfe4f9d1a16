//! The `pfs://HOST:PORT/REPO@BRANCH?project=P` sink: each batch becomes one
//! Pachyderm 2.x commit, made through pachd's gRPC API (`pfs_v2.API`).
//!
//! Commits run on a committer thread ([`super::committer_thread`]), one batch after
//! the other, in order: commits on a branch cannot overlap (pachd refuses to start a
//! commit whose parent is open), so one committer is all the concurrency there is
//! to have. While idle, `probe` has the committer check pachd and the repo now and
//! then, for `/readyz`.
//!
//! `target` parses the URI and finds the token, `client` speaks to pachd,
//! `requests` lays a batch out as a ModifyFile stream, `committer` retries.

mod client;
mod committer;
pub mod proto;
mod requests;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use self::client::Pachd;
use self::committer::{AttemptError, BatchFiles, Committer, MARKER};
pub use self::target::{detect_worker, Target, TokenSource};
use super::committer_thread::{AsyncCommitter, CommitterThread};
use super::spec::{BadSinkUri, OpenSink, Scheme, SinkSettings, SinkSpec};
use super::{Commit, Sink, SinkContext};
use crate::encode::CommitFile;

pub const SCHEME: Scheme = Scheme { prefix: "pfs:", form: "pfs://HOST:PORT/REPO@BRANCH", parse };

fn parse(uri: &str) -> Result<SinkSpec, BadSinkUri> {
    uri.parse::<Target>().map(SinkSpec::new).map_err(|e| BadSinkUri(e.to_string()))
}

impl OpenSink for Target {
    /// A URI that names no token takes `--pachd-token-file` / `SPOUT_PACHD_TOKEN`;
    /// without them, the pachctl config's.
    fn open(&self, settings: &SinkSettings) -> std::io::Result<Box<dyn Sink>> {
        let mut target = self.clone();
        if target.token == TokenSource::Unset {
            target.token = TokenSource::from_options(settings.pachd_token_file.clone(), settings.pachd_token.clone());
        }
        Ok(Box::new(PfsSink::new(target)))
    }
}

/// How often an idle sink asks pachd whether it is there.
const PROBE_EVERY: Duration = Duration::from_secs(1);

pub struct PfsSink {
    target: Target,
    thread: CommitterThread<PfsCommitter>,
}

impl PfsSink {
    pub fn new(target: Target) -> Self {
        let for_thread = target.clone();
        let thread = CommitterThread::new("pfs-commit", PROBE_EVERY, move |ctx: &SinkContext| {
            PfsCommitter::new(&for_thread, ctx.clone())
        });
        Self { target, thread }
    }
}

impl Sink for PfsSink {
    fn describe(&self) -> String {
        self.target.to_string()
    }

    fn submit(&mut self, commit: Commit, ctx: &SinkContext) {
        self.thread.submit(commit, ctx);
    }

    fn probe(&mut self, ctx: &SinkContext) {
        self.thread.probe(ctx);
    }

    fn settle(&mut self, wait: Duration, _ctx: &SinkContext) -> usize {
        self.thread.settle(wait)
    }
}

/// The committer thread's side: the committer, or why pachd's address cannot be
/// used (then every batch fails with that reason).
struct PfsCommitter {
    committer: Result<Committer, AttemptError>,
    ctx: SinkContext,
}

impl PfsCommitter {
    fn new(target: &Target, ctx: SinkContext) -> Self {
        let committer = Pachd::new(target).map(|pachd| Committer::new(pachd, ctx.clone())).map_err(AttemptError::from);
        if let Err(error) = &committer {
            ctx.health.failing(error.state(), error.kind(), error);
        }
        Self { committer, ctx }
    }
}

impl AsyncCommitter for PfsCommitter {
    async fn commit(&mut self, commit: Commit) {
        let Commit { files, ack } = commit;
        let files: Arc<[CommitFile]> = files.into();
        match &mut self.committer {
            Ok(committer) => {
                let description = format!("{MARKER}: batch {} of {} messages", ack.no, ack.messages);
                match committer.commit(BatchFiles { files: &files, bytes: ack.bytes, description }).await {
                    Ok(id) => ack.committed(self.ctx.receipt(id, &files)),
                    Err(gave_up) => ack.failed(gave_up),
                }
            }
            Err(error) => ack.failed(&*error),
        }
    }

    async fn probe(&mut self) {
        if let Ok(committer) = &mut self.committer {
            committer.probe().await;
        }
    }
}
