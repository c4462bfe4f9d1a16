//! Commit receipts: how a sink's verdict on a batch flows back.
//!
//! Each sealed batch carries a `BatchAck`. When the sink settles the batch it calls
//! `committed` or `failed`, which (in this order) frees the batch's bytes from the
//! memory budget, records metrics and the `/status` history, answers every request
//! waiting with `wait=commit`, and advances the progress mark `/flush` waits on.
//! Dropping an unsettled `BatchAck` (a sink thread that died) fails it, so no
//! waiter hangs and no budget leaks.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::batch::{SealReason, SeqRange};
use crate::buffer::Budget;
use crate::metrics::METRICS;

/// What a request waiting with `wait=commit` learns of its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub commit: String,
    /// With `--layout batch`, the one file the batch became.
    pub batch_file: Option<String>,
    /// With an object-store sink, where each file of the commit was stored.
    pub objects: Option<ObjectKeys>,
}

/// Where an object-store sink stores a commit's files: the keys `wait=commit` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectKeys {
    /// Each file is the object `PREFIX/<file name>SUFFIX` (`--object-format files`).
    PerFile { prefix: String, suffix: &'static str },
    /// Every file is inside this one object (`--object-format tar`).
    OneObject(String),
}

impl ObjectKeys {
    /// The key of the object holding `file`.
    pub fn key(&self, file: &str) -> String {
        match self {
            ObjectKeys::PerFile { prefix, suffix } => format!("{prefix}/{file}{suffix}"),
            ObjectKeys::OneObject(key) => key.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitError(pub String);

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Verdict = Result<Arc<Receipt>, CommitError>;

/// The receiving half a waiting request holds.
pub type VerdictReceiver = oneshot::Receiver<Verdict>;

/// One line of `/status`'s commit history.
#[derive(Debug, Clone, Serialize)]
pub struct CommitSummary {
    pub batch: u64,
    pub commit: Option<String>,
    pub error: Option<String>,
    pub messages: u64,
    pub bytes: u64,
    pub reason: SealReason,
    pub unix_time: f64,
}

const HISTORY: usize = 16;

/// A batch sealed and not yet settled: what a shutdown past its timeout names as
/// not committed. Its messages have the sequence numbers `first_seq..=last_seq()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsettled {
    pub batch: u64,
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: u64,
}

impl Unsettled {
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.messages.saturating_sub(1)
    }
}

/// State shared by every batch's acknowledgement.
#[derive(Debug)]
pub struct Ledger {
    budget: Arc<Budget>,
    settled: watch::Sender<u64>,
    history: Mutex<VecDeque<CommitSummary>>,
    unsettled: Mutex<BTreeMap<u64, Unsettled>>,
    /// Told the last seq of every batch committed (the spool, to let go of it).
    on_commit: std::sync::OnceLock<CommitHook>,
    /// The seqs (first, last) of the batches failed since the sink thread last took
    /// them: the sources' checkpoints must not recall their messages as committed.
    failed: Mutex<Vec<(u64, u64)>>,
}

/// What [`Ledger::on_commit`] calls, on the thread that settles the batch.
pub struct CommitHook(pub Box<dyn Fn(u64) + Send + Sync>);

impl fmt::Debug for CommitHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CommitHook")
    }
}

impl Ledger {
    pub fn new(budget: Arc<Budget>) -> Arc<Self> {
        Arc::new(Self {
            budget,
            settled: watch::Sender::new(0),
            history: Mutex::default(),
            unsettled: Mutex::default(),
            on_commit: std::sync::OnceLock::new(),
            failed: Mutex::default(),
        })
    }

    /// The seqs (first, last) of the batches failed since the last call.
    pub fn take_failed(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut *self.failed.lock().unwrap())
    }

    /// Calls `hook` with the last seq of each batch as it commits. Set once.
    pub fn on_commit(&self, hook: CommitHook) {
        if self.on_commit.set(hook).is_err() {
            panic!("Ledger::on_commit is set once, by the pipeline");
        }
    }

    /// Every batch sealed and not yet settled, oldest first.
    pub fn unsettled(&self) -> Vec<Unsettled> {
        self.unsettled.lock().unwrap().values().copied().collect()
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// The number of the last batch settled; batches settle in order.
    pub fn settled(&self) -> watch::Receiver<u64> {
        self.settled.subscribe()
    }

    /// Waits until batch `no` and every batch before it has settled.
    pub async fn wait_settled(&self, no: u64) {
        let mut settled = self.settled.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we borrow it.
        let _ = settled.wait_for(|&done| done >= no).await;
    }

    pub fn recent(&self) -> Vec<CommitSummary> {
        self.history.lock().unwrap().iter().cloned().collect()
    }
}

