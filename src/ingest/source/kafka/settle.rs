//! The verdicts on what the partition readers admitted, taken in the order they
//! were admitted (which is commit order): each Ok moves the partition's committed
//! offset, and so its lag; the first failed batch ends the source. The sink thread
//! may already have stamped the failed batch's offsets into the checkpoint of the
//! next one, so going on could skip them; exiting lets the restart resume from the
//! last commit instead.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus::IntGauge;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::super::SourceError;
use crate::ack::VerdictReceiver;
use crate::metrics::METRICS;

/// One partition's end offset and committed offset: `spout_source_lag_messages`.
#[derive(Debug)]
pub struct Lag {
    end: AtomicI64,
    committed: AtomicI64,
    gauge: IntGauge,
}

impl Lag {
    pub fn new(stem: &str, partition: i32, committed: i64) -> Arc<Self> {
        let gauge = METRICS.source_lag.with_label_values(&[stem, &partition.to_string()]);
        Arc::new(Self { end: AtomicI64::new(committed), committed: AtomicI64::new(committed), gauge })
    }

    /// The partition's end offset (its high watermark) as a fetch reported it.
    pub fn end(&self, end: i64) {
        self.end.store(end, Ordering::Relaxed);
        self.show();
    }

    fn committed(&self, next: i64) {
        self.committed.fetch_max(next, Ordering::Relaxed);
        self.show();
    }

    fn show(&self) {
        let lag = self.end.load(Ordering::Relaxed) - self.committed.load(Ordering::Relaxed);
        self.gauge.set(lag.max(0));
    }
}

/// Admitted records waiting for their batch's verdict.
pub struct Pending {
    pub lag: Arc<Lag>,
    pub partition: i32,
    /// The offset after the last record admitted.
    pub next: i64,
    pub verdict: VerdictReceiver,
}

/// Where readers hand what they admitted.
#[derive(Clone)]
pub struct Settler(mpsc::UnboundedSender<Pending>);

impl Settler {
    /// Starts taking verdicts; the task ends once every `Settler` is dropped and
    /// every verdict came, or at the first failed batch. The channel needs no bound
    /// of its own: what is in it holds the memory budget until its verdict comes.
    pub fn start(uri: String) -> (Self, JoinHandle<Result<(), SourceError>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), tokio::spawn(take(rx, uri)))
    }

    pub fn admitted(&self, pending: Pending) {
        // The taker is gone only after a failed batch, when the source is ending.
        let _ = self.0.send(pending);
    }
}

async fn take(mut rx: mpsc::UnboundedReceiver<Pending>, uri: String) -> Result<(), SourceError> {
    while let Some(pending) = rx.recv().await {
        let failed = match pending.verdict.await {
            Ok(Ok(_)) => {
                pending.lag.committed(pending.next);
                continue;
            }
            Ok(Err(error)) => error.0,
            Err(_) => "its verdict was dropped".to_owned(),
        };
        let message = format!(
            "the batch holding partition {} up to offset {} failed ({failed}); exiting, so that a restart \
             resumes from the last commit",
            pending.partition,
            pending.next - 1
        );
        return Err(SourceError { uri, message });
    }
    Ok(())
}
