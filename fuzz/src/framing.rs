//! Checks for the framing decoders: NDJSON lines, length frames and the whole body on
//! the HTTP path (a complete body in chunks), and the same splitter fed read by read
//! as the raw socket feeds it.
//!
//! Lines and frames are checked against reference decoders written here over the flat
//! body: the decoder must give exactly their messages, or fail exactly where and how
//! they fail. Messages must be zero-copy slices of the body's chunks, and the raw
//! socket's read buffer must never hold more than one message's limit plus a header.

use bytes::{Bytes, BytesMut};
use spout_sidecar::ingest::framing::split::{Splitter, Unit};
use spout_sidecar::ingest::framing::{decode, DecodeError, DecodeErrorKind, Framing};
use spout_sidecar::message::{Incoming, Payload};

use super::block_on;
use super::knobs::{cut, Knobs};

const LENGTH_BYTES: usize = 4;

/// Where and how a body must fail: the error's kind, and the start of its message
/// (`line 3 (starting at byte 10)`), which the client sees.
#[derive(Debug)]
struct Failure {
    kind: DecodeErrorKind,
    at: String,
}

impl Failure {
    fn new(kind: DecodeErrorKind, unit: &str, number: usize, offset: usize) -> Self {
        Self { kind, at: format!("{unit} {number} (starting at byte {offset})") }
    }

    fn assert_matches(&self, error: &DecodeError) {
        assert_eq!(error.kind, self.kind, "{error}");
        assert!(error.message.starts_with(&self.at), "expected {:?}, got {:?}", self.at, error.message);
    }
}

/// The messages before the first failure, and the failure if there is one.
type Outcome<'a> = (Vec<&'a [u8]>, Option<Failure>);

/// Lines as docs/http-api.md states them: split at every `\n`, skip empty lines, the
/// last one counts without `\n`; a line over `max` fails.
fn reference_lines(body: &[u8], max: usize) -> Outcome<'_> {
    let mut lines = Vec::new();
    let mut offset = 0;
    for (index, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.len() > max {
            return (lines, Some(Failure::new(DecodeErrorKind::TooLarge, "line", index + 1, offset)));
        }
        if !line.is_empty() {
            lines.push(line);
        }
        offset += line.len() + 1;
    }
    (lines, None)
}

/// Frames as docs/http-api.md states them: 4-byte big-endian length, then that many bytes.
fn reference_frames(body: &[u8], max: usize) -> Outcome<'_> {
    let mut frames = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let failure = |kind| Some(Failure::new(kind, "frame", frames.len() + 1, body.len() - rest.len()));
        let Some((header, tail)) = rest.split_first_chunk::<LENGTH_BYTES>() else {
            return (frames.clone(), failure(DecodeErrorKind::BadFraming));
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len > max {
            return (frames.clone(), failure(DecodeErrorKind::TooLarge));
        }
        if tail.len() < len {
            return (frames.clone(), failure(DecodeErrorKind::BadFraming));
        }
        let (frame, tail) = tail.split_at(len);
        frames.push(frame);
        rest = tail;
    }
    (frames, None)
}

fn reference(unit: Unit, body: &[u8], max: usize) -> Outcome<'_> {
    match unit {
        Unit::Line => reference_lines(body, max),
        Unit::Frame => reference_frames(body, max),
    }
}

/// The knobs every HTTP-path target reads: the message limit and the chunk sizes.
pub(super) fn http_body(data: &[u8]) -> (usize, &[u8], Vec<Bytes>) {
    let mut knobs = Knobs::new(data);
    let max = usize::from(knobs.u16());
    let sizes = knobs.sizes();
    let body = knobs.rest();
    (max, body, cut(body, &sizes))
}

pub(super) fn decode_http(framing: Framing, chunks: &[Bytes], max: usize) -> Result<Vec<Incoming>, DecodeError> {
    block_on(decode(&framing, chunks.to_vec(), None, max as u64))
}

/// Whether every slice of `payload` lies inside one of the body's chunks: no copy.
pub(super) fn is_slice_of(chunks: &[Bytes], payload: &Payload) -> bool {
    payload.chunks().iter().all(|slice| {
        let slice = slice.as_ptr_range();
        chunks.iter().any(|chunk| {
            let chunk = chunk.as_ptr_range();
            chunk.start <= slice.start && slice.end <= chunk.end
        })
    })
}

