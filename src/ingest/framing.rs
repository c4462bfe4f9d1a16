//! Turns a request body into messages, by the framing the request names
//! (`?framing=` / `Spout-Framing:`, see [`Named`]) or else by its `Content-Type`.
//!
//! | framing name | Content-Type (parameters and case ignored) | messages |
//! |---|---|---|
//! | `ndjson` | `application/x-ndjson` | each line ([`split`] has the rules: `\n` ends a line, empty lines are skipped) |
//! | `frames` | `application/vnd.spout.frames` | each 4-byte big-endian length + bytes |
//! | `multipart` | `multipart/form-data; boundary=...` | each part ([`multipart`]) |
//! | `json-array` | none: `application/json` is one message | each element of one JSON array ([`json_array`]) |
//! | `raw` | anything else, or none | the whole body, even an empty one |
//!
//! Messages are zero-copy slices of the chunks the body arrived in, except multipart
//! parts (see [`multipart`]). Decoding is all or nothing: the first malformed frame,
//! oversize message or bad file name fails the whole body, and the error's `message`
//! (returned to the client) says which line, frame or part and what was wrong.

pub mod json_array;
pub mod multipart;
pub mod split;

use std::fmt;

use bytes::Bytes;

use self::split::{Chunks, Splitter, Unit};
use crate::message::file_name;
use crate::message::{Incoming, Payload};

pub const NDJSON: &str = "application/x-ndjson";
pub const FRAMES: &str = "application/vnd.spout.frames";
pub const MULTIPART: &str = "multipart/form-data";

/// How a body is cut into messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// The whole body is one message.
    Whole,
    /// `application/x-ndjson`: each `\n`-terminated line.
    Lines,
    /// `application/vnd.spout.frames`: 4-byte big-endian length, then the bytes.
    Frames,
    /// `multipart/form-data` with this boundary: each part.
    Multipart { boundary: String },
    /// One JSON array: each element.
    JsonArray,
}

/// A framing chosen by name, for senders that cannot set `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::EnumString)]
#[strum(serialize_all = "kebab-case")]
pub enum Named {
    Raw,
    Ndjson,
    Frames,
    Multipart,
    JsonArray,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeErrorKind {
    BadFraming,
    TooLarge,
    BadFileName,
}

impl DecodeErrorKind {
    /// The `error` of the JSON answer and the `reason` label of
    /// `spout_messages_rejected_total`.
    pub fn reason(self) -> &'static str {
        match self {
            DecodeErrorKind::BadFraming => "bad_framing",
            DecodeErrorKind::TooLarge => "too_large",
            DecodeErrorKind::BadFileName => "bad_file_name",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub kind: DecodeErrorKind,
    pub message: String,
}

impl DecodeError {
    pub fn bad_framing(message: String) -> Self {
        Self { kind: DecodeErrorKind::BadFraming, message }
    }

    pub fn too_large(message: String) -> Self {
        Self { kind: DecodeErrorKind::TooLarge, message }
    }

    pub fn bad_file_name(message: String) -> Self {
        Self { kind: DecodeErrorKind::BadFileName, message }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.reason(), self.message)
    }
}

impl std::error::Error for DecodeError {}

impl Framing {
    /// The framing a request asks for: by name if it names one, else by `Content-Type`.
    /// `multipart` by name still takes its boundary from `Content-Type`.
    pub fn choose(named: Option<Named>, content_type: Option<&str>) -> Result<Framing, DecodeError> {
        Ok(match named {
            None => Framing::from_content_type(content_type)?,
            Some(Named::Raw) => Framing::Whole,
            Some(Named::Ndjson) => Framing::Lines,
            Some(Named::Frames) => Framing::Frames,
            Some(Named::JsonArray) => Framing::JsonArray,
            Some(Named::Multipart) => Framing::Multipart { boundary: multipart::boundary(content_type.unwrap_or(""))? },
        })
    }

