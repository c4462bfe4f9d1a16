//! The batching policy: messages gather in the open batch until its size, count or
//! age limit is reached (or `/flush`, or shutdown), then the batch is sealed and
//! handed to the sink thread.
//!
//! A request's messages always land in one batch, so `wait=commit` has one commit
//! to report: if a request would push the open batch past a limit, the open batch is
//! sealed first; a request larger than the limits alone becomes a batch of its own.
//!
//! With a [`Journal`] (the disk spool), messages are recorded as they are numbered and
//! seals as they happen, under the same lock: the journal's order is the seq order and
//! the batches can be rebuilt from it after a crash ([`Batcher::replay_sealed`],
//! [`Batcher::restore`]). A batch sealed while the sink lags so far behind that
//! keeping it in memory would leave less room than a full batch takes
//! ([`Batcher::lagging`]) lets its messages go and gives back their charge: the sink
//! thread reads it back from the journal ([`Batch::load`]), so the backlog is bounded
//! by the journal's room rather than by memory. Any other batch stays in memory:
//! reading it back costs CPU that a sink only slightly behind cannot spare.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde::Serialize;
use tokio::sync::{oneshot, Notify};

use crate::ack::{BatchAck, Ledger, Verdict};
use crate::message::{Incoming, Message, Sequencer};
use crate::metrics::METRICS;

/// What sealed a batch; the label of `spout_batches_committed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::IntoStaticStr, strum::VariantArray)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum SealReason {
    Bytes,
    Messages,
    Age,
    Flush,
    Shutdown,
    /// Rebuilt at start-up from the spool, as a previous run had sealed it.
    Replay,
}

impl SealReason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub max_bytes: u64,
    pub max_messages: u64,
    pub max_age: Duration,
}

/// A sealed batch on its way to the sink.
#[derive(Debug)]
pub struct Batch {
    /// Empty while the batch waits on disk only: see [`Batch::load`].
    pub messages: Vec<Message>,
    pub ack: BatchAck,
    /// The journal to read the messages back from, if they were let go of.
    on_disk: Option<Arc<dyn Journal>>,
}

impl Batch {
    /// Whether the batch's messages wait in the journal only.
    pub fn on_disk(&self) -> bool {
        self.on_disk.is_some()
    }

    /// The batch with its messages in memory, read back from the journal if they
    /// were let go of; `None` if they cannot be, the batch then failed with why.
    pub fn load(mut self) -> Option<Self> {
        let Some(journal) = self.on_disk.take() else { return Some(self) };
        match journal.read_back(self.ack.first_seq, self.ack.last_seq) {
            Ok(messages) => Some(Self { messages, ..self }),
            Err(error) => {
                self.ack.failed(format_args!("cannot read the batch back from the spool: {error}"));
                None
            }
        }
    }
}

/// The sequence numbers a request's messages were given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub first: u64,
    pub last: u64,
}

/// Why [`Batcher::push`] took nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotPushed {
    /// The batcher no longer takes messages: the sidecar is draining.
    #[error("the batcher is closed")]
    Closed,
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Where numbered messages are recorded before they are batched: the disk spool.
pub trait Journal: Send + Sync + std::fmt::Debug {
    /// Records one request's messages, numbered; all or none.
    fn append(&self, messages: &[Message]) -> Result<(), JournalError>;

    /// Records that the messages `first..=last` were sealed as one batch.
    fn sealed(&self, first: u64, last: u64);

    /// Whether a batch starting at message `first` can be read back.
    fn holds(&self, first: u64) -> bool;

    /// The messages `first..=last` of a sealed batch, read back.
    fn read_back(&self, first: u64, last: u64) -> Result<Vec<Message>, JournalError>;
}

/// The journal could not record the messages (the spool's disk is full, say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JournalError(pub String);

#[derive(Debug, Serialize)]
pub struct OpenBatchInfo {
    pub messages: u64,
    pub bytes: u64,
    pub age_seconds: f64,
    pub batches_sealed: u64,
}

