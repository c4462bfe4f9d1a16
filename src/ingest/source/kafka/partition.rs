//! One partition's reader: from the offset the checkpoints name (or `start=`), it
//! fetches, admits what it fetched, and only then fetches again. Admitting waits
//! for room in the buffer, so a full buffer stops the fetching: the client holds
//! one fetch of this partition at most.

use std::sync::Arc;

use bytes::Bytes;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;
use rskafka::record::RecordAndOffset;

use super::link::{self, Link};
use super::settle::{Lag, Pending, Settler};
use super::uri::{KafkaUri, Start};
use crate::buffer::charge;
use crate::ingest::source::{SourceContext, SourceError};
use crate::ingest::{Answer, Refused};
use crate::message::{Incoming, Origin, Payload, Position};
use crate::metrics::METRICS;

/// How long a fetch waits at the broker for records to arrive.
const FETCH_WAIT_MS: i32 = 500;

/// How often the end offset is asked for besides the fetches.
const END_POLL: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Reader<'a> {
    pub number: i32,
    pub client: Arc<Client>,
    pub uri: &'a KafkaUri,
    pub ctx: &'a SourceContext,
    pub link: &'a Link,
    pub settle: Settler,
}

/// What ended a fetch-admit round.
enum Round {
    Go,
    Stop,
}

