//! One batch, one commit, in an object store: uploads the batch's objects under
//! `DIR/<commit id>/`, several at once, then writes the manifest, last.
//!
//! A failed attempt is retried with capped, jittered backoff under the same keys:
//! only the objects not yet stored are sent again, and each PUT replaces whatever a
//! failed one may have left, so nothing is doubled. The commit id is the batch's
//! first sequence number, 20 digits (as `dir:` names commits), so a batch replayed
//! from the disk spool after a crash has the keys it had before: its manifest already
//! there means it committed, and it is not written again; otherwise its objects are
//! written over whatever the crash left of them. A batch given up at the shutdown
//! timeout has no manifest written and
//! its objects removed, best effort; if its manifest PUT was under way, the
//! manifest is looked for first: found, the batch did commit.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use object_store::path::Path;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions};

use super::body::{self, Planned, Shape};
use super::manifest::{self, Manifest, ObjectEntry};
use super::requests::{self, timed, Op, RequestError, UploadError};
use super::uri::ObjectUri;
use super::{Compression, ObjectFormat};
use crate::ack::{BatchAck, Receipt};
use crate::batch::SealReason;
use crate::metrics::METRICS;
use crate::sink::backoff::Backoff;
use crate::sink::commit_id;
use crate::sink::committer_thread::{AsyncCommitter, Turn};
use crate::sink::{Commit, SinkContext, SinkState};

/// Objects of one batch uploading at once.
const OBJECTS_IN_FLIGHT: usize = 16;
/// How long giving up may spend removing a batch's objects.
const ABANDON_TIMEOUT: Duration = Duration::from_secs(3);

/// Why an attempt at a commit failed, as `Health` and the log see it.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("the bucket `{bucket}` does not exist ({request}); create it: the sidecar retries until it can write")]
    MissingBucket { bucket: String, request: RequestError },
    #[error(
        "the store refused the credentials ({request}); fix them (the cloud's environment variables or \
         the permissions of the key): the sidecar retries until it can write"
    )]
    Refused { request: RequestError },
    #[error(transparent)]
    Request(RequestError),
    #[error(transparent)]
    Upload(UploadError),
}

impl AttemptError {
    fn new(bucket: &str, error: UploadError) -> Self {
        match error {
            UploadError::Request(request) => Self::from_request(bucket, request),
            other => AttemptError::Upload(other),
        }
    }

    fn from_request(bucket: &str, request: RequestError) -> Self {
        use object_store::Error::{Generic, NotFound, PermissionDenied, Unauthenticated};
        let status = match &request.source {
            // A write or a listing that finds nothing at all: no bucket to put it in.
            NotFound { .. } if request.op != Op::Head => Some(404),
            PermissionDenied { .. } => Some(403),
            Unauthenticated { .. } => Some(401),
            Generic { .. } => generic_status(&request.source),
            _ => None,
        };
        match status {
            Some(404) if request.op != Op::Head => AttemptError::MissingBucket { bucket: bucket.into(), request },
            Some(401 | 403) => AttemptError::Refused { request },
            _ => AttemptError::Request(request),
        }
    }

    /// The `kind` label of `spout_sink_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            AttemptError::MissingBucket { .. } => "missing_bucket",
            AttemptError::Refused { .. } => "auth",
            AttemptError::Request(_) => "request",
            AttemptError::Upload(_) => "compress",
        }
    }

    /// A missing bucket or refused credentials need someone to act: down, not
    /// merely retrying.
    pub fn state(&self) -> SinkState {
        match self {
            AttemptError::MissingBucket { .. } | AttemptError::Refused { .. } => SinkState::Down,
            _ => SinkState::Retrying,
        }
    }
}

/// The HTTP status of a request that `object_store` reports as `Generic` (a
/// listing, whose 404 or 403 it does not sort into `NotFound` or
/// `PermissionDenied`): the type that holds the status is not exported, so it is
/// read from the error's text, `... non-2xx status code: 404 Not Found ...`.
fn generic_status(error: &object_store::Error) -> Option<u16> {
    const MARK: &str = "status code: ";
    let text = error.to_string();
    let at = text.find(MARK)? + MARK.len();
    text.get(at..at + 3)?.parse().ok()
}

