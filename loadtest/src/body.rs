//! Request bodies in every framing the sidecar reads, built from generated messages
//! without copying large payloads: small pieces are gathered into one buffer, large
//! ones go out as slices of the filler pool.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use crate::msg::Generated;

/// How the messages of one request (or one raw-socket write) are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// The whole body is one message (`application/octet-stream`).
    Raw,
    /// Newline-terminated lines (`application/x-ndjson`; `lines` on the raw socket).
    Ndjson,
    /// 4-byte big-endian length, then the bytes (`application/vnd.spout.frames`).
    Frames,
    /// `multipart/form-data`, one part per message.
    Multipart,
}

const BOUNDARY: &str = "loadtest-boundary-7f3a";
/// Pieces at least this long are sent as their own slice rather than copied.
const SHARE_AT: usize = 16 << 10;

impl Framing {
    pub fn content_type(self) -> String {
        match self {
            Framing::Raw => "application/octet-stream".into(),
            Framing::Ndjson => "application/x-ndjson".into(),
            Framing::Frames => "application/vnd.spout.frames".into(),
            Framing::Multipart => format!("multipart/form-data; boundary={BOUNDARY}"),
        }
    }

    /// Whether `--layout batch` ends each message of this framing with `\n`.
    pub fn is_line_oriented(self) -> bool {
        self == Framing::Ndjson
    }
}

/// Accumulates a body as a list of chunks.
#[derive(Default)]
pub struct Chunks {
    done: Vec<Bytes>,
    small: BytesMut,
    len: u64,
}

impl Chunks {
    fn copy(&mut self, bytes: &[u8]) {
        self.small.put_slice(bytes);
        self.len += bytes.len() as u64;
    }

    fn share(&mut self, bytes: &Bytes) {
        if bytes.len() < SHARE_AT {
            return self.copy(bytes);
        }
        if !self.small.is_empty() {
            self.done.push(self.small.split().freeze());
        }
        self.len += bytes.len() as u64;
        self.done.push(bytes.clone());
    }

    fn message(&mut self, message: &Generated) {
        self.copy(&message.head);
        self.share(&message.filler);
    }

    pub fn finish(mut self) -> ChunkBody {
        if !self.small.is_empty() {
            self.done.push(self.small.split().freeze());
        }
        ChunkBody { chunks: self.done.into(), len: self.len }
    }
}

/// Frames `messages` as one body (for `Raw`, exactly one message).
pub fn encode(framing: Framing, messages: &[Generated]) -> ChunkBody {
    let mut body = Chunks::default();
    for message in messages {
        match framing {
            Framing::Raw => {
                debug_assert_eq!(messages.len(), 1, "a raw body holds one message");
                body.message(message);
            }
            Framing::Ndjson => {
                body.message(message);
                body.copy(b"\n");
            }
            Framing::Frames => {
                body.copy(&(message.size() as u32).to_be_bytes());
                body.message(message);
            }
            Framing::Multipart => {
                let head = format!(
                    "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"m\"; filename=\"m-{:016x}.bin\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n",
                    message.id
                );
                body.copy(head.as_bytes());
                body.message(message);
                body.copy(b"\r\n");
            }
        }
    }
    if framing == Framing::Multipart {
        body.copy(format!("--{BOUNDARY}--\r\n").as_bytes());
    }
    body.finish()
}

/// A body of known length sent as a list of slices.
#[derive(Debug, Default)]
pub struct ChunkBody {
    chunks: VecDeque<Bytes>,
    len: u64,
}

impl ChunkBody {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn into_chunks(self) -> VecDeque<Bytes> {
        self.chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{parse, Generator};

    fn flat(body: ChunkBody) -> Vec<u8> {
        body.into_chunks().into_iter().flat_map(|c| c.to_vec()).collect()
    }

    #[test]
    fn frames_and_lines_carry_the_messages_unchanged() {
        let mut generator = Generator::new(1, 100_000);
        let messages = vec![generator.message(0, 50), generator.message(1, 100_000)];
        let body = encode(Framing::Frames, &messages);
        assert_eq!(body.len(), 8 + 50 + 100_000);
        assert!(body.chunks.len() >= 2, "the large filler is shared, not copied");
        let bytes = flat(body);
        assert_eq!(&bytes[..4], &50u32.to_be_bytes());
        assert_eq!(parse(&bytes[4..]).unwrap().id, 0);
        assert_eq!(parse(&bytes[58..]).unwrap().id, 1);

        let lines = flat(encode(Framing::Ndjson, &messages));
        assert_eq!(lines.iter().filter(|&&b| b == b'\n').count(), 2);
        let multipart = String::from_utf8(flat(encode(Framing::Multipart, &messages[..1]))).unwrap();
        assert!(multipart.ends_with(&format!("\r\n--{BOUNDARY}--\r\n")));
    }
}
