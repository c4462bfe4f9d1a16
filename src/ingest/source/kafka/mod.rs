//! `--source kafka://…`: reads a topic's partitions (all, or the `partitions=` this
//! replica is given) with rskafka and admits their records, exactly once into the
//! sink: each partition resumes at the offset the last commit's checkpoint names,
//! every record carries its partition and offset, and the checkpoint folded from
//! them lands in the same commit as the records.
//!
//! One reader per partition ([`partition`]) fetches, admits and fetches again, so
//! the client never holds more than one fetch (`max.partition.fetch.bytes`) per
//! partition while the buffer is full. The verdicts come back in commit order to
//! [`settle`], which keeps the lag gauge and ends the source if a batch failed.

mod link;
mod partition;
mod settle;
mod tls;
pub mod uri;

use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::BackoffConfig;

use self::link::Link;
use self::uri::{KafkaUri, Mechanism};
use super::{BadSourceUri, Source, SourceContext, SourceError};
use crate::encode::checkpoint::Fold;
use crate::ingest::Transport;

/// A `kafka://` source.
pub struct Kafka {
    uri: KafkaUri,
}

/// Parses a `kafka://` URI (the [`super::SCHEMES`] entry).
pub fn parse(uri: &str) -> Result<Arc<dyn Source>, BadSourceUri> {
    Ok(Arc::new(Kafka { uri: KafkaUri::parse(uri, |var| std::env::var(var).ok())? }))
}

impl fmt::Debug for Kafka {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri.describe())
    }
}

impl Source for Kafka {
    fn describe(&self) -> String {
        self.uri.describe()
    }

    fn checkpoint_stem(&self) -> String {
        format!("kafka.{}", self.uri.topic)
    }

    fn fold(&self) -> Fold {
        Fold::Offsets
    }

    fn transport(&self) -> Transport {
        Transport::Kafka
    }

    fn run(self: Arc<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(async move { self.consume(ctx).await })
    }
}

impl Kafka {
    async fn consume(&self, ctx: SourceContext) -> Result<(), SourceError> {
        let link = Link::new(self.describe(), &ctx.stem);
        let Some(client) = self.connect(&ctx, &link).await? else { return Ok(()) };
        let client = Arc::new(client);
        let Some(partitions) = self.partitions(&client, &ctx, &link).await? else { return Ok(()) };
        let (settler, taking) = settle::Settler::start(self.describe());
        let readers: FuturesUnordered<_> = partitions
            .into_iter()
            .map(|number| {
                let reader = partition::Reader {
                    number,
                    client: client.clone(),
                    uri: &self.uri,
                    ctx: &ctx,
                    link: &link,
                    settle: settler.clone(),
                };
                reader.run()
            })
            .collect();
        drop(settler);
        // A reader ends on `stop` or with an error that ends the source; once all
        // have, the verdicts of what they admitted are waited for.
        let mut read = pin!(readers.collect::<Vec<_>>());
        let mut taking = taking;
        let taken = tokio::select! {
            biased;
            read = &mut read => {
                read.into_iter().collect::<Result<(), _>>()?;
                taking.await
            }
            // Ended before the readers: a batch failed.
            taken = &mut taking => taken,
        };
        taken.map_err(|panic| self.error(format!("its verdict task ended: {panic}")))?
    }

    /// Connects to the brokers, retrying while they cannot be reached; `None` if
    /// stopped first.
    async fn connect(&self, ctx: &SourceContext, link: &Link) -> Result<Option<Client>, SourceError> {
        let tls = self.uri.tls.as_ref().map(tls::client_config).transpose().map_err(|why| self.error(why))?;
        loop {
            let mut builder = ClientBuilder::new(self.uri.brokers.clone())
                .client_id("spout-sidecar")
                .backoff_config(attempt_backoff());
            if let Some(tls) = &tls {
                builder = builder.tls_config(tls.clone());
            }
            if let Some(sasl) = &self.uri.sasl {
                let credentials = Credentials::new(sasl.username.clone(), sasl.password.clone());
                builder = builder.sasl_config(match sasl.mechanism {
                    Mechanism::Plain => SaslConfig::Plain(credentials),
                    Mechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
                    Mechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
                });
            }
            let attempt = tokio::select! {
                built = builder.build() => built,
                () = ctx.stop.cancelled() => return Ok(None),
            };
            match attempt {
                Ok(client) => return Ok(Some(client)),
                Err(error) if link::refused_credentials(&error) => {
                    return Err(self.error(format!("the brokers refused the credentials: {error}")))
                }
                Err(error) => link.down(&error, &ctx.stop).await,
            }
        }
    }

    /// The partitions this replica reads: those of `partitions=`, which must all
    /// exist, or every partition of the topic; `None` if stopped first.
    async fn partitions(
        &self,
        client: &Client,
        ctx: &SourceContext,
        link: &Link,
    ) -> Result<Option<Vec<i32>>, SourceError> {
        let topics = loop {
            let listed = tokio::select! {
                listed = client.list_topics() => listed,
                () = ctx.stop.cancelled() => return Ok(None),
            };
            match listed {
                Ok(topics) => break topics,
                Err(error) if link::refused_credentials(&error) => {
                    return Err(self.error(format!("the brokers refused the credentials: {error}")))
                }
                Err(error) => link.down(&error, &ctx.stop).await,
            }
        };
        let topic = self.uri.topic.as_str();
        let Some(found) = topics.into_iter().find(|t| t.name == topic) else {
            return Err(self.error(format!("topic `{topic}` does not exist")));
        };
        match &self.uri.partitions {
            None => Ok(Some(found.partitions.into_iter().collect())),
            Some(wanted) => match wanted.difference(&found.partitions).next() {
                Some(missing) => Err(self.error(format!(
                    "topic `{topic}` has no partition {missing} (it has {})",
                    found.partitions.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
                ))),
                None => Ok(Some(wanted.iter().copied().collect())),
            },
        }
    }

    fn error(&self, message: String) -> SourceError {
        SourceError { uri: self.describe(), message }
    }
}

/// How long rskafka itself retries one call before handing the error back: the
/// source retries on, but with `spout_source_up` at 0 and a log line.
fn attempt_backoff() -> BackoffConfig {
    BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        base: 2.0,
        deadline: Some(Duration::from_secs(5)),
    }
}
