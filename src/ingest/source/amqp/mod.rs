//! The RabbitMQ source, `amqp://USER:PASS@HOST:PORT/VHOST?queue=Q`: consumes one
//! queue and acknowledges each message only once the batch holding it is committed;
//! a failed batch's messages go back to the queue. Replicas consuming one queue
//! compete for its messages, as consumers of a queue do.
//!
//! A queue has no position to resume from: what the checkpoint recalls are the ids
//! of the last `window` messages committed. A message the broker delivers again
//! (its `redelivered` flag set: a connection lost, or a sidecar killed, after the
//! commit and before the ack) whose id is recalled is acknowledged, not committed
//! again.
//!
//! A broker that is down or goes away is retried with backoff (`spout_source_up`
//! 0, one log line per change); a queue that does not exist, or credentials or a
//! vhost refused, end the source with an error.

mod session;
mod uri;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use self::session::{Failure, Session, Shared};
use self::uri::Settings;
use super::recent::Recent;
use super::{BadSourceUri, Source, SourceContext, SourceError};
use crate::encode::checkpoint::Fold;
use crate::ingest::Transport;
use crate::metrics::METRICS;
use crate::sink::backoff::Backoff;

/// What the default prefetch assumes a message takes at most on average, payload
/// and overhead: the budget holds `--max-buffer-bytes / 64 KiB` of them.
const ASSUMED_MESSAGE_BYTES: u64 = 64 * 1024;

#[derive(Debug)]
pub struct Amqp {
    settings: Settings,
}

pub fn parse(uri: &str) -> Result<Arc<dyn Source>, BadSourceUri> {
    Ok(Arc::new(Amqp { settings: Settings::parse(uri)? }))
}

/// The prefetch that lets as many deliveries be unacknowledged as the budget holds
/// messages of [`ASSUMED_MESSAGE_BYTES`]: 4096 for the default 256 MiB.
fn default_prefetch(budget: u64) -> u16 {
    (budget / ASSUMED_MESSAGE_BYTES).clamp(1, u64::from(u16::MAX)) as u16
}

impl Source for Amqp {
    fn describe(&self) -> String {
        self.settings.shown.clone()
    }

    fn checkpoint_stem(&self) -> String {
        self.settings.stem()
    }

    fn fold(&self) -> Fold {
        Fold::Ids { window: self.settings.window }
    }

    fn transport(&self) -> Transport {
        Transport::Amqp
    }

    fn run(self: Arc<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(async move { self.consume(ctx).await })
    }
}

impl Amqp {
    async fn consume(&self, ctx: SourceContext) -> Result<(), SourceError> {
        let prefetch = self.settings.prefetch.unwrap_or_else(|| default_prefetch(ctx.intake.budget().limit()));
        let recalled = ctx.resume.ids.iter().map(|id| Arc::from(id.as_str()));
        let window = self.settings.window;
        let mut shared = Shared::new(window, Recent::new(window, recalled), prefetch, ctx.stem.clone());
        let up = METRICS.source_up.with_label_values(&[&ctx.stem]);
        up.set(0);
        let mut delays = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut down: Option<String> = None;
        while !ctx.stop.is_cancelled() {
            let opened = tokio::select! {
                _ = ctx.stop.cancelled() => break,
                opened = Session::open(&self.settings, prefetch) => opened,
            };
            let ended = match opened {
                Ok(session) => {
                    up.set(1);
                    delays.reset();
                    tracing::info!("source {}: consuming (prefetch {prefetch})", self.settings.shown);
                    down = None;
                    session.run(&ctx, &mut shared).await
                }
                Err(failure) => Err(failure),
            };
            match ended {
                Ok(()) => break,
                Err(Failure::Fatal(message)) => {
                    up.set(0);
                    shared.settled().await;
                    return Err(SourceError { uri: self.settings.shown.clone(), message });
                }
                Err(Failure::Lost(why)) => {
                    up.set(0);
                    if down.as_deref() != Some(why.as_str()) {
                        tracing::warn!("source {}: broker unreachable, retrying: {why}", self.settings.shown);
                        down = Some(why);
                    }
                }
            }
            // Every delivery of the lost channel has its verdict before the next
            // consumer starts, so that a redelivery of one that committed is recalled.
            shared.settled().await;
            ctx.stop.sleep(delays.next_delay()).await;
        }
        up.set(0);
        shared.settled().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_prefetch_follows_the_budget() {
        assert_eq!(default_prefetch(256 << 20), 4096);
        assert_eq!(default_prefetch(1000), 1);
        assert_eq!(default_prefetch(1 << 40), u16::MAX);
    }
}
