//! The record format of spool segments, and nothing else: how a record is laid out,
//! checksummed and parsed back.
//!
//! ```text
//! offset  size  field
//!      0     2  magic 0x5053 ("SP")
//!      2     1  kind: 1 message, 2 sealed (a batch's seq range), 3 committed (seqs up to here)
//!      3     1  flags: bit 0 = the message came from a line framing
//!      4     4  CRC32C over bytes 0..4, 8..24 and the body
//!      8     4  body length
//!     12     4  name length (message: the `Spout-File` name at the start of the body)
//!     16     8  seq (message: its number; sealed: the batch's first; committed: the last)
//!     24     …  body (message: name then payload; sealed: the batch's last seq, 8 bytes)
//! ```
//!
//! All integers little-endian. The magic and the checks on kind, flags and lengths let
//! salvage find the next record after damage without trusting a corrupt length.

use bytes::{Bytes, BytesMut};

use crate::message::Message;

pub const HEADER_LEN: usize = 24;
const MAGIC: [u8; 2] = *b"SP";
const LINE: u8 = 1;
/// Larger bodies are never written (a message is at most `--max-message-bytes`,
/// which parsing cannot know, so this only rules out lengths no writer produces).
const MAX_BODY: u32 = u32::MAX - HEADER_LEN as u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message = 1,
    Sealed = 2,
    Committed = 3,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Kind::Message),
            2 => Some(Kind::Sealed),
            3 => Some(Kind::Committed),
            _ => None,
        }
    }
}

/// The fixed part of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub line: bool,
    pub body_len: u32,
    pub name_len: u32,
    pub seq: u64,
}

impl Header {
    /// The header bytes for a record whose body is `body` (the slices in order), CRC
    /// included. The body is checksummed where it lies: it is never copied.
    pub fn encode<'a>(&self, body: impl IntoIterator<Item = &'a [u8]>) -> [u8; HEADER_LEN] {
        let mut out = self.fields();
        let crc = body.into_iter().fold(header_crc(&out), crc32c::crc32c_append);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// The header bytes with the CRC left zero.
    fn fields(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = self.kind as u8;
        out[3] = if self.line { LINE } else { 0 };
        out[8..12].copy_from_slice(&self.body_len.to_le_bytes());
        out[12..16].copy_from_slice(&self.name_len.to_le_bytes());
        out[16..24].copy_from_slice(&self.seq.to_le_bytes());
        out
    }

    /// Bytes the whole record takes.
    pub fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.body_len)
    }
}

fn header_crc(header: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&header[0..4]), &header[8..HEADER_LEN])
}

/// Payloads up to this size are copied next to their header rather than written from
/// where they arrived: for 100-byte messages a slice of its own in the `writev` (and
/// the reference count that keeps it alive) costs the kernel and us more than the copy,
/// and one contiguous record is checksummed in one pass.
pub const INLINE_PAYLOAD: u64 = 1024;

/// One request's messages as message records, in the slices one vectored write takes:
/// headers, names and small payloads copied into one buffer, larger payloads as the
/// slices they arrived in, each checksummed where it lies.
pub fn encode_messages(messages: &[Message]) -> Vec<Bytes> {
    let copied: u64 = messages
        .iter()
        .map(|m| {
            let payload = if m.payload.len() <= INLINE_PAYLOAD { m.payload.len() } else { 0 };
            (HEADER_LEN + m.name.as_ref().map_or(0, String::len)) as u64 + payload
        })
        .sum();
    let mut buf = BytesMut::with_capacity(copied as usize);
    let mut chunks = Vec::new();
    for m in messages {
        let name = m.name.as_deref().unwrap_or("").as_bytes();
        let header = Header {
            kind: Kind::Message,
            line: m.line,
            body_len: (name.len() as u64 + m.payload.len()) as u32,
            name_len: name.len() as u32,
            seq: m.seq,
        };
        if m.payload.len() <= INLINE_PAYLOAD {
            let start = buf.len();
            buf.extend_from_slice(&header.fields());
            buf.extend_from_slice(name);
            for chunk in m.payload.chunks() {
                buf.extend_from_slice(chunk);
            }
            let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[start..start + 4]), &buf[start + 8..]);
            buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        } else {
            let parts = std::iter::once(name).chain(m.payload.chunks().iter().map(|c| &c[..]));
            buf.extend_from_slice(&header.encode(parts));
            buf.extend_from_slice(name);
            chunks.push(buf.split().freeze());
            chunks.extend(m.payload.chunks().iter().cloned());
        }
    }
    if !buf.is_empty() {
        chunks.push(buf.freeze());
    }
    chunks
}

/// A whole, checked record found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub header: Header,
    pub body: Bytes,
}

impl Record {
    /// The body of a sealed record: the batch's last seq.
    pub fn sealed_last(&self) -> Option<u64> {
        (self.header.kind == Kind::Sealed && self.body.len() == 8)
            .then(|| u64::from_le_bytes(self.body[..8].try_into().expect("8 bytes")))
    }
}

/// What the bytes at the start of a buffer are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Record(Record),
    /// A record begins here but the buffer ends before it does: a write a crash cut.
    Torn,
    /// Not a record: a bad magic, kind, flag or length, or a CRC that fails.
    Corrupt,
}

