//! Capped exponential backoff with jitter, for every sink's retries: `backon`'s
//! exponential iterator, restarted by `reset` once an attempt succeeds.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
}

impl Backoff {
    /// Delays that double from `first` up to `cap`, each drawn from [d/2, d) so
    /// that several sidecars retrying one server do not move in lockstep.
    pub fn new(first: Duration, cap: Duration) -> Self {
        // backon adds a jitter of up to the current delay on top of it: from half
        // the delays, that is [d/2, d).
        let builder = ExponentialBuilder::new()
            .with_min_delay(first / 2)
            .with_max_delay(cap / 2)
            .with_jitter()
            .without_max_times();
        Self { builder, delays: builder.build() }
    }

    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().expect("built without a limit on retries")
    }

    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(10), Duration::from_secs(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_within_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        for (delay, full) in delays.iter().zip([100, 200, 400, 400, 400]) {
            let full = Duration::from_millis(full);
            assert!(*delay >= full / 2 && *delay <= full, "{delay:?} vs {full:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
