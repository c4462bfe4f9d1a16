//! The `fifo:` sink against a real named pipe and a reader that behaves as
//! Pachyderm's: batches made by the real Intake, Batcher, Ledger and Budget, the
//! real sink thread (`sink::runner`), readers that keep the pipe open, reopen it per
//! archive, die inside an archive, stall, or turn up late. Every message must be
//! committed exactly once with its bytes unchanged.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustix::fs::{mkfifoat, CWD};
use spout_sidecar::ack::Ledger;
use spout_sidecar::batch::{Batcher, Policy};
use spout_sidecar::buffer::Budget;
use spout_sidecar::cancel::Cancel;
use spout_sidecar::ingest::{AdmitOptions, Answer, FullBudget, Intake, Refused, Transport, WhenFull};
use spout_sidecar::message::{Incoming, Payload, Sequencer};
use spout_sidecar::sink::fifo::FifoSink;
use spout_sidecar::sink::{runner, Health, SinkContext, SinkState};

use crate::support::pachyderm_reader::{is_full, Commit, Mode, PachydermReader};

/// A sidecar core writing into a fresh FIFO, driven from the test thread.
struct Spout {
    _dir: tempfile::TempDir,
    path: PathBuf,
    intake: Intake,
    health: Arc<Health>,
    give_up: Cancel,
    runtime: tokio::runtime::Runtime,
    sink_thread: Option<JoinHandle<()>>,
}

impl Spout {
    fn new(max_messages: u64, budget: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        mkfifo(&path);
        let ledger = Ledger::new(Arc::new(Budget::new(budget)));
        let (batches_tx, batches) = crossbeam_channel::unbounded();
        let policy = Policy { max_bytes: 256 << 10, max_messages, max_age: Duration::from_millis(20) };
        let batcher = Batcher::new(policy, Sequencer::starting_now(), ledger, batches_tx);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        runtime.spawn(batcher.clone().run_age_timer());
        let health = Arc::new(Health::new(format!("fifo:{}", path.display())));
        let ctx = SinkContext::new(health.clone(), false);
        let give_up = ctx.give_up.clone();
        let sink = Box::new(FifoSink::new(path.clone()));
        let intake = Intake::new(batcher, WhenFull::Reject, Duration::ZERO, Cancel::new(), health.clone());
        let sink_thread = runner::start(sink, batches, ctx).expect("the sink thread");
        Self { _dir: dir, path, intake, health, give_up, runtime, sink_thread: Some(sink_thread) }
    }

    /// Admits one request, waiting for room in the budget while the reader makes some.
    fn send(&self, messages: Vec<Incoming>) {
        let how =
            AdmitOptions { transport: Transport::Http, answer: Answer::Accepted, when_full: FullBudget::WaitForRoom };
        let admit = self.intake.admit(messages, how);
        let admitted = self.runtime.block_on(async { tokio::time::timeout(PATIENCE, admit).await });
        admitted.expect("the budget stayed full: nothing consumes the pipe").unwrap();
    }

    /// Admits one request or says why not, without waiting.
    fn try_send(&self, messages: Vec<Incoming>) -> Result<(), Refused> {
        let how =
            AdmitOptions { transport: Transport::Http, answer: Answer::Accepted, when_full: FullBudget::AsConfigured };
        self.runtime.block_on(self.intake.admit(messages, how)).map(drop)
    }

    fn budget(&self) -> &Budget {
        self.intake.budget()
    }

    fn batches_settled(&self) -> u64 {
        *self.intake.batcher().ledger().settled().borrow()
    }

    /// Seals the last batch and waits until the sink thread has settled everything
    /// (or, when nothing consumes the pipe any more, tells it to give up).
    fn finish(&mut self) {
        self.intake.batcher().close();
        let sink_thread = self.sink_thread.take().unwrap();
        let deadline = Instant::now() + PATIENCE;
        while !sink_thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.give_up.cancel();
        sink_thread.join().unwrap();
        let failed: Vec<_> = self.intake.batcher().ledger().recent().into_iter().filter_map(|c| c.error).collect();
        assert!(failed.is_empty(), "failed commits: {failed:?}");
        assert_eq!(self.budget().used(), 0, "every batch's bytes were released");
    }

