//! The memory budget: payload bytes accepted but not yet committed.
//!
//! Ingest reserves a request's bytes before enqueueing it; the bytes are released
//! when the sink's verdict on their batch arrives (`ack`). That is the whole of the
//! back-pressure story: a stalled sink stops releasing, ingest stops admitting.
//! The disk spool bounds its bytes with a [`Budget`] of its own (`--max-spool-bytes`).

use std::sync::Mutex;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::Notify;

use crate::metrics::METRICS;

/// What a message costs beyond its payload while it waits, at the least: the tar
/// header it becomes (512 bytes), and roughly its bookkeeping elsewhere. Charging it keeps memory
/// bounded for small messages too: 64 MiB of 100-byte messages would otherwise be
/// 670,000 messages holding several times their payload in overhead.
pub const MESSAGE_OVERHEAD_BYTES: u64 = 512;

/// What `messages` messages of `payload` bytes in all are charged against the budget.
pub fn charge(payload: u64, messages: u64) -> u64 {
    // Saturating: limits such as `--max-batch-messages` may be charged as a bound.
    payload.saturating_add(messages.saturating_mul(MESSAGE_OVERHEAD_BYTES))
}

#[derive(Debug)]
pub struct Budget {
    used: Mutex<u64>,
    limit: u64,
    /// Where `used` is exported.
    gauge: IntGauge,
    freed: Notify,
    /// The last reservation found no room: requests are waiting or refused.
    turned_away: std::sync::atomic::AtomicBool,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The budget stayed full for as long as the caller would wait.
    Full,
    /// The request alone is larger than the whole budget: it can never fit.
    LargerThanBudget,
}

impl Budget {
    /// The memory budget, exported as `spout_buffer_bytes` and `spout_buffer_limit_bytes`.
    pub fn new(limit: u64) -> Self {
        Self::with_gauges(limit, &METRICS.buffer_bytes, &METRICS.buffer_limit_bytes)
    }

    /// A budget exported on the gauges given.
    pub fn with_gauges(limit: u64, used: &IntGauge, limit_gauge: &IntGauge) -> Self {
        limit_gauge.set(limit as i64);
        used.set(0);
        Self { used: Mutex::new(0), limit, gauge: used.clone(), freed: Notify::new(), turned_away: Default::default() }
    }

    /// Charges `bytes` whether or not they fit: for what is held already when the
    /// sidecar starts (a spool to replay). New reservations wait until it drains.
    pub fn force(&self, bytes: u64) {
        let mut used = self.used.lock().unwrap();
        *used += bytes;
        self.gauge.set(*used as i64);
    }

    /// Reserves `bytes`, waiting up to `wait` for room (`None` waits for as long as it
    /// takes, `Some(ZERO)` does not wait).
    pub async fn reserve(&self, bytes: u64, wait: Option<Duration>) -> Result<(), Refusal> {
        if bytes > self.limit {
            return Err(Refusal::LargerThanBudget);
        }
        // The common case, room at once, takes one lock: registering with `freed`
        // (two more, on its waiter list) is only worth it when we may wait.
        if self.try_reserve(bytes) {
            return Ok(());
        }
        if wait == Some(Duration::ZERO) {
            return Err(Refusal::Full);
        }
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        loop {
            // Registered before the check so a release between check and await wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_reserve(bytes) {
                return Ok(());
            }
            match deadline {
                None => freed.await,
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, freed).await.is_err() {
                        return Err(Refusal::Full);
                    }
                }
            }
        }
    }

    fn try_reserve(&self, bytes: u64) -> bool {
        let mut used = self.used.lock().unwrap();
        let fits = *used + bytes <= self.limit;
        self.turned_away.store(!fits, std::sync::atomic::Ordering::Relaxed);
        if !fits {
            return false;
        }
        *used += bytes;
        self.gauge.set(*used as i64);
        true
    }

    pub fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut used = self.used.lock().unwrap();
        *used = used.saturating_sub(bytes);
        self.gauge.set(*used as i64);
        // Room was made: the next request decides whether the buffer is full.
        self.turned_away.store(false, std::sync::atomic::Ordering::Relaxed);
        drop(used);
        self.freed.notify_waiters();
    }

    pub fn used(&self) -> u64 {
        *self.used.lock().unwrap()
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Full: the last request found no room, or hardly any is left. What `/readyz`
    /// reports.
    pub fn is_full(&self) -> bool {
        self.turned_away.load(std::sync::atomic::Ordering::Relaxed) || self.used() * 100 >= self.limit * 95
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reserve_waits_for_release() {
        let budget = std::sync::Arc::new(Budget::new(10));
        budget.reserve(8, Some(Duration::ZERO)).await.unwrap();
        assert_eq!(budget.reserve(4, Some(Duration::ZERO)).await, Err(Refusal::Full));
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(4, None).await })
        };
        tokio::task::yield_now().await;
        budget.release(8);
        waiter.await.unwrap().unwrap();
        assert_eq!(budget.used(), 4);
        assert_eq!(budget.reserve(11, None).await, Err(Refusal::LargerThanBudget));
    }
}
