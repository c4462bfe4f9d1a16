//! One connection to the broker: a channel with its prefetch, one consumer on the
//! queue, deliveries taken in chunks and admitted, each chunk acknowledged or given
//! back once its batch's verdict is in.
//!
//! Deliveries are taken from the consumer only as fast as they are admitted, and
//! admitting waits for room in the memory budget: while the buffer is full nothing
//! is taken, the deliveries unacknowledged reach the prefetch and the broker stops
//! sending. The client holds at most the prefetch's deliveries meanwhile.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Acker, Connection, ConnectionProperties, Consumer, ErrorKind};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use super::uri::Settings;
use crate::ack::VerdictReceiver;
use crate::buffer::charge;
use crate::ingest::source::recent::Recent;
use crate::ingest::source::SourceContext;
use crate::ingest::{Answer, Refused};
use crate::message::{Incoming, Origin, Position};
use crate::metrics::METRICS;

/// The most deliveries admitted in one call.
const CHUNK_MESSAGES: usize = 1000;

/// Why a session ended other than by `stop`.
#[derive(Debug)]
pub enum Failure {
    /// The connection or channel went away: connect again.
    Lost(String),
    /// The broker refused what the source is configured to do; retrying cannot help.
    Fatal(String),
}

impl From<lapin::Error> for Failure {
    fn from(error: lapin::Error) -> Self {
        let fatal = match error.kind() {
            ErrorKind::ProtocolError(amqp) => matches!(
                amqp.kind(),
                AMQPErrorKind::Soft(
                    AMQPSoftError::NOTFOUND | AMQPSoftError::ACCESSREFUSED | AMQPSoftError::RESOURCELOCKED
                ) | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
            ),
            _ => false,
        };
        if fatal {
            Failure::Fatal(format!("the broker refused: {error}"))
        } else {
            Failure::Lost(error.to_string())
        }
    }
}

/// What the deliveries of every session share: the ids recognised, and the tasks
/// that settle admitted chunks.
#[derive(Debug)]
pub struct Shared {
    pub recent: Arc<Mutex<Recent>>,
    /// The ids of messages given back after their batch failed: a checkpoint
    /// stamped before the failure was known may still recall them.
    pub given_back: Arc<Mutex<Recent>>,
    /// One task per admitted chunk, ended once its deliveries are acknowledged or
    /// given back.
    pub settling: JoinSet<()>,
    /// Deliveries admitted and not yet settled.
    pub in_flight: Arc<AtomicUsize>,
    pub prefetch: u16,
    /// The `source` label of the source's metrics.
    pub label: String,
}

/// What a settling task needs of [`Shared`].
struct Settling {
    recent: Arc<Mutex<Recent>>,
    given_back: Arc<Mutex<Recent>>,
    in_flight: Arc<AtomicUsize>,
    label: String,
}

impl Shared {
    pub fn new(window: usize, recent: Recent, prefetch: u16, label: String) -> Self {
        Self {
            recent: Arc::new(Mutex::new(recent)),
            given_back: Arc::new(Mutex::new(Recent::new(window, []))),
            settling: JoinSet::new(),
            in_flight: Arc::default(),
            prefetch,
            label,
        }
    }

    fn clone_parts(&self) -> Settling {
        Settling {
            recent: self.recent.clone(),
            given_back: self.given_back.clone(),
            in_flight: self.in_flight.clone(),
            label: self.label.clone(),
        }
    }

    /// Waits until every admitted chunk has its verdict and is settled.
    pub async fn settled(&mut self) {
        while self.settling.join_next().await.is_some() {}
    }
}

pub struct Session {
    connection: Connection,
    consumer: Consumer,
}

impl Session {
    pub async fn open(settings: &Settings, prefetch: u16) -> Result<Self, Failure> {
        // Named so that an operator sees in RabbitMQ whose connection it is.
        let name = format!("spout-sidecar {}", settings.stem());
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connection = Connection::connect_uri(settings.broker.clone(), properties).await?;
        let channel = connection.create_channel().await?;
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let consumer = channel
            .basic_consume(
                settings.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self { connection, consumer })
    }

