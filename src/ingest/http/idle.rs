//! `--header-timeout` for HTTP/1.1 connections: a connection that has had nothing to
//! do for that long, since it opened or since its last answer went out, is closed.
//! A client that sends nothing, stalls in the TLS handshake or trickles a header
//! that never ends thus gives its `--max-connections` slot back.
//!
//! hyper's own header timer would do the same for HTTP/1.1, but it sets and drops a
//! timer for every request, each time under the timer driver's lock: on the
//! single-POST path a measurable share of a request's cost. Here each connection
//! has one timer, which wakes once per `--header-timeout` at most, and a request
//! costs two atomic updates and a clock read.
//!
//! An HTTP/2 connection is only held to it until its first stream: idle HTTP/2
//! connections stay open for their clients to reuse, as they always have.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, SizeHint};

/// When a connection opened, what it is doing, and since when it has been idle.
#[derive(Debug)]
pub struct Idleness {
    opened: Instant,
    /// Requests being served, their answers included until written.
    busy: AtomicUsize,
    /// When the connection last became idle, in nanoseconds since `opened`.
    idle_since: AtomicU64,
    /// Whether an HTTP/2 stream came: see the module comment.
    http2: AtomicBool,
}

impl Idleness {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            http2: AtomicBool::new(false),
        })
    }

    /// Marks a request as being served until the returned guard is dropped (with
    /// the answer's body, once written).
    pub fn serving(self: &Arc<Self>, http2: bool) -> Busy {
        if http2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Returns once the connection has been idle for `timeout`; never, once it has
    /// served an HTTP/2 stream.
    pub async fn expired(&self, timeout: Duration) {
        let mut deadline = self.opened + timeout;
        loop {
            tokio::time::sleep_until(deadline.into()).await;
            if self.http2.load(Ordering::Relaxed) {
                return std::future::pending().await;
            }
            let now = Instant::now();
            deadline = if self.busy.load(Ordering::Acquire) > 0 {
                now + timeout
            } else {
                self.opened + Duration::from_nanos(self.idle_since.load(Ordering::Acquire)) + timeout
            };
            if deadline <= now {
                return;
            }
        }
    }
}

/// A request being served; see [`Idleness::serving`].
#[derive(Debug)]
pub struct Busy(Arc<Idleness>);

impl Drop for Busy {
    fn drop(&mut self) {
        let idleness = &self.0;
        let since = u64::try_from(idleness.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        idleness.idle_since.fetch_max(since, Ordering::Release);
        idleness.busy.fetch_sub(1, Ordering::Release);
    }
}

/// An answer's body that keeps its request counted as served until it is written.
pub struct Answering<B> {
    body: B,
    /// Dropped with the body, once hyper has written it (or given up).
    _busy: Busy,
}

impl<B> Answering<B> {
    pub fn new(body: B, busy: Busy) -> Self {
        Self { body, _busy: busy }
    }
}

impl<B: Body + Unpin> Body for Answering<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn idle_time_counts_from_the_last_answer_and_not_while_serving() {
        let idleness = Idleness::new();
        let expired = idleness.expired(TIMEOUT);
        tokio::pin!(expired);
        let busy = idleness.serving(false);
        // Served for longer than the timeout: not idle meanwhile.
        assert!(tokio::time::timeout(TIMEOUT * 3, expired.as_mut()).await.is_err(), "closed while serving");
        drop(busy);
        let answered = Instant::now();
        tokio::time::timeout(TIMEOUT * 10, expired.as_mut()).await.expect("closed once idle");
        let idle = answered.elapsed();
        assert!(idle >= TIMEOUT, "closed after {idle:?} idle, before the timeout");
    }

    #[tokio::test]
    async fn a_connection_that_never_asks_expires_from_its_opening() {
        let idleness = Idleness::new();
        tokio::time::timeout(TIMEOUT * 10, idleness.expired(TIMEOUT)).await.expect("closed");
        assert!(idleness.opened.elapsed() >= TIMEOUT);
    }

    #[tokio::test]
    async fn an_http2_connection_is_left_open_after_its_first_stream() {
        let idleness = Idleness::new();
        drop(idleness.serving(true));
        assert!(tokio::time::timeout(TIMEOUT * 3, idleness.expired(TIMEOUT)).await.is_err());
    }
}
