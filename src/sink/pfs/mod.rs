//! The `pfs://HOST:PORT/REPO@BRANCH?project=P` sink: each batch becomes one
//! Pachyderm 2.x commit, made through pachd's gRPC API (`pfs_v2.API`).
//!
//! The sink thread hands batches to a committer thread of its own, which runs a
//! single-threaded tokio runtime for the gRPC calls and commits the batches one
//! after the other, in order: `submit` returns at once, so the sink thread goes
//! back to taking and laying out the next batch while the previous one commits,
//! and `settle` counts the batches the committer has settled. Commits on a branch
//! cannot overlap (pachd refuses to start a commit whose parent is open), so one
//! committer is all the concurrency there is to have.
//!
//! `target` parses the URI and finds the token, `client` speaks to pachd,
//! `requests` lays a batch out as a ModifyFile stream, `committer` retries.

mod client;
mod committer;
pub mod proto;
mod requests;
pub mod target;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::mpsc;

use self::client::Pachd;
use self::committer::{Batch, Committer, MARKER};
pub use self::target::{detect_worker, Target, TokenSource};
use super::{Commit, Sink, SinkContext, SinkState};
use crate::message::File;

pub struct PfsSink {
    target: Target,
    worker: Option<Worker>,
    in_flight: usize,
}

/// The committer thread and the channels to it.
struct Worker {
    batches: mpsc::UnboundedSender<Commit>,
    settled: Receiver<()>,
    thread: JoinHandle<()>,
}

impl PfsSink {
    pub fn new(target: Target) -> Self {
        Self { target, worker: None, in_flight: 0 }
    }

    fn worker(&mut self, ctx: &SinkContext) -> &Worker {
        let target = &self.target;
        self.worker.get_or_insert_with(|| {
            let (batches, queue) = mpsc::unbounded_channel();
            let (done, settled) = crossbeam_channel::unbounded();
            let (target, ctx) = (target.clone(), ctx.clone());
            let thread = std::thread::Builder::new()
                .name("pfs-commit".into())
                .spawn(move || commit_in_order(target, ctx, queue, done))
                .expect("spawning the pfs committer thread");
            Worker { batches, settled, thread }
        })
    }
}

impl Sink for PfsSink {
    fn describe(&self) -> String {
        self.target.to_string()
    }

    /// Connects (once) ahead of the first batch, so `/readyz` tells the truth
    /// before traffic arrives.
    fn probe(&mut self, ctx: &SinkContext) {
        self.worker(ctx);
    }

    fn submit(&mut self, commit: Commit, ctx: &SinkContext) {
        match self.worker(ctx).batches.send(commit) {
            Ok(()) => self.in_flight += 1,
            Err(mpsc::error::SendError(commit)) => commit.ack.failed("the pfs committer thread has stopped"),
        }
    }

    fn settle(&mut self, wait: Duration, _ctx: &SinkContext) -> usize {
        if let Some(worker) = &self.worker {
            if self.in_flight > 0 && worker.settled.recv_timeout(wait).is_ok() {
                self.in_flight -= 1;
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
        if let Some(Worker { batches, thread, .. }) = self.worker.take() {
            // Closing the queue ends the committer once it has settled what it holds.
            drop(batches);
            let _ = thread.join();
        }
    }
}

/// The committer thread: commits the queued batches in order, settling each.
fn commit_in_order(target: Target, ctx: SinkContext, mut queue: mpsc::UnboundedReceiver<Commit>, done: Sender<()>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the pfs committer's runtime");
    runtime.block_on(async {
        let pachd = match Pachd::new(&target) {
            Ok(pachd) => pachd,
            Err(error) => {
                ctx.health.failing(SinkState::Down, "config", &error);
                while let Some(commit) = queue.recv().await {
                    commit.ack.failed(&error);
                    let _ = done.send(());
                }
                return;
            }
        };
        let mut committer = Committer::new(pachd, ctx.clone());
        let mut next = tokio::select! {
            biased;
            commit = queue.recv() => commit,
            () = committer.prepare() => queue.recv().await,
        };
        while let Some(Commit { files, ack }) = next {
            let files: Arc<[File]> = files.into();
            let batch = Batch {
                files: &files,
                bytes: ack.bytes,
                description: format!("{MARKER}: batch {} of {} messages", ack.no, ack.messages),
            };
            match committer.commit(batch).await {
                Ok(id) => ack.committed(super::receipt(id, &files, ctx.layout)),
                Err(error) => ack.failed(error),
            }
            // The sink thread may be gone already at shutdown; the ack is settled anyway.
            let _ = done.send(());
            next = queue.recv().await;
        }
    });
}
