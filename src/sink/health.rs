//! The sink's state as `/readyz`, `/status` and `spout_sink_state` see it.
//!
//! Sinks report every attempt; a line is logged only when the state changes, so an
//! outage of an hour is two log lines, not thousands. A sink whose thread died is
//! down for good: nothing it reports afterwards brings it back.

use std::sync::Mutex;

use serde::Serialize;
use strum::VariantArray;

use crate::metrics::METRICS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::IntoStaticStr, strum::VariantArray)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum SinkState {
    /// Commits go through.
    Up,
    /// The last attempt failed; retrying.
    Retrying,
    /// Not reachable at all (no reader on the pipe, server down).
    Down,
}

impl SinkState {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug)]
pub struct Health {
    sink: String,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    current: SinkState,
    last_error: Option<String>,
    /// A thread of the sink died: it stays down.
    dead: bool,
}

impl Health {
    pub fn new(sink: String) -> Self {
        let health = Self { sink, state: Mutex::new(State { current: SinkState::Up, last_error: None, dead: false }) };
        health.export(SinkState::Up);
        health
    }

    pub fn state(&self) -> SinkState {
        self.state.lock().unwrap().current
    }

    /// The last error while not up.
    pub fn last_error(&self) -> Option<String> {
        self.state.lock().unwrap().last_error.clone()
    }

    /// A thread of the sink died; nothing will commit until the sidecar restarts.
    pub fn is_dead(&self) -> bool {
        self.state.lock().unwrap().dead
    }

    pub fn up(&self) {
        let mut state = self.state.lock().unwrap();
        if state.current != SinkState::Up && !state.dead {
            tracing::info!(sink = %self.sink, "sink is up again");
            *state = State { current: SinkState::Up, last_error: None, dead: false };
            self.export(SinkState::Up);
        }
    }

    /// Records a failed attempt: `kind` labels `spout_sink_errors_total`.
    pub fn failing(&self, next: SinkState, kind: &str, error: &dyn std::fmt::Display) {
        METRICS.sink_errors.with_label_values(&[kind]).inc();
        let mut state = self.state.lock().unwrap();
        if state.dead {
            return;
        }
        if state.current != next {
            tracing::warn!(sink = %self.sink, state = next.as_str(), "sink {}: {error}", kind);
            self.export(next);
        }
        state.current = next;
        state.last_error = Some(format!("{kind}: {error}"));
    }

    /// Records that the sink's thread `thread` panicked with `why`: the sink is down
    /// for good (see `runner`).
    pub fn died(&self, thread: &str, why: &str) {
        METRICS.thread_panics.with_label_values(&[thread]).inc();
        tracing::error!(
            sink = %self.sink,
            "the {thread} thread panicked ({why}); the batches it held failed, and no message is \
             accepted until the sidecar is restarted"
        );
        let mut state = self.state.lock().unwrap();
        *state = State {
            current: SinkState::Down,
            last_error: Some(format!("the {thread} thread died: {why}")),
            dead: true,
        };
        self.export(SinkState::Down);
    }

    fn export(&self, current: SinkState) {
        for &state in SinkState::VARIANTS {
            METRICS.sink_state.with_label_values(&[state.as_str()]).set((state == current) as i64);
        }
    }
}