/// The length of the record whose header `bytes` begin with, once the header is
/// whole (0 before): what a reader must have to parse it.
pub fn claimed_len(bytes: &[u8]) -> u64 {
    match bytes.get(8..12) {
        Some(body_len) => HEADER_LEN as u64 + u64::from(u32::from_le_bytes(body_len.try_into().expect("4 bytes"))),
        None => 0,
    }
}

/// Parses the record at the start of `buf`, a slice of the segment's bytes (the body
/// is returned as a slice of it, not a copy).
pub fn parse(buf: &Bytes) -> Parsed {
    if buf.len() < HEADER_LEN {
        return if buf.len() < 2 || buf[0..2] == MAGIC { Parsed::Torn } else { Parsed::Corrupt };
    }
    let h = &buf[..HEADER_LEN];
    let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
    let (Some(kind), true) = (Kind::from_byte(h[2]), h[0..2] == MAGIC && h[3] & !LINE == 0) else {
        return Parsed::Corrupt;
    };
    let header = Header {
        kind,
        line: h[3] & LINE != 0,
        body_len: u32_at(8),
        name_len: u32_at(12),
        seq: u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
    };
    let shape_ok = match kind {
        Kind::Message => header.name_len <= header.body_len,
        Kind::Sealed => header.name_len == 0 && header.body_len == 8,
        Kind::Committed => header.name_len == 0 && header.body_len == 0,
    };
    if !shape_ok || header.body_len > MAX_BODY {
        return Parsed::Corrupt;
    }
    let end = HEADER_LEN + header.body_len as usize;
    if buf.len() < end {
        // A corrupt length could also claim more than is there: only a CRC can tell,
        // and there is nothing to check it against. Salvage decides by what follows.
        return Parsed::Torn;
    }
    let crc = crc32c::crc32c_append(header_crc(h), &buf[HEADER_LEN..end]);
    if crc != u32_at(4) {
        return Parsed::Corrupt;
    }
    Parsed::Record(Record { header, body: buf.slice(HEADER_LEN..end) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, name: &str, payload: &[u8]) -> Bytes {
        let header = Header {
            kind: Kind::Message,
            line: true,
            body_len: (name.len() + payload.len()) as u32,
            name_len: name.len() as u32,
            seq,
        };
        let mut out = header.encode([name.as_bytes(), payload]).to_vec();
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(payload);
        Bytes::from(out)
    }

    #[test]
    fn a_record_round_trips_and_every_flipped_byte_is_caught() {
        let bytes = message(7, "a.json", b"{\"n\": 1}");
        let Parsed::Record(record) = parse(&bytes) else { panic!("a whole record parses") };
        assert_eq!((record.header.seq, record.header.line, record.header.name_len), (7, true, 6));
        assert_eq!(&record.body[..], b"a.json{\"n\": 1}");
        for at in 0..bytes.len() {
            let mut damaged = bytes.to_vec();
            damaged[at] ^= 0x20;
            let parsed = parse(&Bytes::from(damaged));
            assert!(matches!(parsed, Parsed::Corrupt | Parsed::Torn), "byte {at} flipped went unnoticed");
        }
    }

    #[test]
    fn a_cut_record_is_torn_and_zeros_are_not_a_record() {
        let bytes = message(1, "", b"hello");
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes.slice(..cut)), Parsed::Torn, "cut at {cut}");
        }
        assert_eq!(parse(&Bytes::from(vec![0u8; 64])), Parsed::Corrupt);
    }

    #[test]
    fn a_request_s_records_parse_back_whether_payloads_are_copied_or_not() {
        use crate::message::Payload;
        let sizes = [0, 1, 100, INLINE_PAYLOAD as usize, INLINE_PAYLOAD as usize + 1, 70_000];
        let messages: Vec<Message> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| Message {
                seq: 40 + i as u64,
                name: (i % 2 == 1).then(|| format!("n/{i}")),
                // Two slices, as a message that straddled two reads of a body.
                payload: Payload::from(vec![
                    Bytes::from(vec![b'a'; size / 3]),
                    Bytes::from(vec![b'b'; size - size / 3]),
                ]),
                line: i % 3 == 0,
                origin: None,
            })
            .collect();
        let chunks = encode_messages(&messages);
        let large = chunks.iter().filter(|c| c.len() >= 70_000 - 70_000 / 3).count();
        assert_eq!(large, 1, "the large payload is written from where it lies, not copied");
        let mut rest = Bytes::from(chunks.concat());
        for m in &messages {
            let Parsed::Record(record) = parse(&rest) else { panic!("message {} parses", m.seq) };
            assert_eq!((record.header.seq, record.header.line), (m.seq, m.line));
            let name = m.name.as_deref().unwrap_or("");
            assert_eq!(record.header.name_len as usize, name.len());
            assert_eq!(&record.body[..name.len()], name.as_bytes());
            assert_eq!(record.body[name.len()..], m.payload.to_vec()[..]);
            rest = rest.slice(record.header.record_len() as usize..);
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn sealed_records_carry_their_range() {
        let last = 99u64.to_le_bytes();
        let header = Header { kind: Kind::Sealed, line: false, body_len: 8, name_len: 0, seq: 90 };
        let mut out = header.encode([&last[..]]).to_vec();
        out.extend_from_slice(&last);
        let Parsed::Record(record) = parse(&Bytes::from(out)) else { panic!("parses") };
        assert_eq!((record.header.seq, record.sealed_last()), (90, Some(99)));
    }
}