pub struct ObjectCommitter {
    uri: ObjectUri,
    store: Arc<dyn ObjectStore>,
    shape: Shape,
    ctx: SinkContext,
}

/// One batch on its way: its objects and those already stored.
struct InFlight<'a> {
    id: String,
    prefix: String,
    ack: &'a BatchAck,
    objects: Vec<Planned>,
    stored: Vec<Option<ObjectEntry>>,
    /// A manifest PUT was started, in this run or (a replayed batch) before a crash:
    /// it may have landed even if it failed.
    manifest_tried: bool,
    /// Replayed from the spool and not yet looked for in the bucket.
    unchecked_replay: bool,
}

impl ObjectCommitter {
    pub fn new(
        uri: ObjectUri,
        store: Arc<dyn ObjectStore>,
        (format, compression): (ObjectFormat, Option<Compression>),
        ctx: SinkContext,
    ) -> Self {
        let shape = Shape { format, compression, overwrite: ctx.overwrite };
        Self { uri, store, shape, ctx }
    }

    fn prefix(&self, id: &str) -> String {
        match self.uri.dir.as_str() {
            "" => id.to_owned(),
            dir => format!("{dir}/{id}"),
        }
    }

    fn manifest_key(prefix: &str) -> Path {
        Path::from(format!("{prefix}/{}", manifest::NAME))
    }