    fn wait_for_health(&self, wanted: impl Fn(SinkState) -> bool) {
        wait_until(|| wanted(self.health.state()), "the sink's health to change");
    }
}

fn mkfifo(path: &Path) {
    mkfifoat(CWD, path, rustix::fs::Mode::from_raw_mode(0o600))
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}

/// How long a test waits for progress before it calls the sink stuck.
const PATIENCE: Duration = Duration::from_secs(60);

fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Message `i`: its name (a few over 100 bytes), and bytes that differ per message,
/// some empty, some in two slices as a body split across reads would be.
fn message(i: usize) -> (String, Vec<u8>) {
    let name = if i.is_multiple_of(97) { format!("long/{}/{i:07}", "n".repeat(120)) } else { format!("m/{i:07}") };
    // One in 500 is 64-200 KiB, large enough to be lent to the pipe rather than copied.
    let repeats = if i % 500 == 499 { 5_000 + i % 10_000 } else { 1 + i % 40 };
    let data = if i.is_multiple_of(50) { Vec::new() } else { format!("message {i};").repeat(repeats).into_bytes() };
    (name, data)
}

fn incoming(i: usize) -> Incoming {
    let (name, data) = message(i);
    let data = Bytes::from(data);
    let payload = if i.is_multiple_of(3) && data.len() > 1 {
        Payload::from(vec![data.slice(..data.len() / 2), data.slice(data.len() / 2..)])
    } else {
        Payload::from(data)
    };
    Incoming { name: Some(name), payload, line: false, origin: None }
}

/// Requests of 1 to 16 messages covering `range`.
fn requests(range: std::ops::Range<usize>) -> impl Iterator<Item = Vec<Incoming>> {
    let mut next = range.start;
    std::iter::from_fn(move || {
        if next >= range.end {
            return None;
        }
        let end = (next + 1 + next % 16).min(range.end);
        let request = (next..end).map(incoming).collect();
        next = end;
        Some(request)
    })
}

/// Asserts that the readers committed messages `0..count` exactly once each, bytes unchanged.
fn assert_exactly_once(commits: &[Commit], count: usize) {
    let mut seen = BTreeMap::new();
    for (name, data) in commits.iter().flatten() {
        assert!(seen.insert(name.clone(), data.clone()).is_none(), "{name} committed twice");
    }
    assert_eq!(seen.len(), count, "messages committed");
    for i in 0..count {
        let (name, data) = message(i);
        assert!(seen.get(&name) == Some(&data), "{name} is missing or its bytes changed");
    }
}

/// 5,000 messages through one reader in `mode`: one archive per batch, each message once.
fn one_archive_per_batch(mode: Mode) {
    let mut spout = Spout::new(64, 8 << 20);
    let reader = PachydermReader::start(&spout.path, mode);
    requests(0..5_000).for_each(|r| spout.send(r));
    spout.finish();
    let commits = reader.stop();
    assert_eq!(commits.len() as u64, spout.batches_settled(), "one archive per batch");
    assert_exactly_once(&commits, 5_000);
}

#[test]
fn keep_open_reader_commits_every_message_once() {
    one_archive_per_batch(Mode::KeepOpen);
}

#[test]
fn reader_that_reopens_the_pipe_per_archive_commits_every_message_once() {
    one_archive_per_batch(Mode::ReopenEachArchive);
}

#[test]
fn reader_leaving_between_archives_hands_the_pipe_to_the_next() {
    let mut spout = Spout::new(16, 4 << 20);
    let first = PachydermReader::leaving_after(&spout.path, 20);
    let (before, after) = std::thread::scope(|scope| {
        scope.spawn(|| requests(0..5_000).for_each(|r| spout.send(r)));
        let before = first.join();
        // Once the sink reports the reader gone (after its grace period), it has
        // noticed the reader left between archives; what it wrote past the last
        // archive read stays in the pipe for the next reader.
        spout.wait_for_health(|state| state == SinkState::Down);
        (before, PachydermReader::start(&spout.path, Mode::KeepOpen))
    });
    assert_eq!(before.len(), 20);
    spout.finish();
    let mut commits = before;
    commits.extend(after.stop());
    assert_exactly_once(&commits, 5_000);
}