    /// Consumes until `ctx.stop` or until the connection fails; then waits for the
    /// verdicts of what it admitted, settles them while the channel may still take
    /// them, and closes the connection.
    pub async fn run(mut self, ctx: &SourceContext, shared: &mut Shared) -> Result<(), Failure> {
        let ended = self.consume(ctx, shared).await;
        shared.settled().await;
        // A connection already gone may not answer the close.
        let closing = self.connection.close(200, "spout-sidecar is done with it".into());
        let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
        ended
    }

    async fn consume(&mut self, ctx: &SourceContext, shared: &mut Shared) -> Result<(), Failure> {
        let chunk_bytes = ctx.intake.budget().limit() / 8;
        // A delivery that would have made its chunk too large: the next one's first.
        let mut carried = None;
        loop {
            while shared.settling.try_join_next().is_some() {}
            let first = match carried.take() {
                Some(delivery) => delivery,
                None => tokio::select! {
                    _ = ctx.stop.cancelled() => break,
                    next = self.consumer.next() => delivery(next)?,
                },
            };
            let mut bytes = charge(first.data.len() as u64, 1);
            let mut deliveries = vec![first];
            let mut ended = None;
            while deliveries.len() < CHUNK_MESSAGES {
                let Some(next) = self.consumer.next().now_or_never() else { break };
                match delivery(next) {
                    Ok(d) if bytes + charge(d.data.len() as u64, 1) > chunk_bytes => {
                        carried = Some(d);
                        break;
                    }
                    Ok(d) => {
                        bytes += charge(d.data.len() as u64, 1);
                        deliveries.push(d);
                    }
                    Err(failure) => {
                        ended = Some(failure);
                        break;
                    }
                }
            }
            take(deliveries, ctx, shared).await?;
            if let Some(failure) = ended {
                return Err(failure);
            }
        }
        Ok(())
    }
}

fn delivery(next: Option<lapin::Result<lapin::message::Delivery>>) -> Result<lapin::message::Delivery, Failure> {
    match next {
        Some(Ok(delivery)) => Ok(delivery),
        Some(Err(error)) => Err(error.into()),
        None => Err(Failure::Lost("the broker cancelled the consumer".into())),
    }
}

/// What a message is recognised by: its message-id property, else a hash of its
/// body (so identical bodies without a message-id are the same message).
fn id_of(delivery: &lapin::message::Delivery) -> Arc<str> {
    match delivery.properties.message_id() {
        Some(id) if !id.as_str().is_empty() => Arc::from(id.as_str()),
        _ => {
            let digest = Sha256::digest(&delivery.data);
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            Arc::from(format!("sha256:{hex}"))
        }
    }
}

