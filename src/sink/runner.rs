//! The sink thread: takes sealed batches in order, lays each out as files (with the
//! checkpoints of the sources whose messages it holds), hands it to the sink and
//! settles what is in flight, probing the sink while idle. Blocking
//! writes happen here, never on the async runtime. A batch waiting on disk (the spool
//! let its messages go) is read back here, once at most [`AHEAD_FROM_DISK`] batches
//! are in flight, so a lagging sink does not pull the backlog back into memory.
//!
//! The sink's threads are watched ([`spawn_watched`]): a panic marks the sink dead
//! (`/readyz` and `/healthz` 503, `spout_thread_panics_total`, one error line), the
//! batches the thread held fail as their acknowledgements are dropped, so
//! `wait=commit` callers hear, and ingest refuses new messages rather than accept
//! what nothing will commit.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::{Health, Sink, SinkContext};
use crate::batch::Batch;
use crate::encode::checkpoint::Checkpoints;

/// Batches in flight past which a batch waiting on disk is not read back yet.
pub const AHEAD_FROM_DISK: usize = 2;

/// Starts the sink thread; it ends once the batcher closes and every batch settled
/// (or the context gives up).
pub fn start(sink: Box<dyn Sink>, batches: Receiver<Batch>, ctx: SinkContext) -> std::io::Result<JoinHandle<()>> {
    start_with(sink, batches, ctx, Extras::default())
}

/// What the sink thread calls before it commits each batch, and waits for: the disk
/// spool making the batch's seal durable, so that the batch is rebuilt exactly as it
/// was committed should the machine crash.
pub struct Gate(pub Box<dyn Fn() + Send>);

/// What the pipeline may add to the sink thread.
#[derive(Default)]
pub struct Extras {
    /// Called before each commit (the disk spool).
    pub gate: Option<Gate>,
    /// The sources' checkpoints, stamped into each commit.
    pub checkpoints: Checkpoints,
}

/// Like [`start`], with `extras`.
pub fn start_with(
    sink: Box<dyn Sink>,
    batches: Receiver<Batch>,
    ctx: SinkContext,
    extras: Extras,
) -> std::io::Result<JoinHandle<()>> {
    let health = ctx.health.clone();
    spawn_watched("sink", health, move || run(sink, batches, ctx, extras))
}

fn run(mut sink: Box<dyn Sink>, batches: Receiver<Batch>, ctx: SinkContext, extras: Extras) {
    let Extras { gate, mut checkpoints } = extras;
    const POLL: Duration = Duration::from_millis(2);
    const PROBE_EVERY: Duration = Duration::from_millis(250);
    let mut fault = InjectedPanic::for_thread("sink");
    let mut in_flight = 0;
    // A batch on disk taken while too many were in flight, to read back later.
    let mut waiting: Option<Batch> = None;
    sink.probe(&ctx);
    loop {
        let next = if let Some(batch) = waiting.take() {
            Ok(batch)
        } else if in_flight > 0 {
            batches.try_recv().map_err(|e| match e {
                TryRecvError::Empty => RecvTimeoutError::Timeout,
                TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            })
        } else {
            batches.recv_timeout(PROBE_EVERY)
        };
        // With nothing new to submit, the sink does the waiting: it can wake as soon
        // as its pipe has room instead of when a fixed sleep ends.
        let wait = match next {
            Ok(batch) if batch.on_disk() && in_flight >= AHEAD_FROM_DISK => {
                waiting = Some(batch);
                POLL
            }
            Ok(batch) => {
                fault.count_batch();
                if let Some(gate) = &gate {
                    (gate.0)();
                }
                if let Some(batch) = batch.load() {
                    checkpoints.forget(&batch.ack.ledger().take_failed());
                    let stamped = checkpoints.stamp(&batch.messages);
                    let mut commit = ctx.layout.apply(batch);
                    commit.files.extend(stamped);
                    sink.submit(commit, &ctx);
                }
                Duration::ZERO
            }
            Err(RecvTimeoutError::Timeout) if in_flight == 0 => {
                sink.probe(&ctx);
                Duration::ZERO
            }
            Err(RecvTimeoutError::Timeout) => POLL,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        in_flight = sink.settle(wait, &ctx);
    }
    while sink.settle(Duration::from_millis(50), &ctx) > 0 && !ctx.giving_up() {}
}

/// Spawns a thread named `name` whose panic is reported through `health` (see the
/// module comment) instead of passing unnoticed.
///
/// The report is made by a panic hook, which runs on the panicking thread before it
/// unwinds: so the sink is known dead before the batches it held fail, and a
/// `wait=commit` caller that hears 502 finds `/healthz` already saying why.
pub fn spawn_watched(
    name: &'static str,
    health: Arc<Health>,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    install_panic_reporter();
    std::thread::Builder::new().name(name.into()).spawn(move || {
        WATCHED.set(Some((name, health)));
        // The hook has reported the panic; unwinding (which fails the batches) ends here.
        let _ = panic::catch_unwind(AssertUnwindSafe(body));
    })
}

thread_local! {
    /// The watched thread running here, if any: its name and where to report it.
    static WATCHED: std::cell::RefCell<Option<(&'static str, Arc<Health>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Chains a hook in front of the current panic hook that reports a watched thread's
/// panic to its health, once per process.
fn install_panic_reporter() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            previous(info);
            let watched = WATCHED.with_borrow(|watched| watched.clone());
            if let Some((name, health)) = watched {
                let payload = info.payload();
                let why = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                health.died(name, &why);
            }
        }));
    });
}

/// A fault for tests: `SPOUT_TEST_PANIC=THREAD:N` makes the thread named THREAD
/// panic as it takes its Nth batch, so a test can check from outside what a dead
/// thread looks like. Unset, it costs one comparison per batch.
pub struct InjectedPanic {
    batches_left: Option<u64>,
}

impl InjectedPanic {
    pub fn for_thread(thread: &str) -> Self {
        let setting = std::env::var("SPOUT_TEST_PANIC").unwrap_or_default();
        let batches_left =
            setting.split_once(':').filter(|(name, _)| *name == thread).and_then(|(_, n)| n.parse::<u64>().ok());
        Self { batches_left }
    }

    pub fn count_batch(&mut self) {
        if let Some(left) = &mut self.batches_left {
            *left = left.saturating_sub(1);
            if *left == 0 {
                panic!("SPOUT_TEST_PANIC asked this thread to panic");
            }
        }
    }
}
