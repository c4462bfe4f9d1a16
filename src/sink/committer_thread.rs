//! A committer thread for sinks whose commits are async network work: the sink
//! thread hands each batch over and returns at once; the committer thread runs a
//! single-threaded tokio runtime of its own and commits up to
//! [`COMMITS_IN_FLIGHT`] batches side by side, so that the uploads of the next
//! batches overlap the last requests of the current one. Each commit gets its
//! [`Turn`]: what makes a batch visible, and its settling, wait until every earlier
//! batch has settled, so commits land and acknowledgements flow in batch order.
//! `settle` counts the batches it has settled.
//!
//! A runtime driven from the sink thread itself would only make progress inside
//! `settle`, while the runner spends its time waiting on the batch channel, so the
//! work lives on a thread of its own (watched, like the sink thread: a panic there
//! marks the sink dead). While idle, `probe` has the committer check the
//! destination now and then, for `/readyz`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use futures_util::future::Either;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};

use super::runner::{spawn_watched, InjectedPanic};
use super::{Commit, SinkContext};

/// Batches committing at once. Four hide the round trips of one batch's last
/// requests (the manifest, say) behind the uploads of the next ones, while what
/// a stalled store holds back stays a few batches.
const COMMITS_IN_FLIGHT: usize = 4;

/// What runs on the committer thread.
pub trait AsyncCommitter {
    /// Commits one batch and settles its acknowledgement, whatever happens. What
    /// must follow batch order (making the commit visible, settling) waits for
    /// `turn` first.
    fn commit(&self, commit: Commit, turn: Turn) -> impl Future<Output = ()>;

    /// Checks once that the destination is there, reporting to `Health`.
    fn probe(&self) -> impl Future<Output = ()>;
}

/// A batch's place among the batches committing at once.
pub struct Turn {
    place: u64,
    settled: watch::Receiver<u64>,
}

impl Turn {
    /// Resolves once every earlier batch has settled.
    pub async fn wait(&mut self) {
        let place = self.place;
        // The sender outlives every commit (see `run`), so this cannot fail.
        let _ = self.settled.wait_for(|&settled| settled >= place).await;
    }
}

/// Builds the committer on its thread (it need not be `Send`).
type Make<C> = Box<dyn FnOnce(&SinkContext) -> C + Send>;

/// The sink thread's handle on a committer thread, started on first use.
pub struct CommitterThread<C> {
    name: &'static str,
    probe_every: Duration,
    make: Option<Make<C>>,
    worker: Option<Worker>,
    in_flight: usize,
}

/// What the committer thread is asked to do, in order.
enum Job {
    Commit(Commit),
    Probe,
}

struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    settled: Receiver<()>,
    /// A probe is queued or running: no second one until it is done.
    probing: Arc<AtomicBool>,
    last_probe: Option<Instant>,
    thread: JoinHandle<()>,
}

impl<C: AsyncCommitter + 'static> CommitterThread<C> {
    /// `name` names the thread (and its `spout_thread_panics_total` label).
    pub fn new(
        name: &'static str,
        probe_every: Duration,
        make: impl FnOnce(&SinkContext) -> C + Send + 'static,
    ) -> Self {
        Self { name, probe_every, make: Some(Box::new(make)), worker: None, in_flight: 0 }
    }

    fn worker(&mut self, ctx: &SinkContext) -> Option<&mut Worker> {
        if self.worker.is_none() {
            let make = self.make.take()?;
            let (jobs, queue) = mpsc::unbounded_channel();
            let (done, settled) = crossbeam_channel::unbounded();
            let probing = Arc::new(AtomicBool::new(false));
            let (ctx, probed, name) = (ctx.clone(), probing.clone(), self.name);
            let thread = spawn_watched(name, ctx.health.clone(), move || run(name, make, ctx, queue, done, probed))
                .expect("spawning a committer thread");
            self.worker = Some(Worker { jobs, settled, probing, last_probe: None, thread });
        }
        self.worker.as_mut()
    }

    pub fn submit(&mut self, commit: Commit, ctx: &SinkContext) {
        let Some(worker) = self.worker(ctx) else {
            return commit.ack.failed("the committer thread has stopped");
        };
        match worker.jobs.send(Job::Commit(commit)) {
            Ok(()) => self.in_flight += 1,
            Err(mpsc::error::SendError(job)) => {
                if let Job::Commit(commit) = job {
                    commit.ack.failed("the committer thread has stopped");
                }
            }
        }
    }

    pub fn probe(&mut self, ctx: &SinkContext) {
        let every = self.probe_every;
        let Some(worker) = self.worker(ctx) else { return };
        if worker.last_probe.is_some_and(|t| t.elapsed() < every) || worker.probing.load(Ordering::Relaxed) {
            return;
        }
        worker.last_probe = Some(Instant::now());
        worker.probing.store(true, Ordering::Relaxed);
        // A stopped committer has no one to probe for; its batches fail on submit.
        let _ = worker.jobs.send(Job::Probe);
    }

    pub fn settle(&mut self, wait: Duration) -> usize {
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

impl<C> Drop for CommitterThread<C> {
    fn drop(&mut self) {
        if let Some(Worker { jobs, thread, .. }) = self.worker.take() {
            // Closing the queue ends the committer once it has settled what it holds.
            drop(jobs);
            let _ = thread.join();
        }
    }
}

/// The committer thread: builds the committer, then starts the jobs in order,
/// up to [`COMMITS_IN_FLIGHT`] commits (and probes) at once, until the queue is closed and
/// every commit started has settled.
fn run<C: AsyncCommitter>(
    name: &'static str,
    make: Make<C>,
    ctx: SinkContext,
    mut queue: mpsc::UnboundedReceiver<Job>,
    done: Sender<()>,
    probing: Arc<AtomicBool>,
) {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("building a committer's runtime");
    runtime.block_on(async {
        let committer = make(&ctx);
        let mut fault = InjectedPanic::for_thread(name);
        // How many batches, in order, have settled: the places turns wait for.
        let (settled, _) = watch::channel(0u64);
        let mut started = 0u64;
        let mut commits = FuturesUnordered::new();
        let mut open = true;
        while open || !commits.is_empty() {
            tokio::select! {
                job = queue.recv(), if open && commits.len() < COMMITS_IN_FLIGHT => match job {
                    None => open = false,
                    Some(Job::Probe) => {
                        let (committer, probing) = (&committer, &probing);
                        commits.push(Either::Right(async move {
                            committer.probe().await;
                            probing.store(false, Ordering::Relaxed);
                        }));
                    }
                    Some(Job::Commit(commit)) => {
                        fault.count_batch();
                        let turn = Turn { place: started, settled: settled.subscribe() };
                        started += 1;
                        let committing = committer.commit(commit, turn);
                        let (settled, done) = (&settled, &done);
                        let place = started;
                        commits.push(Either::Left(async move {
                            committing.await;
                            // In order even for a commit that settled without its turn.
                            let _ = settled.subscribe().wait_for(|&n| n + 1 >= place).await;
                            settled.send_replace(place);
                            // The sink thread may be gone already at shutdown; the ack is settled anyway.
                            let _ = done.send(());
                        }));
                    }
                },
                Some(()) = commits.next(), if !commits.is_empty() => {}
            }
        }
    });
}
