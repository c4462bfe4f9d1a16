//! A sidecar pipeline assembled from the library, as the binary assembles it:
//! intake → batcher (with its age timer) → the sink thread (`sink::runner`) → a
//! `pfs://` sink; requests are admitted with `wait=commit` to read their verdicts.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use spout_sidecar::ack::{Ledger, Verdict};
use spout_sidecar::batch::{Batcher, Policy};
use spout_sidecar::buffer::Budget;
use spout_sidecar::cancel::Cancel;
use spout_sidecar::encode::Layout;
use spout_sidecar::ingest::{AdmitOptions, Admitted, Answer, FullBudget, Intake, Transport, WhenFull};
use spout_sidecar::message::{Incoming, Sequencer};
use spout_sidecar::sink::{runner, Health, SinkContext, SinkSettings, SinkSpec};

pub struct Setup {
    pub uri: String,
    pub token_file: Option<PathBuf>,
    pub overwrite: bool,
    pub layout: Layout,
    pub policy: Policy,
    pub budget: u64,
}

impl Setup {
    pub fn new(uri: String) -> Self {
        Self {
            uri,
            token_file: None,
            overwrite: false,
            layout: Layout::Message,
            policy: Policy { max_bytes: 64 << 20, max_messages: 1, max_age: Duration::from_millis(20) },
            budget: 256 << 20,
        }
    }
}

pub struct Pipeline {
    pub intake: Arc<Intake>,
    pub health: Arc<Health>,
    pub ctx: SinkContext,
    draining: Cancel,
    pub rt: tokio::runtime::Runtime,
    sink_thread: Option<JoinHandle<()>>,
}

impl Pipeline {
    pub fn start(setup: Setup) -> Self {
        capture_logs();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (batches_tx, batches) = crossbeam_channel::unbounded();
        let ledger = Ledger::new(Arc::new(Budget::new(setup.budget)));
        let batcher = Batcher::new(setup.policy, Sequencer::starting_at(1), ledger, batches_tx);
        rt.spawn(batcher.clone().run_age_timer());
        let spec: SinkSpec = setup.uri.parse().expect("a valid sink URI");
        let settings = SinkSettings { pachd_token_file: setup.token_file, ..SinkSettings::default() };
        let sink = spec.open(&settings).expect("opening the sink");
        let health = Arc::new(Health::new(sink.describe()));
        let draining = Cancel::new();
        let intake =
            Arc::new(Intake::new(batcher, WhenFull::Block, Duration::from_secs(60), draining.clone(), health.clone()));
        let ctx = SinkContext { layout: setup.layout, ..SinkContext::new(health.clone(), setup.overwrite) };
        let sink_thread = runner::start(sink, batches, ctx.clone()).expect("the sink thread");
        Self { intake, health, ctx, draining, rt, sink_thread: Some(sink_thread) }
    }

    /// Admits one request's messages, to wait for their commit later.
    pub fn send(&self, messages: Vec<Incoming>) -> Admitted {
        let how =
            AdmitOptions { transport: Transport::Http, answer: Answer::Committed, when_full: FullBudget::WaitForRoom };
        self.rt.block_on(self.intake.admit(messages, how)).expect("admitted")
    }

    /// The commit's verdict; a batch unsettled after two minutes is a hung sink.
    pub fn verdict(&self, admitted: Admitted) -> Verdict {
        let verdict = admitted.verdict.expect("admitted with wait=commit");
        match self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), verdict).await }) {
            Ok(settled) => settled.expect("the batch was settled"),
            Err(_) => panic!("no verdict after two minutes\nlog:\n{}", logs()),
        }
    }

    /// What the shutdown timeout does: the sink stops retrying and fails what is left.
    pub fn give_up(&self) {
        self.ctx.give_up.cancel();
    }

    /// Drains: commits what is accepted, then ends the sink thread.
    pub fn close(mut self) {
        self.draining.cancel();
        self.intake.batcher().close();
        self.sink_thread.take().unwrap().join().expect("the sink thread");
    }
}

pub fn message(name: Option<&str>, bytes: impl Into<Bytes>) -> Incoming {
    Incoming { name: name.map(str::to_owned), payload: bytes.into().into(), line: false, origin: None }
}

/// Polls `done` until it holds, failing the test after a minute (a hang, not a
/// slow machine).
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}\nlog:\n{}", logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

/// Sends the sidecar's log lines to a buffer that [`logs`] reads.
///
/// The subscriber is the process's: every test that runs the library in this
/// process logs into the same buffer, concurrently. A test may only look for lines
/// that name something of its own (a temporary path, a repo), never count lines or
/// expect a line to be absent.
fn capture_logs() {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only log subscriber");
        buffer
    });
}

pub fn logs() -> String {
    LOGS.get().map(|b| String::from_utf8_lossy(&b.lock().unwrap()).into_owned()).unwrap_or_default()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
