//! Ingest: the ways messages arrive, and the one door they all go through.
//!
//! `http` serves the HTTP API on TCP and a Unix socket, `raw_socket` reads framed
//! streams from a Unix socket, `framing` turns bodies into messages and
//! `file_name` checks the names clients give. All of them hand decoded messages to
//! [`Intake::admit`], which reserves their bytes in the memory budget and enqueues
//! them in the batcher, or says why not.

pub mod file_name;
pub mod framing;
pub mod http;
pub mod idempotency;
pub mod raw_socket;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::ack::VerdictReceiver;
use crate::batch::{Batcher, SeqRange};
use crate::buffer::{charge, Budget, Refusal};
use crate::message::Incoming;
use crate::metrics::METRICS;

/// Where messages came from; the `transport` label of the ingest metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    Unix,
    Raw,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Unix => "unix",
            Transport::Raw => "raw",
        }
    }
}

/// What to do when the budget is full (`--when-full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WhenFull {
    /// Hold the request up to `--block-timeout`, then answer 503.
    Block,
    /// Answer 503 at once.
    Reject,
}

/// Why messages were not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The budget is full (503 with Retry-After).
    Overloaded,
    /// The sidecar is shutting down (503).
    Draining,
    /// The request is larger than the whole budget (413).
    LargerThanBudget,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Overloaded => "overloaded",
            Refused::Draining => "draining",
            Refused::LargerThanBudget => "too_large",
        }
    }
}

/// Admitted messages: their numbers and, if asked for, the verdict to wait for.
#[derive(Debug)]
pub struct Admitted {
    pub seqs: SeqRange,
    pub verdict: Option<VerdictReceiver>,
}

#[derive(Debug)]
pub struct Intake {
    batcher: Arc<Batcher>,
    budget: Arc<Budget>,
    when_full: WhenFull,
    block_timeout: Duration,
    draining: AtomicBool,
}

impl Intake {
    pub fn new(batcher: Arc<Batcher>, when_full: WhenFull, block_timeout: Duration) -> Self {
        let budget = batcher.ledger().budget().clone();
        Self { batcher, budget, when_full, block_timeout, draining: AtomicBool::new(false) }
    }

    pub fn batcher(&self) -> &Arc<Batcher> {
        &self.batcher
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Stops admitting: every later `admit` is refused as `Draining`.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Reserves the messages' bytes and enqueues them, all or none. `block` says
    /// whether to wait for room whatever `--when-full` says (the raw socket, which
    /// has no way to answer 503, pushes back by not reading instead).
    pub async fn admit(
        &self,
        messages: Vec<Incoming>,
        transport: Transport,
        wait_commit: bool,
        block: bool,
    ) -> Result<Admitted, Refused> {
        let count = messages.len() as u64;
        let bytes: u64 = messages.iter().map(|m| m.payload.len()).sum();
        if self.is_draining() {
            return Err(self.refuse(Refused::Draining, count));
        }
        let wait = if block {
            None
        } else {
            match self.when_full {
                WhenFull::Block => Some(self.block_timeout),
                WhenFull::Reject => Some(Duration::ZERO),
            }
        };
        let started = Instant::now();
        let charged = charge(bytes, count);
        let reserved = self.budget.reserve(charged, Some(Duration::ZERO)).await;
        let reserved = match reserved {
            Err(Refusal::Full) if wait != Some(Duration::ZERO) => {
                let waited = self.budget.reserve(charged, wait).await;
                METRICS.backpressure_wait.observe(started.elapsed().as_secs_f64());
                waited
            }
            other => other,
        };
        match reserved {
            Ok(()) => {}
            Err(Refusal::Full) => return Err(self.refuse(Refused::Overloaded, count)),
            Err(Refusal::LargerThanBudget) => return Err(self.refuse(Refused::LargerThanBudget, count)),
        }
        let (tx, rx) = if wait_commit {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        match self.batcher.push(messages, tx) {
            Ok(seqs) => {
                METRICS.messages_received.with_label_values(&[transport.as_str()]).inc_by(count);
                METRICS.bytes_received.with_label_values(&[transport.as_str()]).inc_by(bytes);
                Ok(Admitted { seqs, verdict: rx })
            }
            Err(_closed) => {
                self.budget.release(charged);
                Err(self.refuse(Refused::Draining, count))
            }
        }
    }

    fn refuse(&self, why: Refused, count: u64) -> Refused {
        METRICS.messages_rejected.with_label_values(&[why.reason()]).inc_by(count.max(1));
        why
    }
}