    /// The framing `Content-Type` asks for: its media type decides; one that is
    /// not a media type at all is "anything else".
    pub fn from_content_type(content_type: Option<&str>) -> Result<Framing, DecodeError> {
        let Some(content_type) = content_type else { return Ok(Framing::Whole) };
        let media_type = media_type(content_type);
        let is = |known: &str| media_type.eq_ignore_ascii_case(known);
        Ok(if is(NDJSON) {
            Framing::Lines
        } else if is(FRAMES) {
            Framing::Frames
        } else if is(MULTIPART) {
            Framing::Multipart { boundary: multipart::boundary(content_type)? }
        } else {
            Framing::Whole
        })
    }
}

/// The media type of a `Content-Type` (`type/subtype`, to compare without regard to
/// case), without its parameters: RFC 9110 allows whitespace before a `;`, and a
/// parameter that cannot be read must not turn an NDJSON body into one message.
/// Compared with the three types that name a framing as it stands, since anything
/// else means one message: parsing it (as a `Mime`) would cost an allocation on
/// every request. The multipart boundary is read from the whole header.
fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// Decodes a whole body, given as the chunks it arrived in. `name` (from
/// `Spout-File` / `?file=`) is checked here and names every message a multipart
/// filename does not. All or nothing: the first bad frame, oversize message or bad
/// name fails the whole body. An NDJSON or frames body may hold zero messages.
pub async fn decode(
    framing: &Framing,
    body: Vec<Bytes>,
    name: Option<&str>,
    max_message_bytes: u64,
) -> Result<Vec<Incoming>, DecodeError> {
    if let Some(name) = name {
        file_name::validate(name).map_err(|why| DecodeError::bad_file_name(why.to_string()))?;
    }
    let named = |payload, line| Incoming { name: name.map(str::to_owned), payload, line, origin: None };
    match framing {
        Framing::Whole => {
            let payload = Payload::from(body);
            if payload.len() > max_message_bytes {
                return Err(DecodeError::too_large(format!(
                    "the body is one message of {} bytes, over the {max_message_bytes}-byte message limit \
                     (--max-message-bytes); send {NDJSON} or {FRAMES} to send several",
                    payload.len()
                )));
            }
            Ok(vec![named(payload, false)])
        }
        Framing::Lines | Framing::Frames => {
            let (unit, line) = match framing {
                Framing::Lines => (Unit::Line, true),
                _ => (Unit::Frame, false),
            };
            let mut splitter = Splitter::new(unit, max_message_bytes);
            let mut body = Chunks::from(body);
            let mut messages = Vec::new();
            while let Some(payload) = splitter.next(&mut body, true)? {
                messages.push(named(payload, line));
            }
            Ok(messages)
        }
        Framing::Multipart { boundary } => multipart::decode(boundary, body, name, max_message_bytes).await,
        Framing::JsonArray => {
            // Appended to one file, elements become NDJSON, as lines do.
            Ok(json_array::split(Chunks::from(body), max_message_bytes)?.into_iter().map(|e| named(e, true)).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split::encode::{cut, frames, is_slice_of, lines};
    use super::*;
    use proptest::prelude::*;

    fn framing(content_type: &str) -> Framing {
        Framing::from_content_type(Some(content_type)).unwrap()
    }

    fn run(framing: &Framing, body: Vec<Bytes>, name: Option<&str>, max: u64) -> Result<Vec<Incoming>, DecodeError> {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(decode(framing, body, name, max))
    }

    #[test]
    fn content_types_tolerate_case_and_parameters() {
        assert_eq!(Framing::from_content_type(None), Ok(Framing::Whole));
        assert_eq!(framing("Application/X-NDJSON; charset=utf-8"), Framing::Lines);
        assert_eq!(framing(" application/vnd.spout.frames "), Framing::Frames);
        assert_eq!(framing("text/plain; charset=utf-8"), Framing::Whole);
        assert_eq!(framing("application/ndjsonish"), Framing::Whole);
        assert_eq!(framing(""), Framing::Whole);
        assert_eq!(framing("application/x-ndjson ; charset=utf-8"), Framing::Lines, "RFC 9110 allows the space");
        assert_eq!(framing("application/x-ndjson; charset"), Framing::Lines, "a bad parameter is ignored");
        assert_eq!(framing("application/x-ndjson junk"), Framing::Whole);
        assert_eq!(framing("\u{0}"), Framing::Whole);
        assert_eq!(
            framing("Multipart/Form-Data; charset=utf-8; boundary=\"a b\""),
            Framing::Multipart { boundary: "a b".into() }
        );
    }

    #[test]
    fn multipart_without_a_boundary_is_bad_framing() {
        let e = Framing::from_content_type(Some("multipart/form-data")).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::BadFraming);
        assert!(e.message.contains("boundary"), "{}", e.message);
    }

    #[test]
    fn whole_body_is_one_zero_copy_message_even_when_empty() {
        let body = cut(b"hello world", &[5]);
        let messages = run(&Framing::Whole, body.clone(), Some("greeting.txt"), 11).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].payload.to_vec(), b"hello world");
        assert_eq!(messages[0].payload.chunks().len(), 2);
        assert!(is_slice_of(&body, &messages[0].payload));
        assert_eq!((messages[0].name.as_deref(), messages[0].line), (Some("greeting.txt"), false));
        assert!(run(&Framing::Whole, vec![], None, 11).unwrap()[0].payload.is_empty());
    }

    #[test]
    fn whole_body_over_the_limit_is_too_large() {
        let e = run(&Framing::Whole, cut(b"hello world", &[]), None, 10).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::TooLarge);
        assert!(e.message.starts_with("the body is one message of 11 bytes"), "{}", e.message);
    }