#[derive(Debug)]
struct Open {
    messages: Vec<Message>,
    bytes: u64,
    opened: Option<Instant>,
    waiters: Vec<oneshot::Sender<Verdict>>,
    seq: Sequencer,
    sealed: u64,
    out: Option<Sender<Batch>>,
}

#[derive(Debug)]
pub struct Batcher {
    open: Mutex<Open>,
    policy: Policy,
    ledger: Arc<Ledger>,
    journal: Option<Arc<dyn Journal>>,
    /// Wakes the age timer when a batch opens or closes.
    changed: Notify,
}

impl Batcher {
    pub fn new(policy: Policy, seq: Sequencer, ledger: Arc<Ledger>, out: Sender<Batch>) -> Arc<Self> {
        Self::journaled(policy, seq, ledger, out, None)
    }

    /// A batcher that records messages and seals in `journal` as it goes.
    pub fn journaled(
        policy: Policy,
        seq: Sequencer,
        ledger: Arc<Ledger>,
        out: Sender<Batch>,
        journal: Option<Arc<dyn Journal>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(Open {
                messages: Vec::new(),
                bytes: 0,
                opened: None,
                waiters: Vec::new(),
                seq,
                sealed: 0,
                out: Some(out),
            }),
            policy,
            ledger,
            journal,
            changed: Notify::new(),
        })
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Adds one request's messages (their bytes already reserved in the budget) and
    /// registers `waiter` for the verdict on the batch that holds them.
    pub fn push(
        &self,
        incoming: Vec<Incoming>,
        waiter: Option<oneshot::Sender<Verdict>>,
    ) -> Result<SeqRange, NotPushed> {
        debug_assert!(!incoming.is_empty(), "ingest answers empty requests itself");
        let count = incoming.len() as u64;
        let bytes: u64 = incoming.iter().map(|m| m.payload.len()).sum();
        let mut open = self.open.lock().unwrap();
        if open.out.is_none() {
            return Err(NotPushed::Closed);
        }
        self.make_room(&mut open, count, bytes);
        let first = open.seq.take(count);
        // Numbered straight into the open batch: no list of its own per request.
        let start = open.messages.len();
        open.messages.extend(incoming.into_iter().zip(first..).map(|(m, seq)| Message {
            seq,
            name: m.name,
            payload: m.payload,
            line: m.line,
            origin: m.origin,
        }));
        if let Some(journal) = &self.journal {
            if let Err(error) = journal.append(&open.messages[start..]) {
                open.messages.truncate(start);
                return Err(error.into());
            }
        }
        self.added(&mut open, bytes, waiter);
        Ok(SeqRange { first, last: first + count - 1 })
    }

    /// Adds messages a previous run numbered and journaled but did not seal, as
    /// `push` would have. Their bytes must be in the budget already.
    pub fn restore(&self, messages: Vec<Message>) {
        let Some(last) = messages.last().map(|m| m.seq) else { return };
        let bytes = messages.iter().map(|m| m.payload.len()).sum();
        let mut open = self.open.lock().unwrap();
        open.seq.skip_past(last);
        self.make_room(&mut open, messages.len() as u64, bytes);
        open.messages.extend(messages);
        self.added(&mut open, bytes, None);
    }

    /// Seals `messages` as the batch a previous run sealed (and journaled); call
    /// before anything else is pushed, oldest batch first.
    pub fn replay_sealed(&self, messages: Vec<Message>) {
        let Some(last) = messages.last().map(|m| m.seq) else { return };
        let bytes = messages.iter().map(|m| m.payload.len()).sum();
        let mut open = self.open.lock().unwrap();
        debug_assert!(open.messages.is_empty(), "replayed batches go first");
        open.seq.skip_past(last);
        // Not through `added`: a batch as large as the limits would be sealed there
        // for its size, and then not be known as replayed.
        (open.messages, open.bytes, open.opened) = (messages, bytes, Some(Instant::now()));
        self.seal(&mut open, SealReason::Replay);
    }

    /// Seals the open batch if `count` messages of `bytes` would take it past a limit.
    fn make_room(&self, open: &mut Open, count: u64, bytes: u64) {
        if !open.messages.is_empty()
            && (open.bytes + bytes > self.policy.max_bytes
                || open.messages.len() as u64 + count > self.policy.max_messages)
        {
            let reason =
                if open.bytes + bytes > self.policy.max_bytes { SealReason::Bytes } else { SealReason::Messages };
            self.seal(open, reason);
        }
    }

    /// Counts numbered messages of `bytes` just added to the open batch, and seals it
    /// if that fills it.
    fn added(&self, open: &mut Open, bytes: u64, waiter: Option<oneshot::Sender<Verdict>>) {
        if open.opened.is_none() {
            open.opened = Some(Instant::now());
            METRICS.open_batch_opened.set(crate::message::unix_nanos() as f64 / 1e9);
            self.changed.notify_one();
        }
        open.bytes += bytes;
        open.waiters.extend(waiter);
        if open.bytes >= self.policy.max_bytes {
            self.seal(open, SealReason::Bytes);
        } else if open.messages.len() as u64 >= self.policy.max_messages {
            self.seal(open, SealReason::Messages);
        } else {
            METRICS.open_batch_messages.set(open.messages.len() as i64);
            METRICS.open_batch_bytes.set(open.bytes as i64);
        }
    }

    /// Seals the open batch now. Returns the number of the last sealed batch: once it
    /// has settled, everything accepted before this call has.
    pub fn flush(&self) -> u64 {
        let mut open = self.open.lock().unwrap();
        self.seal(&mut open, SealReason::Flush);
        open.sealed
    }

    /// Seals the last batch and stops taking messages; the sink thread ends once it
    /// has committed everything. Returns the last batch's number.
    pub fn close(&self) -> u64 {
        let mut open = self.open.lock().unwrap();
        self.seal(&mut open, SealReason::Shutdown);
        open.out = None;
        self.changed.notify_one();
        open.sealed
    }

    pub fn info(&self) -> OpenBatchInfo {
        let open = self.open.lock().unwrap();
        OpenBatchInfo {
            messages: open.messages.len() as u64,
            bytes: open.bytes,
            age_seconds: open.opened.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0),
            batches_sealed: open.sealed,
        }
    }

    fn seal(&self, open: &mut Open, reason: SealReason) {
        let Some(opened) = open.opened.take() else { return };
        let Some(out) = open.out.as_ref() else { return };
        open.sealed += 1;
        // The next batch is likely as large as this one: room for it saves growing the
        // list message by message, copying it each time it doubles.
        let room = open.messages.len();
        let messages = std::mem::replace(&mut open.messages, Vec::with_capacity(room));
        if let (Some(journal), Some(first), Some(last), false) =
            (&self.journal, messages.first(), messages.last(), reason == SealReason::Replay)
        {
            journal.sealed(first.seq, last.seq);
        }
        let mut ack = BatchAck::new(
            open.sealed,
            messages.len() as u64,
            std::mem::take(&mut open.bytes),
            reason,
            SeqRange { first: messages.first().map_or(0, |m| m.seq), last: messages.last().map_or(0, |m| m.seq) },
            opened,
            std::mem::take(&mut open.waiters),
            self.ledger.clone(),
        );
        METRICS.open_batch_messages.set(0);
        METRICS.open_batch_bytes.set(0);
        METRICS.open_batch_opened.set(0.0);
        // The batch waits on disk instead of memory, and new requests are bounded by
        // the spool's room rather than memory.
        let on_disk = match (&self.journal, messages.first()) {
            (Some(journal), Some(first)) if self.lagging() && journal.holds(first.seq) => {
                ack.release_memory();
                Some(journal.clone())
            }
            _ => None,
        };
        let messages = if on_disk.is_some() { Vec::new() } else { messages };
        // The sink thread outlives the batcher's sender; should it have died, the
        // batch's ack fails as it is dropped, answering its waiters.
        let _ = out.send(Batch { messages, ack, on_disk });
    }

    /// Whether the sink lags so far behind that the batch just sealed must wait on
    /// disk: kept in memory, it would leave less room in the budget than a full batch
    /// takes, and admission would stall on memory with room in the spool. Batches
    /// kept stay within the budget less that room, so the open batch can always fill.
    fn lagging(&self) -> bool {
        let budget = self.ledger.budget();
        let full_batch = crate::buffer::charge(self.policy.max_bytes, self.policy.max_messages);
        budget.used().saturating_add(full_batch.min(budget.limit())) > budget.limit()
    }

    /// Seals batches that reach `--max-batch-age`. Runs until the batcher is closed.
    pub async fn run_age_timer(self: Arc<Self>) {
        loop {
            let changed = self.changed.notified();
            let deadline = {
                let open = self.open.lock().unwrap();
                if open.out.is_none() {
                    return;
                }
                open.opened.map(|t| t + self.policy.max_age)
            };
            match deadline {
                None => changed.await,
                Some(deadline) => {
                    tokio::time::sleep_until(deadline.into()).await;
                    let mut open = self.open.lock().unwrap();
                    if open.opened.is_some_and(|t| t.elapsed() >= self.policy.max_age) {
                        self.seal(&mut open, SealReason::Age);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Budget;
    use bytes::Bytes;

    fn batcher(max_bytes: u64, max_messages: u64) -> (Arc<Batcher>, crossbeam_channel::Receiver<Batch>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let ledger = Ledger::new(Arc::new(Budget::new(1 << 30)));
        let policy = Policy { max_bytes, max_messages, max_age: Duration::from_millis(50) };
        (Batcher::new(policy, Sequencer::starting_at(100), ledger, tx), rx)
    }

    fn msgs(sizes: &[usize]) -> Vec<Incoming> {
        sizes
            .iter()
            .map(|&n| Incoming { name: None, payload: Bytes::from(vec![b'x'; n]).into(), line: false, origin: None })
            .collect()
    }

    #[test]
    fn count_trigger_seals_and_numbers_in_order() {
        let (b, rx) = batcher(1 << 20, 3);
        assert_eq!(b.push(msgs(&[1, 1]), None).unwrap(), SeqRange { first: 100, last: 101 });
        assert!(rx.try_recv().is_err());
        b.push(msgs(&[1]), None).unwrap();
        let batch = rx.try_recv().unwrap();
        assert_eq!(batch.ack.reason, SealReason::Messages);
        assert_eq!(batch.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [100, 101, 102]);
    }

    #[test]
    fn a_request_never_spans_batches() {
        let (b, rx) = batcher(10, 1000);
        b.push(msgs(&[6]), None).unwrap();
        b.push(msgs(&[3, 3]), None).unwrap();
        let first = rx.try_recv().unwrap();
        assert_eq!((first.messages.len(), first.ack.reason), (1, SealReason::Bytes));
        assert!(rx.try_recv().is_err(), "the second request waits in the open batch");
        b.push(msgs(&[20]), None).unwrap();
        assert_eq!(rx.try_recv().unwrap().messages.len(), 2);
        let big = rx.try_recv().unwrap();
        assert_eq!((big.messages.len(), big.ack.bytes), (1, 20));
    }

    #[test]
    fn a_replayed_batch_is_sealed_as_it_was_even_at_the_limits() {
        let (b, rx) = batcher(1 << 20, 3);
        let numbered = |seqs: std::ops::RangeInclusive<u64>| -> Vec<Message> {
            seqs.map(|seq| Message {
                seq,
                name: None,
                payload: Bytes::from_static(b"m").into(),
                line: false,
                origin: None,
            })
            .collect()
        };
        b.replay_sealed(numbered(207..=209));
        b.restore(numbered(210..=211));
        let replayed = rx.try_recv().unwrap();
        assert_eq!(
            (replayed.ack.reason, replayed.ack.first_seq, replayed.ack.last_seq),
            (SealReason::Replay, 207, 209)
        );
        assert!(rx.try_recv().is_err(), "restored messages wait in the open batch");
        assert_eq!(b.push(msgs(&[1]), None).unwrap(), SeqRange { first: 212, last: 212 }, "numbered past them");
        let next = rx.try_recv().unwrap();
        assert_eq!((next.ack.reason, next.messages.len()), (SealReason::Messages, 3));
    }

    /// A journal in memory: what a spool would read back.
    #[derive(Debug, Default)]
    struct Remembers(Mutex<Vec<Message>>);

    impl Journal for Remembers {
        fn append(&self, messages: &[Message]) -> Result<(), JournalError> {
            self.0.lock().unwrap().extend_from_slice(messages);
            Ok(())
        }

        fn sealed(&self, _: u64, _: u64) {}

        fn holds(&self, _: u64) -> bool {
            true
        }

        fn read_back(&self, first: u64, last: u64) -> Result<Vec<Message>, JournalError> {
            Ok(self.0.lock().unwrap().iter().filter(|m| (first..=last).contains(&m.seq)).cloned().collect())
        }
    }

    /// A batcher journaling to memory, with `used` bytes of a 1 MiB budget taken and
    /// batches of one message, at most 100 KiB.
    fn journaled(used: u64) -> (Arc<Batcher>, crossbeam_channel::Receiver<Batch>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let budget = Arc::new(Budget::new(1 << 20));
        budget.force(used);
        let policy = Policy { max_bytes: 100 << 10, max_messages: 1, max_age: Duration::from_secs(60) };
        let journal: Arc<dyn Journal> = Arc::new(Remembers::default());
        (Batcher::journaled(policy, Sequencer::starting_at(1), Ledger::new(budget), tx, Some(journal)), rx)
    }

    fn on_disk(rx: &crossbeam_channel::Receiver<Batch>) -> Vec<bool> {
        rx.try_iter().map(|b| b.on_disk()).collect()
    }

    #[test]
    fn a_batch_waits_on_disk_only_when_memory_has_no_room_for_the_next() {
        // Most of the budget taken, batches waiting: still room for a full batch.
        let (b, rx) = journaled(900 << 10);
        for _ in 0..3 {
            b.push(msgs(&[10]), None).unwrap();
        }
        assert_eq!(on_disk(&rx), [false; 3]);
        // A full batch (100 KiB and 512 bytes charged) would not fit next to it.
        let (b, rx) = journaled((1 << 20) - (100 << 10));
        b.push(msgs(&[10]), None).unwrap();
        let batch = rx.try_recv().unwrap();
        assert!(batch.on_disk());
        let batch = batch.load().unwrap();
        assert_eq!(batch.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [1]);
        // Batches larger than the budget always go to disk.
        let (tx, rx) = crossbeam_channel::unbounded();
        let policy = Policy { max_bytes: 2 << 20, max_messages: 1, max_age: Duration::from_secs(60) };
        let journal: Arc<dyn Journal> = Arc::new(Remembers::default());
        let budget = Arc::new(Budget::new(1 << 20));
        budget.force(crate::buffer::charge(10, 1));
        let b = Batcher::journaled(policy, Sequencer::starting_at(1), Ledger::new(budget), tx, Some(journal));
        b.push(msgs(&[10]), None).unwrap();
        assert_eq!(on_disk(&rx), [true]);
    }

    #[tokio::test]
    async fn age_trigger_and_close() {
        let (b, rx) = batcher(1 << 20, 1000);
        tokio::spawn(b.clone().run_age_timer());
        b.push(msgs(&[1]), None).unwrap();
        let batch = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(5)).map(|b| (b, rx)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.0.ack.reason, SealReason::Age);
        b.push(msgs(&[1]), None).unwrap();
        assert_eq!(b.close(), 2);
        assert_eq!(batch.1.try_recv().unwrap().ack.reason, SealReason::Shutdown);
        assert_eq!(b.push(msgs(&[1]), None), Err(NotPushed::Closed));
    }
}