/// The acknowledgement half of a sealed batch. See the module comment.
#[derive(Debug)]
pub struct BatchAck {
    pub no: u64,
    pub messages: u64,
    pub bytes: u64,
    pub reason: SealReason,
    pub first_seq: u64,
    /// The batch's last seq: `first_seq + messages - 1` unless a damaged spool lost
    /// records in between.
    pub last_seq: u64,
    opened: Instant,
    sealed: Instant,
    waiters: Vec<oneshot::Sender<Verdict>>,
    ledger: Arc<Ledger>,
    settled: bool,
    /// The batch's messages were let go of (it waits on disk): its charge went then.
    memory_released: bool,
}

impl BatchAck {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        no: u64,
        messages: u64,
        bytes: u64,
        reason: SealReason,
        seqs: SeqRange,
        opened: Instant,
        waiters: Vec<oneshot::Sender<Verdict>>,
        ledger: Arc<Ledger>,
    ) -> Self {
        let unsettled = Unsettled { batch: no, messages, bytes, first_seq: seqs.first };
        ledger.unsettled.lock().unwrap().insert(no, unsettled);
        let (first_seq, last_seq) = (seqs.first, seqs.last);
        Self {
            no,
            messages,
            bytes,
            reason,
            first_seq,
            last_seq,
            opened,
            sealed: Instant::now(),
            waiters,
            ledger,
            settled: false,
            memory_released: false,
        }
    }

    /// Gives back the batch's charge on the memory budget now, its messages having
    /// been let go of while it waits on disk.
    pub fn release_memory(&mut self) {
        if !std::mem::replace(&mut self.memory_released, true) {
            self.ledger.budget.release(crate::buffer::charge(self.bytes, self.messages));
        }
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Time since the batch was sealed: how long its commit has taken so far.
    pub fn since_sealed(&self) -> std::time::Duration {
        self.sealed.elapsed()
    }

    pub fn committed(mut self, receipt: Receipt) {
        METRICS.batches_committed.with_label_values(&[self.reason.as_str()]).inc();
        METRICS.messages_committed.inc_by(self.messages);
        METRICS.batch_messages.observe(self.messages as f64);
        METRICS.batch_bytes.observe(self.bytes as f64);
        METRICS.commit_duration.observe(self.sealed.elapsed().as_secs_f64());
        METRICS.accept_to_commit.observe(self.opened.elapsed().as_secs_f64());
        if let Some(hook) = self.ledger.on_commit.get() {
            (hook.0)(self.last_seq);
        }
        self.settle(Ok(Arc::new(receipt)));
    }

    pub fn failed(mut self, error: impl fmt::Display) {
        METRICS.batches_failed.inc();
        let error = CommitError(error.to_string());
        tracing::error!(
            batch = self.no,
            messages = self.messages,
            bytes = self.bytes,
            first_seq = self.first_seq,
            last_seq = self.last_seq,
            "commit failed, its messages are not committed: {error}"
        );
        self.settle(Err(error));
    }

    fn settle(&mut self, verdict: Verdict) {
        self.settled = true;
        self.ledger.unsettled.lock().unwrap().remove(&self.no);
        if verdict.is_err() {
            self.ledger.failed.lock().unwrap().push((self.first_seq, self.last_seq));
        }
        self.release_memory();
        let summary = CommitSummary {
            batch: self.no,
            commit: verdict.as_ref().ok().map(|r| r.commit.clone()),
            error: verdict.as_ref().err().map(|e| e.0.clone()),
            messages: self.messages,
            bytes: self.bytes,
            reason: self.reason,
            unix_time: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        };
        {
            let mut history = self.ledger.history.lock().unwrap();
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(summary);
        }
        for waiter in self.waiters.drain(..) {
            // A waiter that hung up no longer needs the answer.
            let _ = waiter.send(verdict.clone());
        }
        let no = self.no;
        self.ledger.settled.send_modify(|done| *done = (*done).max(no));
    }
}

impl Drop for BatchAck {
    fn drop(&mut self) {
        if !self.settled {
            METRICS.batches_failed.inc();
            self.settle(Err(CommitError("the sink stopped before committing the batch".into())));
        }
    }
}
