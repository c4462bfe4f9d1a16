//! The shutdown story: a signal (or the supervised command ending) starts it;
//! ingest stops admitting (503), the batcher seals its last batch, and the sink
//! thread commits everything accepted. If that takes longer than
//! `--shutdown-timeout`, the sink is told to give up and the exit code says so.
//!
//! Both steps are [`Cancel`]s, held in [`Shutdown`]: `drain` is what ingest watches,
//! `give_up` what the sink watches.

use std::fmt;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::ack::Unsettled;
use crate::cancel::Cancel;
use crate::ingest::Intake;

/// The two steps of a shutdown, for the parts that must stop at each.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Ingest stops admitting.
    pub drain: Cancel,
    /// The shutdown timeout passed: the sink stops retrying and fails what it holds.
    pub give_up: Cancel,
}

/// A termination signal the process received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
}

impl Signal {
    pub fn number(self) -> i32 {
        match self {
            Signal::Term => rustix::process::Signal::TERM.as_raw(),
            Signal::Int => rustix::process::Signal::INT.as_raw(),
        }
    }
}

/// Listens for SIGTERM and SIGINT; install early so no signal is missed.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Term,
            _ = self.int.recv() => Signal::Int,
        }
    }
}

/// What was left when the drain gave up: the batches not committed by the deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncommitted(pub Vec<Unsettled>);

/// How many batches the shutdown report names one by one.
const NAMED: usize = 8;

impl fmt::Display for Uncommitted {
    /// E.g. `26 messages (250 bytes) in 3 batches: batch 1 (seq 5..=14), ...`: the
    /// sequence numbers are those the 202 answers gave (`first_seq`, `last_seq`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let messages: u64 = self.0.iter().map(|b| b.messages).sum();
        let bytes: u64 = self.0.iter().map(|b| b.bytes).sum();
        write!(f, "{messages} messages ({bytes} bytes) in {} batches", self.0.len())?;
        for (i, batch) in self.0.iter().take(NAMED).enumerate() {
            let sep = if i == 0 { ":" } else { "," };
            write!(f, "{sep} batch {} (seq {}..={})", batch.batch, batch.first_seq, batch.last_seq())?;
        }
        if let (Some(first), Some(last)) = (self.0.get(NAMED), self.0.last()) {
            let more = self.0.len() - NAMED;
            write!(f, " and {more} more (seq {}..={})", first.first_seq, last.last_seq())?;
        }
        Ok(())
    }
}

/// Stops intake and waits until every accepted message is committed, at most
/// `timeout`. Returns what was not committed in time, and tells the sink to give up.
pub async fn drain(shutdown: &Shutdown, intake: &Intake, timeout: Duration) -> Result<(), Uncommitted> {
    shutdown.drain.cancel();
    let batcher = intake.batcher();
    let last = batcher.close();
    let ledger = batcher.ledger();
    tracing::info!(batches = last, buffered_bytes = intake.budget().used(), "draining: committing everything accepted");
    if tokio::time::timeout(timeout, ledger.wait_settled(last)).await.is_ok() {
        return Ok(());
    }
    let left = Uncommitted(ledger.unsettled());
    shutdown.give_up.cancel();
    Err(left)
}

/// How long, once everything is committed, the HTTP servers get to send the answers
/// of requests they have taken in. Those answers are ready; only a client still
/// sending a body (which will get 503) can keep a connection open this long.
pub const ANSWER_GRACE: Duration = Duration::from_secs(2);

/// How long, past the shutdown timeout, the sink gets to fail what it holds and the
/// servers to send those requests their 502.
pub const GIVE_UP_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(batch: u64, first_seq: u64) -> Unsettled {
        Unsettled { batch, messages: 10, bytes: 100, first_seq }
    }

    #[test]
    fn the_report_names_each_batch_by_its_sequence_numbers() {
        let left = Uncommitted(vec![batch(4, 1000), batch(5, 1010)]);
        assert_eq!(
            left.to_string(),
            "20 messages (200 bytes) in 2 batches: batch 4 (seq 1000..=1009), batch 5 (seq 1010..=1019)"
        );
        let many = Uncommitted((0..11).map(|i| batch(i + 1, 10 * i)).collect());
        let report = many.to_string();
        let start = "110 messages (1100 bytes) in 11 batches: batch 1 (seq 0..=9),";
        assert!(report.starts_with(start), "{report}");
        assert!(report.ends_with(", batch 8 (seq 70..=79) and 3 more (seq 80..=109)"), "{report}");
    }
}
