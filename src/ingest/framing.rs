//! Turns a request body into messages, by `Content-Type`. (Stub: being written.)

use bytes::Bytes;

use crate::message::Incoming;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeErrorKind {
    BadFraming,
    TooLarge,
    BadFileName,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub kind: DecodeErrorKind,
    pub message: String,
}

impl Framing {
    /// The framing `Content-Type` asks for.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Framing, DecodeError> {
        let _ = content_type;
        Ok(Framing::Whole)
    }
}

/// Decodes a whole body, given as the chunks it arrived in. Every message is a
/// zero-copy slice of those chunks; `name` (from `Spout-File` / `?file=`) names every
/// message a multipart filename does not. All or nothing: the first bad frame or
/// oversize message fails the whole body.
pub async fn decode(
    framing: &Framing,
    body: Vec<Bytes>,
    name: Option<&str>,
    max_message_bytes: u64,
) -> Result<Vec<Incoming>, DecodeError> {
    let _ = (framing, max_message_bytes);
    Ok(vec![Incoming { name: name.map(str::to_owned), payload: body.into(), line: false }])
}