    #[test]
    fn ndjson_lines_are_line_messages_sharing_the_name() {
        let messages = run(&Framing::Lines, cut(b"{}\n[]\n", &[3]), Some("events.ndjson"), 10).unwrap();
        assert_eq!(messages.len(), 2);
        assert!(messages.iter().all(|m| m.line && m.name.as_deref() == Some("events.ndjson")));
        assert!(run(&Framing::Lines, vec![], None, 10).unwrap().is_empty());
    }

    #[test]
    fn frames_are_not_lines() {
        let messages = run(&Framing::Frames, cut(&frames(&[b"x".to_vec()]), &[]), None, 10).unwrap();
        assert_eq!((messages.len(), messages[0].line), (1, false));
    }

    #[test]
    fn a_bad_name_fails_the_body_whatever_the_framing() {
        for framing in [Framing::Whole, Framing::Lines, Framing::Frames] {
            let e = run(&framing, cut(b"x", &[]), Some("../x"), 10).unwrap_err();
            assert_eq!(e.kind, DecodeErrorKind::BadFileName);
        }
    }

    #[test]
    fn one_bad_frame_fails_the_whole_body() {
        let mut body = frames(&[b"good".to_vec(), b"good".to_vec()]);
        body.extend_from_slice(&100u32.to_be_bytes());
        let e = run(&Framing::Frames, cut(&body, &[]), None, 1000).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::BadFraming);
        assert!(e.message.starts_with("frame 3 "), "{}", e.message);
        let e = run(&Framing::Lines, cut(b"ok\nfine\nmuch too long\n", &[]), None, 5).unwrap_err();
        assert!(e.message.starts_with("line 3 "), "{}", e.message);
    }

    proptest! {
        #[test]
        fn every_framing_round_trips_over_random_chunks(
            messages in prop::collection::vec(prop::collection::vec(1u8..=255, 1..64), 1..12),
            cuts in prop::collection::vec(0usize..2000, 0..10),
        ) {
            let messages: Vec<Vec<u8>> = messages
                .into_iter()
                .map(|m| m.into_iter().map(|b| if b == b'\n' { b'.' } else { b }).collect())
                .collect();
            let boundary = "spout-boundary-7f3a";
            let cases = [
                (Framing::Lines, lines(&messages, true)),
                (Framing::Frames, frames(&messages)),
                (
                    Framing::Multipart { boundary: boundary.into() },
                    multipart::encode(boundary, &messages.iter().map(|m| (None, &m[..])).collect::<Vec<_>>()),
                ),
            ];
            for (framing, stream) in cases {
                let decoded = run(&framing, cut(&stream, &cuts), None, 64).unwrap();
                let decoded: Vec<Vec<u8>> = decoded.iter().map(|m| m.payload.to_vec()).collect();
                prop_assert_eq!(&decoded, &messages, "{:?}", framing);
            }
            let whole = run(&Framing::Whole, cut(&messages[0], &cuts), None, 64).unwrap();
            prop_assert_eq!(whole[0].payload.to_vec(), messages[0].clone());
        }
    }
}