/// Asserts an HTTP-path result against the reference: all the messages, or the
/// reference's failure and nothing (a body is all or nothing).
fn assert_agrees(got: Result<Vec<Incoming>, DecodeError>, (expected, failure): Outcome, chunks: &[Bytes], line: bool) {
    match (got, failure) {
        (Ok(messages), None) => {
            let payloads: Vec<Vec<u8>> = messages.iter().map(|m| m.payload.to_vec()).collect();
            assert_eq!(payloads, expected);
            for message in &messages {
                assert!(is_slice_of(chunks, &message.payload), "a message was copied");
                assert_eq!((message.name.as_deref(), message.line), (None, line));
            }
        }
        (Err(error), Some(failure)) => failure.assert_matches(&error),
        (got, failure) => panic!("the decoder gave {got:?}, the reference {failure:?}"),
    }
}

/// `application/x-ndjson` on the HTTP path.
pub fn ndjson_lines(data: &[u8]) {
    let (max, body, chunks) = http_body(data);
    let got = decode_http(Framing::Lines, &chunks, max);
    assert_agrees(got, reference_lines(body, max), &chunks, true);
}

/// `application/vnd.spout.frames` on the HTTP path; a decoded body re-encodes to itself.
pub fn length_frames(data: &[u8]) {
    let (max, body, chunks) = http_body(data);
    let got = decode_http(Framing::Frames, &chunks, max);
    if let Ok(messages) = &got {
        let mut encoded = Vec::with_capacity(body.len());
        for message in messages {
            encoded.extend_from_slice(&(message.payload.len() as u32).to_be_bytes());
            encoded.extend_from_slice(&message.payload.to_vec());
        }
        assert_eq!(encoded, body, "frames do not re-encode to the body");
    }
    assert_agrees(got, reference_frames(body, max), &chunks, false);
}

/// Any other Content-Type: the whole body is one message, or too large.
pub fn whole_body(data: &[u8]) {
    let (max, body, chunks) = http_body(data);
    match decode_http(Framing::Whole, &chunks, max) {
        Ok(messages) => {
            assert!(body.len() <= max, "a {}-byte body passed a {max}-byte limit", body.len());
            let [message] = &messages[..] else { panic!("{} messages from one body", messages.len()) };
            assert_eq!(message.payload.to_vec(), body);
            assert!(is_slice_of(&chunks, &message.payload), "the body was copied");
        }
        Err(error) => {
            assert!(body.len() > max, "a {}-byte body failed a {max}-byte limit: {error}", body.len());
            assert_eq!(error.kind, DecodeErrorKind::TooLarge);
        }
    }
}

/// The raw socket's path: the stream arrives read by read into one buffer, messages
/// are split off as they complete, and the end of the stream is signalled last.
/// It must give the reference's messages in order, then its failure if it has one.
pub fn raw_splitter(data: &[u8]) {
    let mut knobs = Knobs::new(data);
    let unit = if knobs.byte() & 1 == 0 { Unit::Line } else { Unit::Frame };
    let max = usize::from(knobs.u16());
    let sizes = knobs.sizes();
    let body = knobs.rest();
    let (expected, failure) = reference(unit, body, max);
    let (messages, error) = feed(unit, max, cut(body, &sizes));
    assert_eq!(messages, expected);
    match (error, failure) {
        (None, None) => {}
        (Some(error), Some(failure)) => failure.assert_matches(&error),
        (error, failure) => panic!("the splitter gave {error:?}, the reference {failure:?}"),
    }
}

/// Feeds `reads` to a splitter as the raw socket does: the messages it split off, and
/// the error that stopped it.
fn feed(unit: Unit, max: usize, reads: Vec<Bytes>) -> (Vec<Bytes>, Option<DecodeError>) {
    let mut splitter = Splitter::new(unit, max as u64);
    let mut buffer = BytesMut::new();
    let mut messages = Vec::new();
    let ended = reads.len();
    for (index, read) in reads.iter().map(Some).chain([None]).enumerate() {
        if let Some(read) = read {
            buffer.extend_from_slice(read);
        }
        loop {
            match splitter.next(&mut buffer, index == ended) {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(error) => return (messages, Some(error)),
            }
        }
        assert!(
            buffer.len() <= max + LENGTH_BYTES,
            "{} bytes left buffered waiting for more, over the {max}-byte limit plus a header",
            buffer.len()
        );
    }
    assert!(buffer.is_empty(), "{} bytes left over after the stream ended", buffer.len());
    (messages, None)
}
