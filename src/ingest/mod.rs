//! Ingest: the ways messages arrive, and the one door they all go through.
//!
//! `http` serves the HTTP API on TCP and a Unix socket, `raw_socket` reads framed
//! streams from a Unix socket, `source` reads brokers itself (`--source`), and
//! `framing` turns bodies into messages (checking the names clients give with
//! `message::file_name`). All of them hand decoded messages to
//! [`Intake::admit`], which reserves their bytes in the memory budget (and with a disk
//! spool, in the spool's), enqueues them in the batcher (which writes them to the
//! spool) and, with `--spool-sync always`, waits for the spool's sync; or says why not.

pub mod framing;
pub mod http;
pub mod idempotency;
pub mod raw_socket;
pub mod source;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use strum::VariantArray;
use tokio::sync::oneshot;

use crate::ack::VerdictReceiver;
use crate::batch::{Batcher, NotPushed, SeqRange};
use crate::buffer::{charge, Budget, Refusal};
use crate::cancel::Cancel;
use crate::message::Incoming;
use crate::metrics::METRICS;
use crate::sink::Health;
use crate::spool::Spool;

/// Where messages came from; the `transport` label of the ingest metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum Transport {
    Http,
    Unix,
    Raw,
    Kafka,
    Amqp,
    Sqs,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// `spout_messages_received_total` and `spout_bytes_received_total` of each
/// transport, indexed by its discriminant: resolved once, as the transport is first
/// used, rather than looked up by label on every admission.
static RECEIVED: [OnceLock<(IntCounter, IntCounter)>; Transport::VARIANTS.len()] =
    [const { OnceLock::new() }; Transport::VARIANTS.len()];

fn received(transport: Transport) -> &'static (IntCounter, IntCounter) {
    RECEIVED[transport as usize].get_or_init(|| {
        let label = [transport.as_str()];
        (METRICS.messages_received.with_label_values(&label), METRICS.bytes_received.with_label_values(&label))
    })
}

/// How a sender of messages wants them admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmitOptions {
    pub transport: Transport,
    pub answer: Answer,
    pub when_full: FullBudget,
}

/// When the sender hears back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Once admitted (202).
    Accepted,
    /// Once the batch holding the messages is committed (`wait=commit`).
    Committed,
}

/// What a full budget does to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullBudget {
    /// What `--when-full` says: wait up to `--block-timeout`, or refuse at once.
    AsConfigured,
    /// Wait for room for as long as it takes: for the raw socket, which has no
    /// way to answer 503 and pushes back by not reading instead.
    WaitForRoom,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
pub enum Refused {
    /// The budget is full (503 with Retry-After).
    #[strum(serialize = "overloaded")]
    Overloaded,
    /// The sidecar is shutting down (503).
    #[strum(serialize = "draining")]
    Draining,
    /// The request is larger than the whole budget (413).
    #[strum(serialize = "too_large")]
    LargerThanBudget,
    /// A sink thread died: nothing would commit the messages (503).
    #[strum(serialize = "sink_down")]
    SinkDead,
    /// The disk spool is full (`--max-spool-bytes`): 503 with Retry-After.
    #[strum(serialize = "spool_full")]
    SpoolFull,
    /// The disk spool cannot be written or synced (disk full, read-only): 503.
    #[strum(serialize = "spool_unwritable")]
    SpoolUnwritable,
}

impl Refused {
    /// The `reason` label of `spout_messages_rejected_total`.
    pub fn reason(self) -> &'static str {
        self.into()
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
    /// Cancelled when the sidecar starts draining: nothing more is admitted.
    draining: Cancel,
    /// The sink's health: a dead sink admits nothing.
    sink: Arc<Health>,
    spool: Option<Arc<Spool>>,
}

impl Intake {
    pub fn new(
        batcher: Arc<Batcher>,
        when_full: WhenFull,
        block_timeout: Duration,
        draining: Cancel,
        sink: Arc<Health>,
    ) -> Self {
        let budget = batcher.ledger().budget().clone();
        Self { batcher, budget, when_full, block_timeout, draining, sink, spool: None }
    }

