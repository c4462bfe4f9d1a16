//! `POST /messages`: read the body within its limits, undoing its `Content-Encoding` as it
//! arrives, cut it into messages by the framing it names or its `Content-Type`,
//! admit it all or nothing, and answer 202, or 200 once committed with `wait=commit`
//! (and once the pipelines downstream have finished with `wait=downstream`).
//! A request with `Idempotency-Key` that was seen before is answered from the first.

// A rejection carries its whole response; boxing it would only move the bytes
// around on a path that is not hot.
#![allow(clippy::result_large_err)]

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming as Body;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT_ENCODING, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, StatusCode};
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use super::commits;
use super::encoding::{self, Coding, Decoder, EncodingError};
use super::query::{RequestOptions, Wait};
use super::reply::{self, Reply};
use super::Api;
use crate::ack::{CommitError, Verdict};
use crate::encode::Layout;
use crate::ingest::framing::{self, DecodeError, DecodeErrorKind, Framing};
use crate::ingest::idempotency::{fingerprint, Admission, Begin, FirstRequest};
use crate::ingest::{AdmitOptions, Answer, FullBudget, Refused, Transport};
use crate::message::file_name;
use crate::metrics::METRICS;

/// The answer to a POST; a `wait=commit` answer borrows the names it gives from the
/// commit's receipt, which a whole batch of answers shares.
#[derive(Serialize)]
struct Accepted<'a> {
    accepted: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    commit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<Vec<Cow<'a, str>>>,
    /// With an object-store sink, the keys of the objects holding `files`.
    #[serde(skip_serializing_if = "Option::is_none")]
    objects: Option<Vec<String>>,
}

pub async fn post(api: &Api, transport: Transport, request: Request<Body>) -> Reply {
    match accept(api, transport, request).await {
        Ok(reply) => reply,
        Err(rejection) => {
            if let Some(reason) = rejection.uncounted_reason {
                METRICS.messages_rejected.with_label_values(&[reason]).inc();
            }
            rejection.reply
        }
    }
}

/// A refused request, with the reason label it is still to be counted under
/// (admission refusals are counted by `Intake` itself).
struct Rejection {
    uncounted_reason: Option<&'static str>,
    reply: Reply,
}

impl Rejection {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self { uncounted_reason: Some(reason), reply: reply::error(status, reason, message) }
    }

    /// For a refusal that leaves the body unread: the connection closes after the
    /// answer (the rest of a 10 GiB body is not worth reading to keep it), and
    /// `Connection: close` tells the client so, rather than letting it pipeline
    /// further requests into a connection about to end.
    fn closing(mut self) -> Self {
        self.reply.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        self
    }
}

impl From<DecodeError> for Rejection {
    fn from(error: DecodeError) -> Self {
        let (status, reason) = match error.kind {
            DecodeErrorKind::BadFraming => (StatusCode::BAD_REQUEST, "bad_framing"),
            DecodeErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            DecodeErrorKind::BadFileName => (StatusCode::UNPROCESSABLE_ENTITY, "bad_file_name"),
        };
        Rejection::new(status, reason, error.message)
    }
}

async fn accept(api: &Api, transport: Transport, request: Request<Body>) -> Result<Reply, Rejection> {
    let Received { options, headers, framing, body } = receive(api, request).await.map_err(Rejection::closing)?;
    let ticket = match idempotency_key(&headers)? {
        None => None,
        Some(key) => {
            let fingerprint = fingerprint(&body, content_type(&headers), options.framing, options.file.as_deref());
            loop {
                match api.idempotency.begin(key, fingerprint) {
                    Begin::First(ticket) => break Some(ticket),
                    Begin::Replay(progress) => {
                        if let Some(reply) = replay(api, progress, &options).await {
                            return Ok(reply);
                        }
                    }
                    Begin::Conflict => {
                        return Err(Rejection::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "idempotency_key_reused",
                            format!("Idempotency-Key {key} was used before with a different request"),
                        ))
                    }
                }
            }
        }
    };
    let messages = framing::decode(&framing, body, options.file.as_deref(), api.max_message_bytes).await?;
    if messages.is_empty() {
        let status = if options.wait_commit() { StatusCode::OK } else { StatusCode::ACCEPTED };
        let files = options.wait_commit().then(Vec::new);
        return Ok(reply::json(
            status,
            &Accepted { accepted: 0, first_seq: None, last_seq: None, commit: None, files, objects: None },
        ));
    }
    let count = messages.len() as u64;
    let names = messages.iter().map(|m| m.name.clone()).collect();
    let wants_verdict = options.wait_commit() || ticket.is_some();
    let answer = if wants_verdict { Answer::Committed } else { Answer::Accepted };
    let how = AdmitOptions { transport, answer, when_full: FullBudget::AsConfigured };
    let admitted = api.intake.admit(messages, how).await.map_err(refused)?;
    let admission = Arc::new(Admission { count, seqs: admitted.seqs, names });
    if let Some(ticket) = &ticket {
        ticket.accepted(admission.clone());
    }
    let Some(verdict) = admitted.verdict else {
        return Ok(accepted_reply(&admission));
    };
    if !options.wait_commit() {
        if let Some(ticket) = ticket {
            // Retries asking wait=commit need the verdict even if this request does not.
            tokio::spawn(async move { ticket.settled(received(verdict.await)) });
        }
        return Ok(accepted_reply(&admission));
    }
    let waiting = Instant::now();
    let verdict = received(verdict.await);
    METRICS.ack_wait.observe(waiting.elapsed().as_secs_f64());
    if let Some(ticket) = ticket {
        ticket.settled(verdict.clone());
    }
    Ok(settled_reply(api, &admission, &verdict, &options).await)
}

