//! The record format of spool segments: how a record is framed, checksummed and
//! parsed back. The body of a `messages` record is laid out by [`super::request`].
//!
//! ```text
//! offset  size  field
//!      0     2  magic 0x5053 ("SP")
//!      2     1  kind: 4 messages (a request's), 2 sealed (a batch's seq range),
//!               3 committed (seqs up to here)
//!      3     1  flags: zero
//!      4     4  CRC32C over the body, then bytes 0..4 and 8..32
//!      8     4  body length
//!     12     4  messages: how many; other kinds: zero
//!     16     8  seq (messages: the first one's; sealed: the batch's first; committed: the last)
//!     24     8  the number of the segment it was written to
//!     32     …  body (messages: see `request`; sealed: the batch's last seq, 8 bytes)
//! ```
//!
//! All integers little-endian. The magic and the checks on kind, flags and lengths let
//! salvage find the next record after damage without trusting a corrupt length. The
//! segment's number tells a record from what a reused segment file held before
//! (`salvage`). The body is checksummed first so that a request's record can be laid
//! out and checksummed before the spool's lock, which decides its segment, is taken
//! ([`Unplaced`]). Kind 1, a record per message, was the format before `messages`; it
//! is read as damage.

use bytes::{Bytes, BytesMut};

use super::request;

pub const HEADER_LEN: usize = 32;
const MAGIC: [u8; 2] = *b"SP";
/// Larger bodies are never written (a message is at most `--max-message-bytes`,
/// which parsing cannot know, so this only rules out lengths no writer produces).
const MAX_BODY: u32 = u32::MAX - HEADER_LEN as u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Messages = 4,
    Sealed = 2,
    Committed = 3,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            4 => Some(Kind::Messages),
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
    pub body_len: u32,
    /// How many messages a `messages` record holds.
    pub count: u32,
    pub seq: u64,
    pub segment: u64,
}

impl Header {
    /// The header bytes for a record whose body is `body` (the slices in order), CRC
    /// included.
    pub fn encode<'a>(&self, body: impl IntoIterator<Item = &'a [u8]>) -> [u8; HEADER_LEN] {
        self.encode_after(body_crc(body))
    }

    /// The header bytes for a record whose body's CRC32C is `body_crc`.
    fn encode_after(&self, body_crc: u32) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = self.kind as u8;
        out[8..12].copy_from_slice(&self.body_len.to_le_bytes());
        out[12..16].copy_from_slice(&self.count.to_le_bytes());
        out[16..24].copy_from_slice(&self.seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.segment.to_le_bytes());
        let crc = header_crc(body_crc, &out);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Bytes the whole record takes.
    pub fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.body_len)
    }
}

/// The body's slices checksummed where they lie: never copied.
fn body_crc<'a>(body: impl IntoIterator<Item = &'a [u8]>) -> u32 {
    body.into_iter().fold(0, crc32c::crc32c_append)
}

fn header_crc(body_crc: u32, header: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(body_crc, &header[0..4]), &header[8..HEADER_LEN])
}

/// A record laid out and its body checksummed, waiting for the number of the segment
/// it is written to.
#[derive(Debug)]
pub struct Unplaced {
    header: Header,
    body_crc: u32,
    /// The body's first slice, behind `HEADER_LEN` bytes of room for the header.
    head: BytesMut,
    rest: Vec<Bytes>,
}

impl Unplaced {
    /// A record of `kind` whose body is `head` past its first `HEADER_LEN` bytes, then
    /// `rest`.
    pub fn new(kind: Kind, count: u32, seq: u64, head: BytesMut, rest: Vec<Bytes>) -> Self {
        let body = || std::iter::once(&head[HEADER_LEN..]).chain(rest.iter().map(|c| &c[..]));
        let body_len = body().map(<[u8]>::len).sum::<usize>() as u32;
        let body_crc = body_crc(body());
        Self { header: Header { kind, body_len, count, seq, segment: 0 }, body_crc, head, rest }
    }

    /// A sealed or committed mark, whose body is `body`.
    pub fn mark(kind: Kind, seq: u64, body: &[u8]) -> Self {
        let mut head = BytesMut::with_capacity(HEADER_LEN + body.len());
        head.resize(HEADER_LEN, 0);
        head.extend_from_slice(body);
        Self::new(kind, 0, seq, head, Vec::new())
    }