/// Counts the deliveries, acknowledges the redeliveries of committed messages,
/// admits the rest and leaves a task to settle them once their verdict is in.
async fn take(
    deliveries: Vec<lapin::message::Delivery>,
    ctx: &SourceContext,
    shared: &mut Shared,
) -> Result<(), Failure> {
    let label = [shared.label.as_str()];
    METRICS.source_messages.with_label_values(&label).inc_by(deliveries.len() as u64);
    let bytes: usize = deliveries.iter().map(|d| d.data.len()).sum();
    METRICS.source_bytes.with_label_values(&label).inc_by(bytes as u64);

    let mut fresh = Vec::with_capacity(deliveries.len());
    let mut unsure = Vec::new();
    let mut known = Vec::new();
    {
        let recent = shared.recent.lock().unwrap();
        let given_back = shared.given_back.lock().unwrap();
        for delivery in deliveries {
            let id = id_of(&delivery);
            if !delivery.redelivered {
                fresh.push((delivery, id));
            } else if recent.contains(&id) {
                known.push(delivery);
            } else if given_back.contains(&id) {
                fresh.push((delivery, id));
            } else {
                unsure.push((delivery, id));
            }
        }
    }
    for delivery in known {
        duplicate(&delivery.acker, &shared.label).await;
    }
    if !unsure.is_empty() {
        // Another replica, or this one before a restart, may have committed it.
        match ctx.read_checkpoint().await {
            Ok(checkpoint) => {
                let committed: std::collections::HashSet<&str> = checkpoint.ids.iter().map(String::as_str).collect();
                for (delivery, id) in unsure {
                    if committed.contains(&*id) {
                        shared.recent.lock().unwrap().extend([id]);
                        duplicate(&delivery.acker, &shared.label).await;
                    } else {
                        fresh.push((delivery, id));
                    }
                }
            }
            Err(error) => {
                tracing::warn!(
                    "source {}: cannot read the checkpoints to recognise redeliveries, committing them: {error}",
                    shared.label
                );
                fresh.extend(unsure);
            }
        }
        // Redeliveries come in delivery order among the others.
        fresh.sort_by_key(|(delivery, _)| delivery.delivery_tag);
    }
    if fresh.is_empty() {
        return Ok(());
    }
    let (messages, held): (Vec<Incoming>, Vec<(Acker, Arc<str>)>) = fresh
        .into_iter()
        .map(|(delivery, id)| {
            let incoming = Incoming {
                name: None,
                payload: bytes::Bytes::from(delivery.data).into(),
                line: false,
                origin: Some(Box::new(Origin { source: ctx.index, at: Position::Id(id.clone()) })),
            };
            (incoming, (delivery.acker, id))
        })
        .unzip();
    let count = held.len();
    match ctx.admit(messages, Answer::Committed).await {
        Ok(admitted) => {
            let verdict = admitted.verdict.expect("Answer::Committed gives a verdict");
            let in_flight = shared.in_flight.fetch_add(count, Ordering::Relaxed) + count;
            shared.settling.spawn(settle(verdict, held, shared.clone_parts()));
            // A full prefetch gets nothing more until these commit: seal the batch now
            // rather than when it is old enough.
            if in_flight >= usize::from(shared.prefetch) {
                ctx.intake.batcher().flush();
            }
            Ok(())
        }
        // Not admitted: left unacknowledged, the broker gives them back when the
        // channel closes.
        Err(Refused::Draining) => Ok(()),
        Err(Refused::LargerThanBudget) => {
            Err(Failure::Fatal(format!("a message of {bytes} bytes does not fit in --max-buffer-bytes; raise it")))
        }
        Err(other) => Err(Failure::Fatal(format!("its messages were refused: {}", other.reason()))),
    }
}

async fn duplicate(acker: &Acker, label: &str) {
    if acker.ack(BasicAckOptions::default()).await.is_ok() {
        METRICS.source_acks.with_label_values(&[label, "duplicate"]).inc();
    }
}

/// Acknowledges the chunk once its batch committed (and recalls its ids), or gives
/// it back to the queue if the batch failed. On a channel already gone, the broker
/// gives them back itself.
async fn settle(verdict: VerdictReceiver, held: Vec<(Acker, Arc<str>)>, to: Settling) {
    let Settling { recent, given_back, in_flight, label } = to;
    let committed = matches!(verdict.await, Ok(Ok(_)));
    let ids = held.iter().map(|(_, id)| id.clone());
    if committed {
        recent.lock().unwrap().extend(ids)
    } else {
        given_back.lock().unwrap().extend(ids)
    }
    let (outcome, answers) = if committed {
        (
            "ack",
            futures_util::future::join_all(held.iter().map(|(acker, _)| acker.ack(BasicAckOptions::default()))).await,
        )
    } else {
        let requeue = BasicNackOptions { requeue: true, ..Default::default() };
        ("requeue", futures_util::future::join_all(held.iter().map(|(acker, _)| acker.nack(requeue))).await)
    };
    in_flight.fetch_sub(held.len(), Ordering::Relaxed);
    let told = answers.iter().filter(|answer| answer.is_ok()).count();
    METRICS.source_acks.with_label_values(&[&label, outcome]).inc_by(told as u64);
    if told < held.len() {
        tracing::debug!("source {label}: {} deliveries not settled: the channel is gone", held.len() - told);
    }
}