#[test]
fn reader_killed_mid_archive_while_100k_messages_flow() {
    const MESSAGES: usize = 100_000;
    let started = Instant::now();
    let mut spout = Spout::new(16, 4 << 20);
    let doomed = PachydermReader::dying_after(&spout.path, 20 << 20);
    let (before, after) = std::thread::scope(|scope| {
        scope.spawn(|| requests(0..MESSAGES).for_each(|r| spout.send(r)));
        let before = doomed.join();
        // The sink closes the pipe before it reports the reader gone, so a reader
        // started now cannot join the old pipe and start inside an archive.
        spout.wait_for_health(|state| state != SinkState::Up);
        (before, PachydermReader::start(&spout.path, Mode::KeepOpen))
    });
    assert!(!before.is_empty(), "the first reader committed some archives before it died");
    spout.finish();
    let mut commits = before;
    commits.extend(after.stop());
    assert_exactly_once(&commits, MESSAGES);
    eprintln!("100,000 messages, reader killed mid-archive: {:.2?}", started.elapsed());
}

#[test]
fn stalled_reader_fills_the_budget_and_acks_stop() {
    const BUDGET: u64 = 1 << 20;
    let mut spout = Spout::new(8, BUDGET);
    let reader = PachydermReader::start_paused(&spout.path, Mode::KeepOpen);
    let mut sent = 0;
    let refused_request = loop {
        let request: Vec<Incoming> = (sent..sent + 8).map(incoming).collect();
        let bytes = spout_sidecar::buffer::charge(request.iter().map(|m| m.payload.len()).sum(), 8);
        match spout.try_send(request) {
            Ok(()) => sent += 8,
            Err(Refused::Overloaded) => break bytes,
            Err(other) => panic!("refused as {other:?}"),
        }
    };
    assert!(spout.budget().used() + refused_request > BUDGET, "the budget is full");
    assert!(spout.budget().used() <= BUDGET);
    // The pipe's buffer holds archives the reader has not read: none may count as
    // committed. Once the pipe is full the sink has written all it could, and has
    // looked at what was consumed after each write.
    wait_until(|| is_full(&spout.path), "the sink to fill the pipe");
    assert_eq!(spout.batches_settled(), 0, "no archive was consumed, so none is acknowledged");
    assert_eq!(spout.try_send((sent..sent + 8).map(incoming).collect()), Err(Refused::Overloaded));
    assert_eq!(reader.bytes_read(), 0);

    reader.resume();
    let total = sent + 2_000;
    requests(sent..total).for_each(|r| spout.send(r));
    spout.finish();
    assert_exactly_once(&reader.stop(), total);
}

#[test]
fn no_reader_at_start_then_one_appears() {
    let mut spout = Spout::new(64, 8 << 20);
    requests(0..500).for_each(|r| spout.send(r));
    spout.wait_for_health(|state| state == SinkState::Down);
    assert_eq!(spout.batches_settled(), 0);
    let reader = PachydermReader::start(&spout.path, Mode::KeepOpen);
    requests(500..1_000).for_each(|r| spout.send(r));
    spout.finish();
    assert_exactly_once(&reader.stop(), 1_000);
    assert_eq!(spout.health.state(), SinkState::Up);
}

#[test]
fn the_sink_grows_the_pipe_so_a_large_message_needs_few_writes() {
    let mut spout = Spout::new(64, 8 << 20);
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(&spout.path)
        .unwrap();
    // A new pipe holds 64 KiB (16 pages) unless its writer asks for more; the sink
    // asks as it opens the pipe, which it retries with a backoff until a reader is there.
    let grown = || rustix::pipe::fcntl_getpipe_size(&reader).unwrap() == 1 << 20;
    wait_until(grown, "the sink to grow the pipe to 1 MiB");
    spout.finish();
}
