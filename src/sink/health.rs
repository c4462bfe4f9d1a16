//! The sink's state as `/readyz`, `/status` and `spout_sink_state` see it.
//!
//! Sinks report every attempt; a line is logged only when the state changes, so an
//! outage of an hour is two log lines, not thousands.

use std::sync::Mutex;

use serde::Serialize;

use crate::metrics::METRICS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
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
        match self {
            SinkState::Up => "up",
            SinkState::Retrying => "retrying",
            SinkState::Down => "down",
        }
    }
}

#[derive(Debug)]
pub struct Health {
    sink: String,
    state: Mutex<(SinkState, Option<String>)>,
}

impl Health {
    pub fn new(sink: String) -> Self {
        let health = Self { sink, state: Mutex::new((SinkState::Up, None)) };
        health.export(SinkState::Up);
        health
    }

    pub fn state(&self) -> SinkState {
        self.state.lock().unwrap().0
    }

    /// The last error while not up.
    pub fn last_error(&self) -> Option<String> {
        self.state.lock().unwrap().1.clone()
    }

    pub fn up(&self) {
        let mut state = self.state.lock().unwrap();
        if state.0 != SinkState::Up {
            tracing::info!(sink = %self.sink, "sink is up again");
            *state = (SinkState::Up, None);
            self.export(SinkState::Up);
        }
    }

    /// Records a failed attempt: `kind` labels `spout_sink_errors_total`.
    pub fn failing(&self, next: SinkState, kind: &str, error: &dyn std::fmt::Display) {
        METRICS.sink_errors.with_label_values(&[kind]).inc();
        let mut state = self.state.lock().unwrap();
        if state.0 != next {
            tracing::warn!(sink = %self.sink, state = next.as_str(), "sink {}: {error}", kind);
            self.export(next);
        }
        *state = (next, Some(format!("{kind}: {error}")));
    }

    fn export(&self, current: SinkState) {
        for state in [SinkState::Up, SinkState::Retrying, SinkState::Down] {
            METRICS.sink_state.with_label_values(&[state.as_str()]).set((state == current) as i64);
        }
    }
}
