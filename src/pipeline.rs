//! The pipeline an `Options` describes, assembled once for the binary and the
//! benches: budget → batcher → intake, the sink on its own thread, the age timer,
//! the shutdown signals that stop them, and the HTTP API's shared state in front.

use std::sync::Arc;

use crate::ack::Ledger;
use crate::batch::{Batcher, Policy};
use crate::buffer::Budget;
use crate::config::Options;
use crate::ingest::http::Api;
use crate::ingest::idempotency::Idempotency;
use crate::ingest::Intake;
use crate::message::Sequencer;
use crate::shutdown::Shutdown;
use crate::sink::{runner, Health, Sink, SinkContext};

pub struct Pipeline {
    pub intake: Arc<Intake>,
    pub health: Arc<Health>,
    pub shutdown: Shutdown,
    pub sink_name: String,
    pub sink_thread: std::thread::JoinHandle<()>,
}

impl Pipeline {
    /// Starts the sink thread and the age timer; call inside a tokio runtime.
    pub fn start(options: &Options, sink: Box<dyn Sink>) -> std::io::Result<Self> {
        let sink_name = sink.describe();
        let health = Arc::new(Health::new(sink_name.clone()));
        let shutdown = Shutdown::default();
        let sink_ctx = SinkContext {
            give_up: shutdown.give_up.clone(),
            layout: options.layout,
            ..SinkContext::new(health.clone(), options.overwrite)
        };
        let ledger = Ledger::new(Arc::new(Budget::new(options.max_buffer_bytes)));
        let (batches_tx, batches_rx) = crossbeam_channel::unbounded();
        let policy = Policy {
            max_bytes: options.max_batch_bytes,
            max_messages: options.max_batch_messages,
            max_age: options.max_batch_age,
        };
        let batcher = Batcher::new(policy, Sequencer::starting_now(), ledger, batches_tx);
        let draining = shutdown.drain.clone();
        let intake =
            Arc::new(Intake::new(batcher.clone(), options.when_full, options.block_timeout, draining, health.clone()));
        let sink_thread = runner::start(sink, batches_rx, sink_ctx)?;
        tokio::spawn(batcher.run_age_timer());
        Ok(Self { intake, health, shutdown, sink_name, sink_thread })
    }

    /// The HTTP API's state over this pipeline; `token` is the bearer token required.
    pub fn api(&self, options: &Options, token: Option<String>) -> Api {
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
        }
    }
}