/// A request read whole and checked as far as its headers go.
struct Received {
    options: RequestOptions,
    headers: HeaderMap,
    framing: Framing,
    body: Vec<Bytes>,
}

/// Checks the request's head and reads its body. A refusal from here on leaves the
/// body unread, at least in part.
async fn receive(api: &Api, request: Request<Body>) -> Result<Received, Rejection> {
    if api.intake.is_draining() {
        return Err(draining());
    }
    let options = RequestOptions::parse(request.uri().query(), request.headers())
        .map_err(|bad| Rejection::new(StatusCode::BAD_REQUEST, "bad_request", bad.to_string()))?;
    if options.wait == Wait::Downstream {
        api.reader
            .follows_downstream()
            .map_err(|no| Rejection::new(StatusCode::BAD_REQUEST, "bad_request", no.to_string()))?;
    }
    if let Some(name) = &options.file {
        file_name::validate(name)
            .map_err(|why| Rejection::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_file_name", why.to_string()))?;
    }
    let (head, body) = request.into_parts();
    let framing = Framing::choose(options.framing, content_type(&head.headers))?;
    let coding = Coding::from_headers(&head.headers).map_err(|e| undecodable(e, Coding::Identity, false))?;
    let body =
        within(api.body_timeout, read_body(api, &head.headers, body, coding, &framing)).await.ok_or_else(|| {
            Rejection::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("the body did not arrive within --body-timeout ({:?})", api.body_timeout),
            )
        })??;
    Ok(Received { options, headers: head.headers, framing, body })
}

/// `future`'s output, or `None` if it takes longer than `limit`. A small body has
/// usually arrived with its head: the timer (whose setting and dropping each take
/// the timer driver's lock) is only set if the body must be waited for.
async fn within<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let first = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await;
    if let Poll::Ready(output) = first {
        return Some(output);
    }
    tokio::time::timeout(limit, future).await.ok()
}