impl Reader<'_> {
    /// Reads until `ctx.stop`; an error is one the source cannot go on after.
    pub async fn run(self) -> Result<(), SourceError> {
        let Some(partition) = self
            .attempt(|| self.client.partition_client(&self.uri.topic, self.number, UnknownTopicHandling::Retry))
            .await?
        else {
            return Ok(());
        };
        let next = match self.ctx.resume.offsets.get(&self.number) {
            Some(&next) => next,
            None => {
                let at = match self.uri.start {
                    Start::Earliest => OffsetAt::Earliest,
                    Start::Latest => OffsetAt::Latest,
                };
                let Some(next) = self.attempt(|| partition.get_offset(at)).await? else { return Ok(()) };
                next
            }
        };
        let lag = Lag::new(&self.ctx.stem, self.number, next);
        tokio::select! {
            read = self.read(&partition, &lag, next) => read,
            never = poll_end(&partition, &lag) => match never {},
        }
    }

    /// Fetches and admits from `next` on, until `ctx.stop`.
    async fn read(&self, partition: &PartitionClient, lag: &Arc<Lag>, mut next: i64) -> Result<(), SourceError> {
        loop {
            let fetched = tokio::select! {
                fetched = partition.fetch_records(next, 1..self.uri.fetch_bytes, FETCH_WAIT_MS) => fetched,
                () = self.ctx.stop.cancelled() => return Ok(()),
            };
            match fetched {
                Ok((records, end)) => {
                    self.link.up();
                    lag.end(end);
                    let Some(last) = records.last() else { continue };
                    let after = last.offset + 1;
                    if let Round::Stop = self.admit(records, lag).await? {
                        return Ok(());
                    }
                    next = after;
                }
                Err(KafkaError::ServerError { protocol_error: ProtocolError::OffsetOutOfRange, .. }) => {
                    let Some(moved) = self.out_of_range(partition, next).await? else { return Ok(()) };
                    next = moved;
                }
                Err(error) if link::refused_credentials(&error) => {
                    return Err(self.error(format!("the brokers refused the credentials: {error}")));
                }
                Err(error) => self.link.down(&error, &self.ctx.stop).await,
            }
        }
    }

    /// Admits fetched records in chunks that fit the buffer a few times over, each
    /// waiting for room; hands each chunk's verdict to the settler.
    async fn admit(&self, records: Vec<RecordAndOffset>, lag: &Arc<Lag>) -> Result<Round, SourceError> {
        let chunk_limit = self.ctx.intake.budget().limit() / 4;
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let mut chunk = Vec::new();
            let mut charged = 0;
            let mut last = 0;
            while let Some(record) = records.next_if(|r| chunk.is_empty() || charged + charged_for(r) <= chunk_limit) {
                charged += charged_for(&record);
                last = record.offset;
                chunk.push(self.incoming(record));
            }
            let bytes: u64 = chunk.iter().map(|m| m.payload.len()).sum();
            METRICS.source_messages.with_label_values(&[&self.ctx.stem]).inc_by(chunk.len() as u64);
            METRICS.source_bytes.with_label_values(&[&self.ctx.stem]).inc_by(bytes);
            match self.ctx.admit(chunk, Answer::Committed).await {
                Ok(admitted) => {
                    let verdict = admitted.verdict.expect("Answer::Committed gives a verdict");
                    let pending = Pending { lag: lag.clone(), partition: self.number, next: last + 1, verdict };
                    self.settle.admitted(pending);
                }
                Err(Refused::Draining) => return Ok(Round::Stop),
                Err(Refused::LargerThanBudget) => {
                    return Err(self.error(format!(
                        "the record at offset {last} of partition {} is larger than the whole buffer \
                         (--max-buffer-bytes): it can never be admitted",
                        self.number
                    )))
                }
                Err(other) => {
                    return Err(self.error(format!("cannot admit what partition {} holds: {other:?}", self.number)))
                }
            }
        }
        Ok(Round::Go)
    }

    fn incoming(&self, record: RecordAndOffset) -> Incoming {
        let value = record.record.value.unwrap_or_default();
        Incoming {
            name: None,
            payload: Payload::from(Bytes::from(value)),
            line: false,
            origin: Some(Box::new(Origin {
                source: self.ctx.index,
                at: Position::Offset { partition: self.number, offset: record.offset },
            })),
        }
    }

    /// The offset to read next was not in the partition. Below its start, the
    /// records were deleted (retention) before anyone read them: go on from the
    /// start, and say how many. Past its end, the partition is not the one the
    /// checkpoint was written for (a topic deleted and made again): stop, rather
    /// than skip or read again.
    async fn out_of_range(&self, partition: &PartitionClient, next: i64) -> Result<Option<i64>, SourceError> {
        let Some(earliest) = self.attempt(|| partition.get_offset(OffsetAt::Earliest)).await? else { return Ok(None) };
        if next < earliest {
            tracing::warn!(
                "source {}: partition {} starts at offset {earliest} now: the {} records from {next} were deleted \
                 before they were read",
                self.uri.describe(),
                self.number,
                earliest - next
            );
            return Ok(Some(earliest));
        }
        let Some(end) = self.attempt(|| partition.get_offset(OffsetAt::Latest)).await? else { return Ok(None) };
        if next <= end {
            return Ok(Some(next)); // the partition moved meanwhile: try again
        }
        Err(self.error(format!(
            "partition {} ends at offset {end}, before the offset {next} committed: was the topic made again? \
             Remove its checkpoint files (.spout/checkpoints/kafka.{}.*.json) to read it from start=",
            self.number, self.uri.topic
        )))
    }

    /// Calls the brokers until the call goes through; `None` if stopped first.
    async fn attempt<T, F>(&self, call: impl Fn() -> F) -> Result<Option<T>, SourceError>
    where
        F: std::future::Future<Output = Result<T, KafkaError>>,
    {
        loop {
            let result = tokio::select! {
                result = call() => result,
                () = self.ctx.stop.cancelled() => return Ok(None),
            };
            match result {
                Ok(value) => {
                    self.link.up();
                    return Ok(Some(value));
                }
                Err(error) if link::refused_credentials(&error) => {
                    return Err(self.error(format!("the brokers refused the credentials: {error}")));
                }
                Err(error) => self.link.down(&error, &self.ctx.stop).await,
            }
        }
    }

    fn error(&self, message: String) -> SourceError {
        SourceError { uri: self.uri.describe(), message }
    }
}

/// Asks for the partition's end offset now and then, so that the lag grows while
/// the reader waits for room (a fetch tells it too, but there is none meanwhile).
async fn poll_end(partition: &PartitionClient, lag: &Lag) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(END_POLL).await;
        if let Ok(end) = partition.get_offset(OffsetAt::Latest).await {
            lag.end(end);
        }
    }
}

fn charged_for(record: &RecordAndOffset) -> u64 {
    charge(record.record.value.as_ref().map_or(0, Vec::len) as u64, 1)
}