    /// Admits through `spool`, which the batcher must journal to.
    pub fn spooling(self, spool: Arc<Spool>) -> Self {
        Self { spool: Some(spool), ..self }
    }

    pub fn spool(&self) -> Option<&Arc<Spool>> {
        self.spool.as_ref()
    }

    pub fn batcher(&self) -> &Arc<Batcher> {
        &self.batcher
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Reserves the messages' bytes and enqueues them, all or none.
    pub async fn admit(&self, messages: Vec<Incoming>, how: AdmitOptions) -> Result<Admitted, Refused> {
        let count = messages.len() as u64;
        let bytes: u64 = messages.iter().map(|m| m.payload.len()).sum();
        if self.is_draining() {
            return Err(self.refuse(Refused::Draining, count));
        }
        if self.sink.is_dead() {
            return Err(self.refuse(Refused::SinkDead, count));
        }
        let wait = match (how.when_full, self.when_full) {
            (FullBudget::WaitForRoom, _) => None,
            (FullBudget::AsConfigured, WhenFull::Block) => Some(self.block_timeout),
            (FullBudget::AsConfigured, WhenFull::Reject) => Some(Duration::ZERO),
        };
        let started = Instant::now();
        let charged = charge(bytes, count);
        if let Err(refusal) = reserve(&self.budget, charged, wait, started).await {
            return Err(self.refuse(refusal.into(), count));
        }
        let spooled = self.spool.as_ref().map_or(0, |_| Spool::record_bytes(&messages));
        if let Some(spool) = &self.spool {
            if let Err(refusal) = reserve(spool.budget(), spooled, wait, started).await {
                self.budget.release(charged);
                let why = match refusal {
                    Refusal::Full => Refused::SpoolFull,
                    Refusal::LargerThanBudget => Refused::LargerThanBudget,
                };
                return Err(self.refuse(why, count));
            }
        }
        let (tx, rx) = match how.answer {
            Answer::Committed => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            Answer::Accepted => (None, None),
        };
        let seqs = match self.batcher.push(messages, tx) {
            Ok(seqs) => seqs,
            Err(not_pushed) => {
                self.budget.release(charged);
                if let Some(spool) = &self.spool {
                    spool.budget().release(spooled);
                }
                let why = match not_pushed {
                    NotPushed::Closed => Refused::Draining,
                    NotPushed::Journal(_) => Refused::SpoolUnwritable,
                };
                return Err(self.refuse(why, count));
            }
        };
        if let Some(spool) = &self.spool {
            // Batched already: should the sync fail, the messages are still committed,
            // and a client that retries after the 503 sends them twice.
            if spool.durable(seqs.last).await.is_err() {
                return Err(self.refuse(Refused::SpoolUnwritable, count));
            }
        }
        let (messages_received, bytes_received) = received(how.transport);
        messages_received.inc_by(count);
        bytes_received.inc_by(bytes);
        Ok(Admitted { seqs, verdict: rx })
    }

    fn refuse(&self, why: Refused, count: u64) -> Refused {
        METRICS.messages_rejected.with_label_values(&[why.reason()]).inc_by(count.max(1));
        why
    }
}

/// Reserves `bytes` in `budget`: at once if there is room, else waiting up to `wait`
/// (`None`: as long as it takes), timing the wait.
async fn reserve(budget: &Budget, bytes: u64, wait: Option<Duration>, started: Instant) -> Result<(), Refusal> {
    match budget.reserve(bytes, Some(Duration::ZERO)).await {
        Err(Refusal::Full) if wait != Some(Duration::ZERO) => {
            let waited = budget.reserve(bytes, wait).await;
            METRICS.backpressure_wait.observe(started.elapsed().as_secs_f64());
            waited
        }
        other => other,
    }
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Full => Refused::Overloaded,
            Refusal::LargerThanBudget => Refused::LargerThanBudget,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `RECEIVED` has a place for each transport at `transport as usize`, which
    /// discriminants given by hand could break.
    #[test]
    fn every_transport_has_its_place() {
        for (index, &transport) in Transport::VARIANTS.iter().enumerate() {
            assert_eq!(transport as usize, index, "{transport:?}");
        }
    }
}