/// The request's `Content-Type`; one that is not UTF-8 as a string no type matches.
fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(CONTENT_TYPE).map(|v| v.to_str().unwrap_or("\u{0}"))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, Rejection> {
    const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= 255 => Ok(Some(key)),
        _ => Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// Answers a retry from the first request's progress; `None` if the first request
/// was refused, so the retry must be processed as new.
async fn replay(api: &Api, mut progress: watch::Receiver<FirstRequest>, options: &RequestOptions) -> Option<Reply> {
    let wait_commit = options.wait_commit();
    let settled_enough = |p: &FirstRequest| match p {
        FirstRequest::Pending => false,
        FirstRequest::Accepted(_) => !wait_commit,
        FirstRequest::Settled(..) | FirstRequest::Abandoned => true,
    };
    let progress = match progress.wait_for(settled_enough).await {
        Ok(progress) => progress.clone(),
        Err(_) => return None,
    };
    match progress {
        FirstRequest::Pending | FirstRequest::Abandoned => None,
        FirstRequest::Accepted(admission) => Some(accepted_reply(&admission)),
        FirstRequest::Settled(admission, _) if !wait_commit => Some(accepted_reply(&admission)),
        FirstRequest::Settled(admission, verdict) => Some(settled_reply(api, &admission, &verdict, options).await),
    }
}

fn received(verdict: Result<Verdict, oneshot::error::RecvError>) -> Verdict {
    verdict.unwrap_or_else(|_| Err(CommitError("the sink stopped before answering for this batch".into())))
}

fn accepted_reply(admission: &Admission) -> Reply {
    reply::json(
        StatusCode::ACCEPTED,
        &Accepted {
            accepted: admission.count,
            first_seq: Some(admission.seqs.first),
            last_seq: Some(admission.seqs.last),
            commit: None,
            files: None,
            objects: None,
        },
    )
}

/// The answer to `wait=commit`: 200 with the commit and the request's files, or 502;
/// to `wait=downstream`, that once the commits downstream are finished.
async fn settled_reply(api: &Api, admission: &Admission, verdict: &Verdict, options: &RequestOptions) -> Reply {
    let receipt = match verdict {
        Ok(receipt) => receipt,
        Err(error) => return reply::error(StatusCode::BAD_GATEWAY, "commit_failed", error.0.clone()),
    };
    let files = match api.layout {
        Layout::Batch => receipt.batch_file.iter().map(|file| Cow::Borrowed(file.as_str())).collect(),
        Layout::Message => admission
            .names
            .iter()
            .zip(admission.seqs.first..)
            .map(|(name, seq)| match name {
                Some(name) => Cow::Borrowed(name.as_str()),
                None => Cow::Owned(file_name::default_name(seq)),
            })
            .fold(Vec::new(), |mut files: Vec<Cow<str>>, file| {
                // Messages appended to one file name it once.
                if files.last() != Some(&file) {
                    files.push(file);
                }
                files
            }),
    };
    let objects = receipt.objects.as_ref().map(|keys| {
        let mut objects: Vec<String> = files.iter().map(|file| keys.key(file)).collect();
        // Every file of a tar object names the same key.
        objects.dedup();
        objects
    });
    let answer = Accepted {
        accepted: admission.count,
        first_seq: Some(admission.seqs.first),
        last_seq: Some(admission.seqs.last),
        commit: Some(&receipt.commit),
        files: Some(files),
        objects,
    };
    match options.wait {
        Wait::Downstream => commits::downstream_of_post(api, &answer, &receipt.commit, options).await,
        _ => reply::json(StatusCode::OK, &answer),
    }
}

/// Reads the whole body, decoding its `Content-Encoding` as it arrives, and refuses it
/// (413) as soon as it passes `--max-request-bytes`, coded or decoded, before reading
/// further. A body that is one message is held to `--max-message-bytes` the same way.
async fn read_body(
    api: &Api,
    headers: &HeaderMap,
    mut body: Body,
    coding: Coding,
    framing: &Framing,
) -> Result<Vec<Bytes>, Rejection> {
    let limit = api.max_request_bytes;
    let too_large = |size: &str| {
        Rejection::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body of {size} is over --max-request-bytes ({limit} bytes)"),
        )
    };
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared.filter(|&n| n > limit) {
        return Err(too_large(&format!("{declared} bytes")));
    }
    let one_message = *framing == Framing::Whole && api.max_message_bytes < limit;
    let decoded_limit = if one_message { api.max_message_bytes } else { limit };
    let mut decoder = Decoder::new(coding, decoded_limit);
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            Rejection::new(StatusCode::BAD_REQUEST, "bad_request", format!("reading the body failed: {error}"))
        })?;
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            if total > limit {
                return Err(too_large("more than that"));
            }
            decoder.push(data).map_err(|e| undecodable(e, coding, one_message))?;
        }
    }
    let body = decoder.finish().map_err(|e| undecodable(e, coding, one_message))?;
    // Decoded chunks are the sidecar's own, sized to their bytes: nothing to unpin.
    Ok(if coding == Coding::Identity { unpin(body, total) } else { body })
}

/// The refusal of a body whose coding is unsupported or failed, or that passed its
/// limit (`one_message`: `--max-message-bytes`, else `--max-request-bytes`).
fn undecodable(error: EncodingError, coding: Coding, one_message: bool) -> Rejection {
    let decoded = if coding == Coding::Identity { "" } else { " once decoded" };
    match error {
        EncodingError::OverLimit { limit } if one_message => Rejection::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the body is one message of more than {limit} bytes{decoded}, over --max-message-bytes \
                 ({limit} bytes); send {} or {} to send several",
                framing::NDJSON,
                framing::FRAMES
            ),
        ),
        EncodingError::OverLimit { limit } => Rejection::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body of more than {limit} bytes{decoded} is over --max-request-bytes ({limit} bytes)"),
        ),
        EncodingError::Corrupt { .. } => Rejection::new(StatusCode::BAD_REQUEST, "bad_encoding", error.to_string()),
        EncodingError::Unsupported(_) | EncodingError::Stacked(_) => {
            let mut rejection =
                Rejection::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding", error.to_string());
            rejection.reply.headers_mut().insert(ACCEPT_ENCODING, HeaderValue::from_static(encoding::SUPPORTED));
            rejection
        }
    }
}

