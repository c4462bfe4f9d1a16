//! The `pfs://HOST:PORT/REPO@BRANCH?project=P` sink: each batch becomes one
//! Pachyderm 2.x commit, made through pachd's gRPC API (`pfs_v2.API`).
//!
//! The sink thread hands batches to a committer thread of its own, which runs a
//! single-threaded tokio runtime for the gRPC calls and commits the batches one
//! after the other, in order: `submit` returns at once, so the sink thread goes
//! back to taking and laying out the next batch while the previous one commits,
//! and `settle` counts the batches the committer has settled. (A runtime driven
//! from the sink thread itself would only make progress inside `settle`, while
//! the sink thread (`runner`) spends its time waiting on the batch channel.) Each batch is one
//! one-off ModifyFile on the branch, so any number of sidecars can write the same
//! branch (see `committer`). A batch is only committed once pachd has *finished*
//! its commit, some time later: a finisher task on the same runtime finds each
//! batch's commit and waits for that, batch after batch in order, and settles them,
//! while the committer already streams the next one. While idle, `probe` has the
//! committer check pachd and the repo now and then, for `/readyz`.
//!
//! `target` parses the URI and finds the token, `client` speaks to pachd,
//! `requests` lays a batch out as a ModifyFile stream, `marker` tells this writer's
//! batches apart, `committer` retries, `finish` finds and waits for the commit;
//! `reader` reads commits back for the HTTP API.

mod client;
mod committer;
mod finish;
mod marker;
pub mod proto;
mod reader;
mod requests;
pub mod target;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::mpsc;

use self::client::Pachd;
use self::committer::{AttemptError, BatchFiles, Committer, GaveUp};
use self::finish::Finisher;
use self::marker::{default_writer_id, Span, Writer};
use self::reader::PfsReader;
pub use self::target::{detect_worker, Target, TokenSource};
use super::reader::CommitReader;
use super::runner::{spawn_watched, InjectedPanic};
use super::spec::{BadSinkUri, OpenSink, Scheme, SinkSettings, SinkSpec};
use super::{Commit, Sink, SinkContext};
use crate::ack::BatchAck;
use crate::batch::SealReason;
use crate::encode::CommitFile;

pub const SCHEME: Scheme = Scheme { prefix: "pfs:", form: "pfs://HOST:PORT/REPO@BRANCH", parse };

fn parse(uri: &str) -> Result<SinkSpec, BadSinkUri> {
    uri.parse::<Target>().map(SinkSpec::new).map_err(|e| BadSinkUri(e.to_string()))
}

impl Target {
    /// A URI that names no token takes `--pachd-token-file` / `SPOUT_PACHD_TOKEN`;
    /// without them, the pachctl config's. So does `auto` in a worker: a token given
    /// as an option wins over the worker's pachctl config that `auto` found.
    fn with_token(&self, settings: &SinkSettings) -> Target {
        let mut target = self.clone();
        if target.writer.is_none() {
            target.writer.clone_from(&settings.writer);
        }
        let options = TokenSource::from_options(settings.pachd_token_file.clone(), settings.pachd_token.clone());
        let replace = match target.token {
            TokenSource::Unset => true,
            TokenSource::PachConfig(_) => options != TokenSource::Unset,
            TokenSource::Literal(_) | TokenSource::File(_) => false,
        };
        if replace {
            target.token = options;
        }
        target
    }
}

impl OpenSink for Target {
    fn open(&self, settings: &SinkSettings) -> std::io::Result<Box<dyn Sink>> {
        Ok(Box::new(PfsSink::new(self.with_token(settings))))
    }

    fn reader(&self, settings: &SinkSettings) -> Arc<dyn CommitReader> {
        Arc::new(PfsReader::new(&self.with_token(settings)))
    }
}

/// How often an idle sink asks pachd whether it is there.
const PROBE_EVERY: Duration = Duration::from_secs(1);

pub struct PfsSink {
    target: Target,
    worker: Option<Worker>,
    in_flight: usize,
}

/// What the committer thread is asked to do, in order.
enum Job {
    Commit(Commit),
    Probe,
}

/// The committer thread and the channels to it.
struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    settled: Receiver<()>,
    /// A probe is queued or running: no second one until it is done.
    probing: Arc<AtomicBool>,
    last_probe: Option<Instant>,
    thread: JoinHandle<()>,
}

impl PfsSink {
    pub fn new(target: Target) -> Self {
        Self { target, worker: None, in_flight: 0 }
    }

    fn worker(&mut self, ctx: &SinkContext) -> &mut Worker {
        let target = &self.target;
        self.worker.get_or_insert_with(|| {
            let (jobs, queue) = mpsc::unbounded_channel();
            let (done, settled) = crossbeam_channel::unbounded();
            let probing = Arc::new(AtomicBool::new(false));
            let (target, ctx, probed) = (target.clone(), ctx.clone(), probing.clone());
            let health = ctx.health.clone();
            let thread = spawn_watched("pfs-commit", health, move || commit_in_order(target, ctx, queue, done, probed))
                .expect("spawning the pfs committer thread");
            Worker { jobs, settled, probing, last_probe: None, thread }
        })
    }
}

impl Sink for PfsSink {
    fn describe(&self) -> String {
        self.target.to_string()
    }

    fn submit(&mut self, commit: Commit, ctx: &SinkContext) {
        match self.worker(ctx).jobs.send(Job::Commit(commit)) {
            Ok(()) => self.in_flight += 1,
            Err(mpsc::error::SendError(job)) => {
                if let Job::Commit(commit) = job {
                    commit.ack.failed("the pfs committer thread has stopped");
                }
            }
        }
    }

