//! The one way the sidecar tells its parts to stop: a [`Cancel`] is cancelled once
//! and stays so, and both async tasks and blocking threads can wait on it without
//! polling a flag.
//!
//! Async code waits on the wrapped `CancellationToken`; the sink thread, which must
//! not run an async runtime of its own, waits on a condition variable signalled by
//! the same `cancel`.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    token: CancellationToken,
    cancelled: Mutex<bool>,
    changed: Condvar,
}

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        *self.0.cancelled.lock().unwrap() = true;
        self.0.changed.notify_all();
        self.0.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.token.is_cancelled()
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        self.0.token.cancelled().await
    }

    /// Blocks the thread until cancelled or `timeout` has passed; true if cancelled.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let cancelled = self.0.cancelled.lock().unwrap();
        let (cancelled, _) = self.0.changed.wait_timeout_while(cancelled, timeout, |done| !*done).unwrap();
        *cancelled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_thread_wakes_when_cancelled() {
        let cancel = Cancel::new();
        assert!(!cancel.wait_timeout(Duration::from_millis(1)));
        let waiter = {
            let cancel = cancel.clone();
            std::thread::spawn(move || cancel.wait_timeout(Duration::from_secs(60)))
        };
        cancel.cancel();
        assert!(waiter.join().unwrap(), "woken by cancel, not by the 60 s timeout");
        assert!(cancel.is_cancelled());
    }

    #[tokio::test]
    async fn async_waiters_resolve_once_cancelled() {
        let cancel = Cancel::new();
        let waiter = tokio::spawn({
            let cancel = cancel.clone();
            async move { cancel.cancelled().await }
        });
        cancel.cancel();
        waiter.await.unwrap();
    }
}