    pub fn record_len(&self) -> u64 {
        self.header.record_len()
    }

    /// The record as written into segment number `segment`, in slices.
    pub fn place(mut self, segment: u64, out: &mut Vec<Bytes>) {
        let header = Header { segment, ..self.header };
        self.head[..HEADER_LEN].copy_from_slice(&header.encode_after(self.body_crc));
        out.push(self.head.freeze());
        out.extend(self.rest);
    }
}

/// Whether `bytes` begin with a header written into segment number `segment`, whatever
/// its CRC: a record of the segment's own, whole or not.
pub fn begins_record_of(bytes: &[u8], segment: u64) -> bool {
    bytes.len() >= HEADER_LEN && bytes[0..2] == MAGIC && bytes[24..32] == segment.to_le_bytes()
}

/// A whole, checked record found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub header: Header,
    pub body: Bytes,
}

impl Record {
    /// The highest seq the record names.
    pub fn last_seq(&self) -> u64 {
        match self.header.kind {
            Kind::Messages => self.header.seq + u64::from(self.header.count) - 1,
            Kind::Sealed => self.sealed_last().unwrap_or(self.header.seq),
            Kind::Committed => self.header.seq,
        }
    }

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
    let (Some(kind), true) = (Kind::from_byte(h[2]), h[0..2] == MAGIC && h[3] == 0) else {
        return Parsed::Corrupt;
    };
    let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
    let header = Header { kind, body_len: u32_at(8), count: u32_at(12), seq: u64_at(16), segment: u64_at(24) };
    let shape_ok = match kind {
        Kind::Messages => header.count > 0,
        Kind::Sealed => header.count == 0 && header.body_len == 8,
        Kind::Committed => header.count == 0 && header.body_len == 0,
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
    let crc = header_crc(crc32c::crc32c(&buf[HEADER_LEN..end]), h);
    if crc != u32_at(4) || (kind == Kind::Messages && !request::is_whole(&buf[HEADER_LEN..end], header.count)) {
        return Parsed::Corrupt;
    }
    Parsed::Record(Record { header, body: buf.slice(HEADER_LEN..end) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::request::tests::message_record;

    #[test]
    fn a_record_round_trips_and_every_flipped_byte_is_caught() {
        let bytes = Bytes::from(message_record(7, "a.json", b"{\"n\": 1}"));
        let Parsed::Record(record) = parse(&bytes) else { panic!("a whole record parses") };
        assert_eq!((record.header.kind, record.header.seq, record.header.count), (Kind::Messages, 7, 1));
        assert_eq!(record.last_seq(), 7);
        for at in 0..bytes.len() {
            let mut damaged = bytes.to_vec();
            damaged[at] ^= 0x20;
            let parsed = parse(&Bytes::from(damaged));
            assert!(matches!(parsed, Parsed::Corrupt | Parsed::Torn), "byte {at} flipped went unnoticed");
        }
    }

    #[test]
    fn a_cut_record_is_torn_and_zeros_are_not_a_record() {
        let bytes = Bytes::from(message_record(1, "", b"hello"));
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes.slice(..cut)), Parsed::Torn, "cut at {cut}");
        }
        assert_eq!(parse(&Bytes::from(vec![0u8; 64])), Parsed::Corrupt);
    }

    #[test]
    fn a_checked_record_whose_index_does_not_add_up_is_corrupt() {
        // Written with a CRC, as no spool writes it: two messages said, one there.
        let body = message_record(1, "", b"hello")[HEADER_LEN..].to_vec();
        let header = Header { kind: Kind::Messages, body_len: body.len() as u32, count: 2, seq: 1, segment: 1 };
        let mut bytes = header.encode([&body[..]]).to_vec();
        bytes.extend_from_slice(&body);
        assert_eq!(parse(&Bytes::from(bytes)), Parsed::Corrupt);
    }

    #[test]
    fn sealed_records_carry_their_range() {
        let last = 99u64.to_le_bytes();
        let header = Header { kind: Kind::Sealed, body_len: 8, count: 0, seq: 90, segment: 1 };
        let mut out = header.encode([&last[..]]).to_vec();
        out.extend_from_slice(&last);
        let Parsed::Record(record) = parse(&Bytes::from(out)) else { panic!("parses") };
        assert_eq!((record.header.seq, record.sealed_last(), record.last_seq()), (90, Some(99), 99));
    }
}
