//! The memory budget: payload bytes accepted but not yet committed.
//!
//! Ingest reserves a request's bytes before enqueueing it; the bytes are released
//! when the sink's verdict on their batch arrives (`ack`). That is the whole of the
//! back-pressure story: a stalled sink stops releasing, ingest stops admitting.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use crate::metrics::METRICS;

#[derive(Debug)]
pub struct Budget {
    used: Mutex<u64>,
    limit: u64,
    freed: Notify,
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
    pub fn new(limit: u64) -> Self {
        METRICS.buffer_limit_bytes.set(limit as i64);
        Self { used: Mutex::new(0), limit, freed: Notify::new() }
    }

    /// Reserves `bytes`, waiting up to `wait` for room (`None` waits for as long as it
    /// takes, `Some(ZERO)` does not wait).
    pub async fn reserve(&self, bytes: u64, wait: Option<Duration>) -> Result<(), Refusal> {
        if bytes > self.limit {
            return Err(Refusal::LargerThanBudget);
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
        if *used + bytes > self.limit {
            return false;
        }
        *used += bytes;
        METRICS.buffer_bytes.set(*used as i64);
        true
    }

    pub fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut used = self.used.lock().unwrap();
        *used = used.saturating_sub(bytes);
        METRICS.buffer_bytes.set(*used as i64);
        drop(used);
        self.freed.notify_waiters();
    }

    pub fn used(&self) -> u64 {
        *self.used.lock().unwrap()
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Full enough that a typical request would wait: what `/readyz` reports.
    pub fn is_full(&self) -> bool {
        self.used() * 100 >= self.limit * 95
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
