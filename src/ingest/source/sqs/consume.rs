//! One `sqs://` source running: receive, recognise redeliveries, admit (waiting
//! for room: no receive meanwhile, which is the back-pressure), and once each
//! chunk's commit is decided, delete its messages or make them visible again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinSet;

use super::api::{ApiError, Queue, Received, BATCH};
use super::held::Held;
use super::s3_events::{self, Fetched, Notice, Objects};
use super::{Mode, Sqs};
use crate::ack::VerdictReceiver;
use crate::ingest::source::recent::Recent;
use crate::ingest::source::{Source, SourceContext, SourceError};
use crate::ingest::{Answer, Refused};
use crate::message::{Incoming, Origin, Position};
use crate::metrics::METRICS;
use crate::sink::backoff::Backoff;

pub async fn run(source: Arc<Sqs>, ctx: SourceContext) -> Result<(), SourceError> {
    let fail = |error: ApiError| SourceError { uri: source.describe(), message: error.to_string() };
    // Long polls last `wait`; the margin is for the answer to come back.
    let timeout = source.wait + Duration::from_secs(15);
    let queue = Queue::new(source.endpoint(), source.queue_url.clone(), source.region(), timeout).map_err(fail)?;
    let queue = Arc::new(queue);
    let held = Arc::new(Held::default());
    let extender = tokio::spawn(held.clone().extend(queue.clone(), source.visibility));
    let recognised =
        Arc::new(Mutex::new(Recent::new(source.window, ctx.resume.ids.iter().map(|id| Arc::from(id.as_str())))));
    let tell = Tell { queue, held, recognised, stem: ctx.stem.clone() };
    let mut consumer =
        Consumer { source: source.clone(), ctx, tell, settling: JoinSet::new(), objects: Objects::default() };
    let ended = consumer.consume().await;
    // What was admitted is committed by the drain; its verdicts settle it.
    while consumer.settling.join_next().await.is_some() {}
    extender.abort();
    ended.map_err(fail)
}

struct Consumer {
    source: Arc<Sqs>,
    ctx: SourceContext,
    tell: Tell,
    /// One task per admitted chunk, waiting for its verdict.
    settling: JoinSet<()>,
    objects: Objects,
}

impl Consumer {
    async fn consume(&mut self) -> Result<(), ApiError> {
        let mut up = Up { stem: self.ctx.stem.clone(), state: None };
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut checked = false;
        while !self.ctx.stop.is_cancelled() {
            let source = &self.source;
            let asked = async {
                if !checked {
                    self.tell.queue.check().await?;
                }
                self.tell.queue.receive(source.max, source.wait, source.visibility).await
            };
            let received = tokio::select! {
                received = asked => received,
                () = self.ctx.stop.cancelled() => break,
            };
            match received {
                Ok(received) => {
                    checked = true;
                    up.set(Ok(()));
                    backoff.reset();
                    while self.settling.try_join_next().is_some() {}
                    if !received.is_empty() {
                        self.take(received).await;
                    }
                }
                Err(error) if error.is_fatal() => return Err(error),
                Err(error) => {
                    up.set(Err(&error));
                    self.ctx.stop.sleep(backoff.next_delay()).await;
                }
            }
        }
        Ok(())
    }