    /// Stores what is missing of the batch, then, in its turn, its manifest.
    async fn attempt(&self, batch: &mut InFlight<'_>, turn: &mut Turn) -> Result<(), AttemptError> {
        let bucket = self.uri.bucket();
        if batch.unchecked_replay {
            // The run that sealed it may have committed it before the crash.
            if self.manifest_there(&batch.prefix).await.map_err(|e| AttemptError::from_request(bucket, e))? {
                tracing::info!(
                    commit = batch.id,
                    "a replayed batch had committed before the restart; not writing it again"
                );
                return Ok(());
            }
            (batch.unchecked_replay, batch.manifest_tried) = (false, false);
        }
        let pending: Vec<usize> = (0..batch.objects.len()).filter(|&i| batch.stored[i].is_none()).collect();
        let (store, objects, compression) = (self.store.as_ref(), &batch.objects, self.shape.compression);
        let mut uploads = stream::iter(pending)
            .map(|i| async move { (i, requests::upload(store, &objects[i], compression).await) })
            .buffer_unordered(OBJECTS_IN_FLIGHT);
        let mut failed = None;
        while let Some((i, result)) = uploads.next().await {
            match result {
                Ok(entry) => batch.stored[i] = Some(entry),
                Err(error) => failed = failed.or(Some(error)),
            }
        }
        drop(uploads);
        if let Some(error) = failed {
            return Err(AttemptError::new(bucket, error));
        }
        // Commits become visible in batch order.
        turn.wait().await;
        let ack = batch.ack;
        let manifest = Manifest {
            commit: &batch.id,
            first_seq: ack.first_seq,
            last_seq: ack.first_seq + ack.messages.saturating_sub(1),
            messages: ack.messages,
            format: self.shape.format.as_str(),
            compression: self.shape.compression.map(Compression::as_str),
            objects: batch.stored.iter().flatten().cloned().collect(),
        }
        .to_json();
        let key = Self::manifest_key(&batch.prefix);
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "application/json".into());
        let options = PutOptions { attributes, ..PutOptions::default() };
        batch.manifest_tried = true;
        let bytes = manifest.len() as u64;
        timed(Op::Put, &key, bytes, self.store.put_opts(&key, manifest.into(), options))
            .await
            .map_err(|e| AttemptError::from_request(bucket, e))?;
        Ok(())
    }

    /// Whether the commit under `prefix` has its manifest, which makes it committed.
    async fn manifest_there(&self, prefix: &str) -> Result<bool, RequestError> {
        let key = Self::manifest_key(prefix);
        match timed(Op::Head, &key, 0, self.store.head(&key)).await {
            Ok(_) => Ok(true),
            Err(RequestError { source: object_store::Error::NotFound { .. }, .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Gives the batch up: true if it turns out to be committed after all.
    async fn abandon(&self, batch: &InFlight<'_>) -> bool {
        let cleanup = async {
            if batch.manifest_tried {
                match self.manifest_there(&batch.prefix).await {
                    Ok(true) => return true,
                    Ok(false) => {}
                    // Unknown: keep the objects, so no manifest can point at a missing one.
                    Err(_) => return false,
                }
            }
            for entry in batch.stored.iter().flatten() {
                let key = Path::from(entry.key.as_str());
                if let Err(error) = timed(Op::Delete, &key, 0, self.store.delete(&key)).await {
                    tracing::warn!("could not remove {key} of an abandoned commit: {error}");
                }
            }
            false
        };
        tokio::time::timeout(ABANDON_TIMEOUT, cleanup).await.unwrap_or(false)
    }

    fn report(&self, error: &AttemptError) {
        self.ctx.health.failing(error.state(), error.kind(), error);
        tracing::debug!(kind = error.kind(), "object store attempt failed: {error:?}");
    }
}

impl AsyncCommitter for ObjectCommitter {
    /// Commits the batch, retrying until it is stored or the sidecar gives up.
    async fn commit(&self, commit: Commit, mut turn: Turn) {
        let Commit { files, ack } = commit;
        let id = commit_id::id_of(ack.first_seq);
        let prefix = self.prefix(&id);
        let keys = self.shape.keys(&prefix, ack.first_seq);
        let objects = body::plan(&files, &keys, self.shape.overwrite);
        let stored = vec![None; objects.len()];
        let replayed = ack.reason == SealReason::Replay;
        let mut batch =
            InFlight { id, prefix, ack: &ack, objects, stored, manifest_tried: replayed, unchecked_replay: replayed };
        let give_up = self.ctx.give_up.clone();
        let mut last_error = String::from("the sidecar was already giving up");
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut attempt = 0u64;
        let committed = loop {
            if give_up.is_cancelled() {
                break self.abandon(&batch).await;
            }
            attempt += 1;
            if attempt > 1 {
                METRICS.sink_retries.inc();
            }
            let result = tokio::select! {
                result = self.attempt(&mut batch, &mut turn) => result,
                () = give_up.cancelled() => continue,
            };
            match result {
                Ok(()) => {
                    self.ctx.health.up();
                    break true;
                }
                Err(error) => {
                    self.report(&error);
                    last_error = format!("attempt {attempt}: {error}");
                }
            }
            give_up.sleep(backoff.next_delay()).await;
        };
        // Batches settle in order, a failed one too.
        turn.wait().await;
        let id = batch.id;
        match committed {
            true => ack.committed(Receipt { objects: Some(keys), ..self.ctx.receipt(id, &files) }),
            false => ack.failed(format_args!("gave up at shutdown; {last_error}")),
        }
    }

    /// Lists one page under `DIR/`: that needs the bucket and the credentials.
    async fn probe(&self) {
        let prefix = Path::from(self.uri.dir.as_str());
        let listed =
            timed(Op::List, &prefix, 0, async { self.store.list(Some(&prefix)).next().await.transpose().map(|_| ()) })
                .await;
        match listed {
            Ok(()) => self.ctx.health.up(),
            Err(error) => self.report(&AttemptError::from_request(self.uri.bucket(), error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_of_generic_errors() {
        let error = |text: &str| object_store::Error::Generic { store: "S3", source: text.to_owned().into() };
        let listing = error(
            "Error performing GET http://x/b?list-type=2 - Server returned non-2xx status code: 404 Not Found: <Error>",
        );
        assert_eq!(generic_status(&listing), Some(404));
        assert_eq!(generic_status(&error("HTTP error: connection refused")), None);
        let request = RequestError { op: Op::List, key: "d".into(), source: listing };
        assert_eq!(AttemptError::from_request("b", request).kind(), "missing_bucket");
        let forbidden = error("... non-2xx status code: 403 Forbidden: <Error><Code>InvalidAccessKeyId</Code>");
        let request = RequestError { op: Op::List, key: "d".into(), source: forbidden };
        assert_eq!(AttemptError::from_request("b", request).state(), SinkState::Down);
    }
}
