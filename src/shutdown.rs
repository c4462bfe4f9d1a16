//! The shutdown story: a signal (or the supervised command ending) starts it;
//! ingest stops admitting (503), the batcher seals its last batch, and the sink
//! thread commits everything accepted. If that takes longer than
//! `--shutdown-timeout`, the sink is told to give up and the exit code says so.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ingest::Intake;
use crate::sink::SinkContext;

/// A termination signal the process received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
}

impl Signal {
    pub fn number(self) -> i32 {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Int => libc::SIGINT,
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

/// What was left when the drain gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uncommitted {
    pub bytes: u64,
    pub batches: u64,
}

/// Stops intake and waits until every accepted message is committed, at most
/// `timeout`. Returns what was not committed in time.
pub async fn drain(intake: &Intake, sink: &SinkContext, timeout: Duration) -> Result<(), Uncommitted> {
    intake.start_draining();
    let batcher = intake.batcher();
    let last = batcher.close();
    let ledger = batcher.ledger();
    tracing::info!(
        batches = last,
        buffered_bytes = intake.budget().used(),
        "draining: committing everything accepted"
    );
    if tokio::time::timeout(timeout, ledger.wait_settled(last)).await.is_ok() {
        return Ok(());
    }
    sink.give_up.store(true, Ordering::Relaxed);
    let settled = *ledger.settled().borrow();
    Err(Uncommitted { bytes: intake.budget().used(), batches: last.saturating_sub(settled) })
}

/// How long, once everything is committed, the HTTP servers get to send the answers
/// of requests they have taken in. Those answers are ready; only a client still
/// sending a body (which will get 503) can keep a connection open this long.
pub const ANSWER_GRACE: Duration = Duration::from_secs(2);

/// How long, past the shutdown timeout, the sink gets to fail what it holds and the
/// servers to send those requests their 502.
pub const GIVE_UP_GRACE: Duration = Duration::from_secs(5);

/// Waits until the HTTP servers, told to stop, have answered and closed every
/// connection, or until `deadline`; then the process may exit.
pub async fn close_servers(servers: Vec<JoinHandle<()>>, deadline: Instant) {
    let all_closed = async {
        for server in servers {
            let _ = server.await;
        }
    };
    if tokio::time::timeout_at(deadline, all_closed).await.is_err() {
        tracing::info!("closing the HTTP connections still open at the deadline");
    }
}

/// Removes a Unix socket file when dropped, so a restart can bind the path again.
pub struct SocketFile(pub std::path::PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