    fn probe(&mut self, ctx: &SinkContext) {
        let worker = self.worker(ctx);
        if worker.last_probe.is_some_and(|t| t.elapsed() < PROBE_EVERY) || worker.probing.load(Ordering::Relaxed) {
            return;
        }
        worker.last_probe = Some(Instant::now());
        worker.probing.store(true, Ordering::Relaxed);
        // A stopped committer has no one to probe for; its batches fail on submit.
        let _ = worker.jobs.send(Job::Probe);
    }

    fn settle(&mut self, wait: Duration, _ctx: &SinkContext) -> usize {
        if let Some(worker) = &self.worker {
            if self.in_flight > 0 {
                match worker.settled.recv_timeout(wait) {
                    Ok(()) => self.in_flight -= 1,
                    // The committer died: what it held failed as it unwound.
                    Err(RecvTimeoutError::Disconnected) => self.in_flight = 0,
                    Err(RecvTimeoutError::Timeout) => {}
                }
            }
            while self.in_flight > 0 && worker.settled.try_recv().is_ok() {
                self.in_flight -= 1;
            }
        }
        self.in_flight
    }
}

impl Drop for PfsSink {
    fn drop(&mut self) {
        if let Some(Worker { jobs, thread, .. }) = self.worker.take() {
            // Closing the queue ends the committer once it has settled what it holds.
            drop(jobs);
            let _ = thread.join();
        }
    }
}

/// The committer thread: commits the queued batches in order, handing each
/// finishing commit to the finisher, which settles them.
fn commit_in_order(
    target: Target,
    ctx: SinkContext,
    mut queue: mpsc::UnboundedReceiver<Job>,
    done: Sender<()>,
    probing: Arc<AtomicBool>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the pfs committer's runtime");
    runtime.block_on(async {
        let pachd = match Pachd::new(&target) {
            Ok(pachd) => pachd,
            Err(bad) => return fail_every_batch(AttemptError::from(bad), &ctx, queue, done, probing).await,
        };
        let writer = Writer::new(&target.writer.clone().unwrap_or_else(default_writer_id));
        let (finishing, finished) = mpsc::unbounded_channel();
        let finisher = Finisher::new(pachd.clone(), ctx.clone(), writer.clone());
        let finisher = tokio::spawn(settle_in_order(finisher, ctx.clone(), finished, done));
        let mut committer = Committer::new(pachd, ctx.clone(), writer);
        let mut fault = InjectedPanic::for_thread("pfs-commit");
        while let Some(job) = queue.recv().await {
            let Job::Commit(Commit { files, ack }) = job else {
                committer.probe().await;
                probing.store(false, Ordering::Relaxed);
                continue;
            };
            fault.count_batch();
            let files: Arc<[CommitFile]> = files.into();
            let span = Span { first: ack.first_seq, last: ack.last_seq, replayed: ack.reason == SealReason::Replay };
            let batch = BatchFiles { files: &files, bytes: ack.bytes, span };
            let outcome = committer.commit(batch).await.map(|()| span);
            // The finisher settles in order, so a failure queues behind the commits before it.
            let _ = finishing.send(Finishing { outcome, files, ack });
        }
        drop(finishing);
        // A panic in the finisher dropped the acks it held, which failed them.
        let _ = finisher.await;
    });
}

/// With an address that cannot work, every batch fails at once with why.
async fn fail_every_batch(
    error: AttemptError,
    ctx: &SinkContext,
    mut queue: mpsc::UnboundedReceiver<Job>,
    done: Sender<()>,
    probing: Arc<AtomicBool>,
) {
    ctx.health.failing(error.state(), error.kind(), &error);
    while let Some(job) = queue.recv().await {
        match job {
            Job::Commit(Commit { ack, .. }) => ack.failed(&error),
            Job::Probe => probing.store(false, Ordering::Relaxed),
        }
        let _ = done.send(());
    }
}

/// A batch pachd took, by its span (or one given up), for the finisher.
struct Finishing {
    outcome: Result<Span, GaveUp>,
    files: Arc<[CommitFile]>,
    ack: BatchAck,
}

/// The finisher task: waits for each commit to be finished, in order, and settles
/// its batch: committed, or failed with pachd's error.
async fn settle_in_order(
    mut finisher: Finisher,
    ctx: SinkContext,
    mut queue: mpsc::UnboundedReceiver<Finishing>,
    done: Sender<()>,
) {
    while let Some(Finishing { outcome, files, ack }) = queue.recv().await {
        match outcome {
            Ok(span) => match finisher.finished(&span).await {
                Ok(id) => ack.committed(ctx.receipt(id, &files)),
                Err(error) => {
                    tracing::error!(batch = ack.no, "{error}");
                    ack.failed(error);
                }
            },
            Err(gave_up) => ack.failed(gave_up),
        }
        // The sink thread may be gone already at shutdown; the ack is settled anyway.
        let _ = done.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_option_wins_over_the_worker_config_auto_found() {
        let worker = |token| Target {
            address: "localhost:1653".into(),
            project: "default".into(),
            repo: "spout".into(),
            branch: "master".into(),
            writer: None,
            token,
        };
        let config = TokenSource::PachConfig("/pachctl/config.json".into());
        let file = SinkSettings { pachd_token_file: Some("/run/token".into()), ..SinkSettings::default() };
        assert_eq!(worker(config.clone()).with_token(&file).token, TokenSource::File("/run/token".into()));
        assert_eq!(worker(config.clone()).with_token(&SinkSettings::default()).token, config);
        let literal = TokenSource::Literal(target::Secret("from-uri".into()));
        assert_eq!(worker(literal.clone()).with_token(&file).token, literal, "a token the URI names stays");
    }
}
