//! Whether the source reaches its brokers: `spout_source_up`, one log line each time
//! that changes (not one per failed attempt), and the pause between attempts.

use std::sync::Mutex;
use std::time::Duration;

use prometheus::IntGauge;

use crate::cancel::Cancel;
use crate::metrics::METRICS;
use crate::sink::backoff::Backoff;

#[derive(Debug)]
pub struct Link {
    uri: String,
    gauge: IntGauge,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// `None` until the first attempt has told.
    up: Option<bool>,
    backoff: Backoff,
}

impl Link {
    pub fn new(uri: String, stem: &str) -> Self {
        let gauge = METRICS.source_up.with_label_values(&[stem]);
        gauge.set(0);
        let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        Self { uri, gauge, state: Mutex::new(State { up: None, backoff }) }
    }

    /// A call to a broker went through.
    pub fn up(&self) {
        let mut state = self.state.lock().unwrap();
        state.backoff.reset();
        if state.up != Some(true) {
            state.up = Some(true);
            self.gauge.set(1);
            tracing::info!("source {}: reading", self.uri);
        }
    }

    /// A call to a broker failed: says so once, then waits before the next attempt
    /// (less if stopped meanwhile).
    pub async fn down(&self, error: &(dyn std::error::Error + Send + Sync), stop: &Cancel) {
        let delay = {
            let mut state = self.state.lock().unwrap();
            if state.up != Some(false) {
                state.up = Some(false);
                self.gauge.set(0);
                tracing::warn!("source {}: cannot reach the brokers, retrying: {}", self.uri, chain(error));
            }
            state.backoff.next_delay()
        };
        stop.sleep(delay).await;
    }
}

/// rskafka's message for a failed SASL handshake (`ConnectionError::SaslFailed`).
const SASL_FAILED: &str = "Sasl handshake failed";

/// Whether the brokers refused the SASL credentials: retrying would not help. Once
/// rskafka's own retries gave up, the SASL error is only in the message (its
/// `RetryFailed` does not name its cause as the source), so that is read too.
pub fn refused_credentials(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<rskafka::SaslError>() || error.to_string().contains(SASL_FAILED) {
            return true;
        }
        cause = error.source();
    }
    false
}

/// An error with its causes, as one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let next = error.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        cause = error.source();
    }
    text
}
