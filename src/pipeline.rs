//! The pipeline an `Options` describes, assembled once for the binary and the
//! benches: budget → batcher → intake (through the disk spool, with `--spool-dir`),
//! the sink on its own thread, the age timer, the shutdown signals that stop them,
//! and the HTTP API's shared state in front. With a spool, what a previous run left
//! in it is handed to the batcher before anything new. The sources' checkpoints go
//! to the sink thread, which stamps the next ones into each commit.

use std::sync::Arc;

use crate::ack::{CommitHook, Ledger};
use crate::batch::{Batcher, Journal, Policy};
use crate::buffer::{charge, Budget};
use crate::config::Options;
use crate::encode::checkpoint::{Checkpoints, Tracked};
use crate::ingest::http::Api;
use crate::ingest::idempotency::Idempotency;
use crate::ingest::Intake;
use crate::message::Sequencer;
use crate::shutdown::Shutdown;
use crate::sink::reader::CommitReader;
use crate::sink::runner::{self, Extras, Gate};
use crate::sink::{Health, Sink, SinkContext};
use crate::spool::{Recovered, Spool, SpoolConfig, SpoolError};

pub struct Pipeline {
    pub intake: Arc<Intake>,
    pub health: Arc<Health>,
    pub shutdown: Shutdown,
    pub sink_name: String,
    pub sink_thread: std::thread::JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the sink thread: {0}")]
    SinkThread(#[source] std::io::Error),
    #[error("cannot open the spool: {0}")]
    Spool(#[from] SpoolError),
    #[error(
        "--source and --spool-dir cannot be used together: a source's broker keeps what is not committed \
         yet, and resumes from the checkpoint in the last commit; the spool is for what producers send"
    )]
    SourcesWithSpool,
}

impl Pipeline {
    /// Starts the sink thread and the age timer; call inside a tokio runtime.
    /// `sources` are the checkpoints of the `--source`s, as the sink holds them.
    pub fn start(options: &Options, sink: Box<dyn Sink>, sources: Vec<Tracked>) -> Result<Self, StartError> {
        if !sources.is_empty() && options.spool_dir.is_some() {
            return Err(StartError::SourcesWithSpool);
        }
        let spool = match &options.spool_dir {
            Some(dir) => {
                let config =
                    SpoolConfig { dir: dir.clone(), sync: options.spool_sync, max_bytes: options.max_spool_bytes };
                Some(Spool::open(&config)?)
            }
            None => None,
        };
        let sink_name = sink.describe();
        let health = Arc::new(Health::new(sink_name.clone()));
        let shutdown = Shutdown::default();
        let sink_ctx = SinkContext {
            give_up: shutdown.give_up.clone(),
            layout: options.layout,
            ..SinkContext::new(health.clone(), options.overwrite)
        };
        let budget = Arc::new(Budget::new(options.max_buffer_bytes));
        let ledger = Ledger::new(budget.clone());
        let (batches_tx, batches_rx) = crossbeam_channel::unbounded();
        let policy = Policy {
            max_bytes: options.max_batch_bytes,
            max_messages: options.max_batch_messages,
            max_age: options.max_batch_age,
        };
        let mut seq = Sequencer::starting_now();
        seq.skip_past(sink.seq_floor());
        let journal = spool.as_ref().map(|(spool, _)| spool.clone() as Arc<dyn Journal>);
        let gate = spool.as_ref().map(|(spool, _)| {
            let committed = spool.clone();
            ledger.on_commit(CommitHook(Box::new(move |seq| committed.committed(seq))));
            let synced = spool.clone();
            Gate(Box::new(move || synced.wait_synced()))
        });
        let batcher = Batcher::journaled(policy, seq, ledger, batches_tx, journal);
        let draining = shutdown.drain.clone();
        let mut intake =
            Intake::new(batcher.clone(), options.when_full, options.block_timeout, draining, health.clone());
        if let Some((spool, recovered)) = spool {
            replay(&batcher, &budget, recovered);
            intake = intake.spooling(spool);
        }
        let sink_thread =
            runner::start_with(sink, batches_rx, sink_ctx, Extras { gate, checkpoints: Checkpoints::new(sources) })
                .map_err(StartError::SinkThread)?;
        tokio::spawn(batcher.run_age_timer());
        Ok(Self { intake: Arc::new(intake), health, shutdown, sink_name, sink_thread })
    }

    /// The HTTP API's state over this pipeline; `token` is the bearer token required,
    /// `reader` reads the sink's commits back.
    pub fn api(&self, options: &Options, token: Option<String>, reader: Arc<dyn CommitReader>) -> Api {
        Api {
            intake: self.intake.clone(),
            health: self.health.clone(),
            sink: self.sink_name.clone(),
            layout: options.layout,
            max_message_bytes: options.max_message_bytes,
            max_request_bytes: options.max_request_bytes,
            token,
            header_timeout: options.header_timeout,
            body_timeout: options.body_timeout,
            max_connections: options.max_connections as usize,
            idempotency: Idempotency::new(options.idempotency_keys, options.idempotency_window),
            reader,
        }
    }
}

/// Hands the batcher what the spool held: the sealed batches as they were, then the
/// messages of the batch that was open. Their bytes count against the memory budget
/// even past its limit (new requests wait until they are committed).
fn replay(batcher: &Batcher, budget: &Budget, recovered: Recovered) {
    let cost = |messages: &[crate::message::Message]| {
        charge(messages.iter().map(|m| m.payload.len()).sum(), messages.len() as u64)
    };
    for batch in recovered.sealed {
        if let (Some(first), Some(last)) = (batch.first(), batch.last()) {
            tracing::debug!(
                first_seq = first.seq,
                last_seq = last.seq,
                messages = batch.len(),
                "replaying a sealed batch"
            );
        }
        budget.force(cost(&batch));
        batcher.replay_sealed(batch);
    }
    budget.force(cost(&recovered.open));
    batcher.restore(recovered.open);
}