const DRAINING: &str = "the sidecar is shutting down and takes no more messages";

/// Bodies below this are copied out of hyper's read buffers whole.
const COPY_BELOW: u64 = 64 * 1024;

/// A body's chunks are slices of hyper's read buffers (8 KiB up to
/// [`super::READ_BUFFER_BYTES`]), and each would keep its whole buffer alive until its
/// batch commits, out of the memory budget's sight. A chunk that fills most of its
/// buffer costs little; a short one pins many times its size: a 100-byte message 80
/// times, and the last bytes of a large body, read into a fresh buffer, up to a whole
/// buffer (64 KiB messages took twice the memory the budget counted). So a small body
/// is copied whole, and a large body's chunks under half a buffer are copied: its
/// long chunks, nearly all of its bytes, stay zero-copy.
fn unpin(chunks: Vec<Bytes>, total: u64) -> Vec<Bytes> {
    if chunks.is_empty() {
        return chunks;
    }
    if total < COPY_BELOW {
        let mut body = Vec::with_capacity(total as usize);
        for chunk in &chunks {
            body.extend_from_slice(chunk);
        }
        return vec![Bytes::from(body)];
    }
    let short = super::READ_BUFFER_BYTES / 2;
    chunks.into_iter().map(|chunk| if chunk.len() < short { Bytes::copy_from_slice(&chunk) } else { chunk }).collect()
}

fn draining() -> Rejection {
    Rejection { uncounted_reason: Some("draining"), reply: reply::unavailable("overloaded", DRAINING, 5) }
}

/// Refusals from admission are already counted per message by `Intake`.
fn refused(why: Refused) -> Rejection {
    let reply = match why {
        Refused::Overloaded => reply::unavailable(
            "overloaded",
            "the buffer is full (--max-buffer-bytes); the sink is not keeping up, retry later",
            1,
        ),
        Refused::Draining => reply::unavailable("overloaded", DRAINING, 5),
        Refused::SinkDead => reply::unavailable(
            "sink_down",
            "a thread of the sink has died and nothing would commit these messages; the sidecar must be restarted",
            5,
        ),
        Refused::LargerThanBudget => reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the request is larger than the whole buffer (--max-buffer-bytes) or spool (--max-spool-bytes)",
        ),
        Refused::SpoolFull => reply::unavailable(
            "overloaded",
            "the disk spool is full (--max-spool-bytes); the sink is not keeping up, retry later",
            1,
        ),
        Refused::SpoolUnwritable => reply::unavailable(
            "spool_unwritable",
            "the disk spool (--spool-dir) cannot be written or synced: its disk is full, read-only or failing; \
             retry later",
            5,
        ),
    };
    Rejection { uncounted_reason: None, reply }
}

#[cfg(test)]
mod tests {
    use super::super::READ_BUFFER_BYTES;
    use super::*;

    /// Whether `chunk` is a slice of `buffer` (shares its memory) rather than a copy.
    fn slices(chunk: &Bytes, buffer: &Bytes) -> bool {
        buffer.as_ptr_range().contains(&chunk.as_ptr())
    }

    #[test]
    fn a_small_body_is_copied_whole_into_one_chunk() {
        let buffer = Bytes::from(vec![b'a'; 8192]);
        let unpinned = unpin(vec![buffer.slice(0..100), buffer.slice(200..300)], 200);
        assert_eq!(unpinned.len(), 1);
        assert_eq!(unpinned[0].len(), 200);
        assert!(!slices(&unpinned[0], &buffer));
    }

    #[test]
    fn a_large_body_keeps_its_long_chunks_and_copies_its_short_ones() {
        let full = Bytes::from(vec![b'b'; READ_BUFFER_BYTES]);
        let tail_buffer = Bytes::from(vec![b'c'; READ_BUFFER_BYTES]);
        let (long, tail) = (full.slice(150..), tail_buffer.slice(0..150));
        let total = (long.len() + tail.len()) as u64;
        let unpinned = unpin(vec![long.clone(), tail.clone()], total);
        assert_eq!(unpinned, vec![long, tail]);
        assert!(slices(&unpinned[0], &full), "the long chunk stays zero-copy");
        assert!(!slices(&unpinned[1], &tail_buffer), "the short tail no longer pins its buffer");
    }
}