    /// Admits what one receive brought, less what is recognised or refused.
    async fn take(&mut self, received: Vec<Received>) {
        METRICS.source_messages.with_label_values(&[&self.ctx.stem]).inc_by(received.len() as u64);
        let visibility = self.source.visibility;
        let received: Vec<Received> = received
            .into_iter()
            .filter(|m| self.tell.held.hold(&m.message_id, &m.receipt_handle, visibility))
            .collect();
        let fresh = self.recognise(received).await;
        let (mut messages, mut ids, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
        for message in fresh {
            let (read, bytes) = match self.source.mode {
                Mode::Messages => self.body(&message),
                Mode::S3Events => self.objects(&message).await,
            };
            METRICS.source_bytes.with_label_values(&[&self.ctx.stem]).inc_by(bytes);
            match read {
                Ok(read) if read.is_empty() => skipped.push(message.message_id),
                Ok(mut read) => {
                    let last = read.last_mut().expect("not empty");
                    last.origin =
                        Some(Box::new(Origin { source: self.ctx.index, at: Position::Id(message.message_id.clone()) }));
                    messages.append(&mut read);
                    ids.push(message.message_id);
                }
                Err(why) => {
                    // Left to come back when its visibility timeout ends.
                    tracing::warn!("SQS message {} left in the queue: {why}", message.message_id);
                    self.tell.held.release(&[message.message_id]);
                    if let Leave::Refused = why.leave {
                        self.tell.count("refused", 1);
                    }
                }
            }
        }
        if !skipped.is_empty() {
            let handles = self.tell.held.release(&skipped);
            self.tell.delete(&handles, "skipped").await;
        }
        if messages.is_empty() {
            return;
        }
        match self.ctx.admit(messages, Answer::Committed).await {
            Ok(admitted) => {
                let verdict = admitted.verdict.expect("asked for the verdict");
                self.settling.spawn(self.tell.clone().settle(ids, verdict));
            }
            Err(refused) => {
                let handles = self.tell.held.release(&ids);
                if refused != Refused::LargerThanBudget {
                    // Draining, or no sink to commit it: another consumer may take it now.
                    self.tell.give_back(&handles).await;
                }
                tracing::warn!("{} SQS messages not admitted ({}): left in the queue", ids.len(), refused.reason());
            }
        }
    }

    /// Drops redelivered messages already committed, deleting them; a redelivery
    /// not in this replica's window is looked up in every replica's checkpoint.
    async fn recognise(&self, mut received: Vec<Received>) -> Vec<Received> {
        let mut duplicates: HashSet<Arc<str>> = HashSet::new();
        let mut unknown = Vec::new();
        {
            let recognised = self.tell.recognised.lock().unwrap();
            for message in received.iter().filter(|m| m.is_redelivered()) {
                if recognised.contains(&message.message_id) {
                    duplicates.insert(message.message_id.clone());
                } else {
                    unknown.push(message.message_id.clone());
                }
            }
        }
        if !unknown.is_empty() {
            match self.ctx.read_checkpoint().await {
                Ok(checkpoint) => {
                    let committed: HashSet<&str> = checkpoint.ids.iter().map(String::as_str).collect();
                    duplicates.extend(unknown.into_iter().filter(|id| committed.contains(&**id)));
                }
                Err(error) => {
                    // Admitting them could commit them twice: they come back later.
                    tracing::warn!("{} redelivered SQS messages left in the queue: {error}", unknown.len());
                    self.tell.held.release(&unknown);
                    let unknown: HashSet<Arc<str>> = unknown.into_iter().collect();
                    received.retain(|m| !unknown.contains(&m.message_id));
                }
            }
        }
        if !duplicates.is_empty() {
            let ids: Vec<Arc<str>> = duplicates.iter().cloned().collect();
            let handles = self.tell.held.release(&ids);
            self.tell.delete(&handles, "duplicate").await;
            received.retain(|m| !duplicates.contains(&m.message_id));
        }
        received
    }

    fn body(&self, message: &Received) -> (Result<Vec<Incoming>, Why>, u64) {
        let bytes = message.body.len() as u64;
        if bytes > self.ctx.max_message_bytes {
            let why =
                format!("its body has {bytes} bytes, more than --max-message-bytes {}", self.ctx.max_message_bytes);
            return (Err(Why { text: why, leave: Leave::Refused }), bytes);
        }
        let payload = Bytes::from(message.body.clone().into_bytes()).into();
        (Ok(vec![Incoming { name: None, payload, line: false, origin: None }]), bytes)
    }

    async fn objects(&mut self, message: &Received) -> (Result<Vec<Incoming>, Why>, u64) {
        let created = match s3_events::parse(&message.body) {
            Notice::Created(created) => created,
            Notice::Refused(why) => return (Err(Why { text: why, leave: Leave::Refused }), 0),
        };
        match self.objects.fetch(&created, self.ctx.max_message_bytes).await {
            Fetched::Read { messages, bytes } => (Ok(messages), bytes),
            Fetched::Refused(why) => (Err(Why { text: why, leave: Leave::Refused }), 0),
            Fetched::Failed(why) => (Err(Why { text: why, leave: Leave::Retried }), 0),
        }
    }
}

/// Why a message is left in the queue.
struct Why {
    text: String,
    leave: Leave,
}

enum Leave {
    /// It cannot be committed as it is: for its dead-letter queue.
    Refused,
    /// It could not be read now: again when it comes back.
    Retried,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// What tells SQS how messages were settled, shared with the settling tasks.
#[derive(Clone)]
struct Tell {
    queue: Arc<Queue>,
    held: Arc<Held>,
    recognised: Arc<Mutex<Recent>>,
    stem: String,
}

impl Tell {
    /// Waits for a chunk's verdict: committed, its ids are recognised from now on
    /// and its messages deleted; failed, they are made visible again at once.
    async fn settle(self, ids: Vec<Arc<str>>, verdict: VerdictReceiver) {
        let committed = matches!(verdict.await, Ok(Ok(_)));
        let handles = self.held.release(&ids);
        if committed {
            self.recognised.lock().unwrap().extend(ids);
            self.delete(&handles, "ack").await;
        } else {
            self.give_back(&handles).await;
            self.count("requeue", handles.len() as u64);
        }
    }

    /// Deletes messages, retrying a while: one not deleted comes back, and is
    /// recognised then. Counts those deleted as `outcome`.
    async fn delete(&self, handles: &[Arc<str>], outcome: &str) {
        for chunk in handles.chunks(BATCH) {
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
            for attempt in 1.. {
                match self.queue.delete(chunk).await {
                    Ok(failed) => {
                        self.count(outcome, (chunk.len() - failed) as u64);
                        break;
                    }
                    Err(error) if attempt == 5 => {
                        tracing::warn!("{} SQS messages not deleted; they will come back: {error}", chunk.len());
                        break;
                    }
                    Err(_) => tokio::time::sleep(backoff.next_delay()).await,
                }
            }
        }
    }

    /// Makes messages visible again now, for any consumer to take.
    async fn give_back(&self, handles: &[Arc<str>]) {
        for chunk in handles.chunks(BATCH) {
            if let Err(error) = self.queue.set_visibility(chunk, Duration::ZERO).await {
                tracing::warn!("{} SQS messages come back when their visibility ends: {error}", chunk.len());
            }
        }
    }

    fn count(&self, outcome: &str, n: u64) {
        METRICS.source_acks.with_label_values(&[&self.stem, outcome]).inc_by(n);
    }
}

/// Whether SQS answers, logged once per change.
struct Up {
    stem: String,
    state: Option<bool>,
}

impl Up {
    fn set(&mut self, answered: Result<(), &ApiError>) {
        let up = answered.is_ok();
        if self.state != Some(up) {
            match answered {
                Ok(()) => tracing::info!(source = %self.stem, "SQS answers"),
                Err(error) => tracing::warn!(source = %self.stem, "{error}; retrying"),
            }
            METRICS.source_up.with_label_values(&[&self.stem]).set(i64::from(up));
        }
        self.state = Some(up);
    }
}
