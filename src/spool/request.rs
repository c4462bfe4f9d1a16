//! The body of a `messages` record: a request's messages, numbered from the record's
//! seq, laid out so that writing them costs per byte rather than per message.
//!
//! ```text
//! index   12 bytes per message, in order:
//!           0  4  payload length
//!           4  4  gap: data bytes between the end of the previous payload and this one
//!           8  2  name length (the `Spout-File` name; at most 255 bytes)
//!          10  1  flags: bit 0 = the message came from a line framing
//!          11  1  zero
//! names   the names, one after the other
//! data    each message's gap, then its payload
//! ```
//!
//! Lines cut from one buffer (an NDJSON body's, mostly) are written as the stretch of
//! the buffer they lie in, the separators between them as gaps: a request of a
//! thousand lines is one slice of the spool's `writev` and one CRC pass, with no copy
//! and no header per message. Other payloads are copied into the record when small
//! ([`INLINE_PAYLOAD`]) and written from where they arrived when not.
//!
//! [`spooled_len`] measures what [`encode`] writes by the same walk ([`Placer`]), so
//! that the spool reserves exactly that much of `--max-spool-bytes` before a request is
//! admitted.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::record::{Kind, Record, Unplaced, HEADER_LEN};
use crate::message::{same_bytes, Incoming, Message, Payload};

const ENTRY_LEN: usize = 12;
const LINE: u8 = 1;

/// Payloads up to this size are copied into the record rather than written from where
/// they arrived: for a 100-byte frame a slice of its own in the `writev` (and the
/// reference count that keeps it alive) costs more than the copy.
const INLINE_PAYLOAD: usize = 1024;

/// A run of lines goes on across separators up to this long; past it (a stretch of
/// blank lines, say) the next line starts a run of its own, so that no more than
/// separators is written besides the messages.
const MAX_GAP: usize = 64;

/// A request whose messages take more than this is written as several records, so
/// that a record's length always fits its header's 32 bits.
const RECORD_BYTES: u64 = 1 << 30;

/// What the spool writes of a message: an [`Incoming`] one measured before it is
/// admitted, a [`Message`] once numbered.
pub trait Spooled {
    fn name(&self) -> &str;
    fn payload(&self) -> &Payload;
    fn line(&self) -> bool;
}

/// Both carry what the spool writes in fields of the same names.
macro_rules! spooled {
    ($($message:ty),*) => {$(
        impl Spooled for $message {
            fn name(&self) -> &str {
                self.name.as_deref().unwrap_or("")
            }
            fn payload(&self) -> &Payload {
                &self.payload
            }
            fn line(&self) -> bool {
                self.line
            }
        }
    )*};
}

spooled!(Incoming, Message);

/// A message the spool cannot record.
#[derive(Debug, thiserror::Error)]
#[error("a message of {payload} bytes with a name of {name} bytes is larger than a spool record can hold")]
pub struct TooLarge {
    payload: u64,
    name: usize,
}

/// The bytes `messages` take in the spool, records' headers included: what
/// [`encode`] writes for them once they are numbered.
pub fn spooled_len<M: Spooled>(messages: &[M]) -> u64 {
    spooled_len_by(messages, RECORD_BYTES)
}

fn spooled_len_by<M: Spooled>(messages: &[M], record_bytes: u64) -> u64 {
    groups(messages, record_bytes).map(|group| HEADER_LEN as u64 + body_len(group)).sum()
}

/// `messages` (numbered one after the other) as `messages` records, laid out in the
/// slices one vectored write takes.
pub fn encode(messages: &[Message]) -> Result<Vec<Unplaced>, TooLarge> {
    encode_by(messages, RECORD_BYTES)
}

fn encode_by(messages: &[Message], record_bytes: u64) -> Result<Vec<Unplaced>, TooLarge> {
    groups(messages, record_bytes).map(encode_record).collect()
}

/// Whether the body of a `messages` record has `count` entries whose names and data
/// take exactly the rest of it: a record the CRC passed but this does not was not
/// written by the spool.
pub fn is_whole(body: &[u8], count: u32) -> bool {
    let index_len = count as usize * ENTRY_LEN;
    if count == 0 || index_len > body.len() {
        return false;
    }
    let mut total = index_len as u64;
    for entry in body[..index_len].chunks_exact(ENTRY_LEN) {
        let Some(entry) = Entry::parse(entry) else { return false };
        total += entry.name_len as u64 + entry.gap as u64 + entry.len as u64;
    }
    total == body.len() as u64
}

/// The messages a `messages` record holds, numbered from its seq; their payloads and
/// names are slices of the record's body. The record must be one [`is_whole`] passed.
pub fn messages(record: &Record) -> impl Iterator<Item = Message> + '_ {
    let body = &record.body;
    let index_len = record.header.count as usize * ENTRY_LEN;
    let index = &body[..index_len];
    // Checked by `is_whole`; an exact-size iterator lets a vector take each message
    // where it will stay, rather than moving it through the adapters.
    let entries = move || index.chunks_exact(ENTRY_LEN).map(|e| Entry::parse(e).expect("a checked index"));
    let names_len: usize = entries().map(|e| e.name_len).sum();
    let (mut name_at, mut data_at) = (index_len, index_len + names_len);
    let seqs = record.header.seq..record.header.seq + u64::from(record.header.count);
    entries().zip(seqs).map(move |(entry, seq)| {
        let name = (entry.name_len > 0)
            .then(|| String::from_utf8_lossy(&body[name_at..name_at + entry.name_len]).into_owned());
        name_at += entry.name_len;
        let start = data_at + entry.gap;
        data_at = start + entry.len;
        // A line followed by its `\n` is taken with it, as it arrived, by a batch file.
        let payload = match entry.line && entry.len > 0 && body.get(data_at) == Some(&b'\n') {
            true => Payload::line_in(body.clone(), start..data_at),
            false => Payload::from(body.slice(start..data_at)),
        };
        Message { seq, name, payload, line: entry.line, origin: None }
    })
}

/// Splits `messages` into the runs written as one record each, of at most
/// `record_bytes` (or one message).
fn groups<M: Spooled>(messages: &[M], record_bytes: u64) -> impl Iterator<Item = &[M]> {
    let mut rest = messages;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        // What a message can add to a body at most.
        let mut total = 0;
        let fit = rest.iter().take_while(|m| {
            total += (ENTRY_LEN + MAX_GAP + m.name().len()) as u64 + m.payload().len();
            total <= record_bytes
        });
        let (group, tail) = rest.split_at(fit.count().max(1));
        rest = tail;
        Some(group)
    })
}

fn body_len<M: Spooled>(messages: &[M]) -> u64 {
    let mut index = 0;
    let mut data = 0;
    let mut placer = Placer::default();
    for m in messages {
        index += (ENTRY_LEN + m.name().len()) as u64;
        placer.place(m.payload(), &mut |piece| data += piece.len());
    }
    placer.finish(&mut |piece| data += piece.len());
    index + data
}

fn encode_record(messages: &[Message]) -> Result<Unplaced, TooLarge> {
    let index_end = HEADER_LEN + messages.len() * ENTRY_LEN;
    let names: usize = messages.iter().map(|m| m.name().len()).sum();
    // The header (once the CRC is known), the index and the names.
    let mut head = BytesMut::with_capacity(index_end + names);
    head.resize(index_end, 0);
    // The data: small payloads copied into `copies`, the rest as it lies.
    let mut data = Vec::new();
    let mut copies = BytesMut::new();
    let mut lay = |piece: Piece<'_>| {
        let slice = match piece {
            Piece::Copy(bytes) => return copies.extend_from_slice(bytes),
            Piece::Stretch(buffer, range) => buffer.slice(range),
            Piece::Shared(bytes) => bytes.clone(),
        };
        if !copies.is_empty() {
            data.push(copies.split().freeze());
        }
        data.push(slice);
    };
    let mut placer = Placer::default();
    for (i, m) in messages.iter().enumerate() {
        let too_large = || TooLarge { payload: m.payload().len(), name: m.name().len() };
        let entry = Entry {
            len: u32::try_from(m.payload().len()).map_err(|_| too_large())? as usize,
            gap: placer.place(m.payload(), &mut lay),
            name_len: m.name().len(),
            line: m.line(),
        };
        let at = HEADER_LEN + i * ENTRY_LEN;
        head[at..at + ENTRY_LEN].copy_from_slice(&entry.encode().ok_or_else(too_large)?);
        head.extend_from_slice(m.name().as_bytes());
    }
    placer.finish(&mut lay);
    if !copies.is_empty() {
        data.push(copies.freeze());
    }
    Ok(Unplaced::new(Kind::Messages, messages.len() as u32, messages[0].seq, head, data))
}

/// One message's line of the index.
struct Entry {
    len: usize,
    gap: usize,
    name_len: usize,
    line: bool,
}

impl Entry {
    /// `None` for a name longer than an entry can say.
    fn encode(&self) -> Option<[u8; ENTRY_LEN]> {
        let mut out = [0u8; ENTRY_LEN];
        out[0..4].copy_from_slice(&(self.len as u32).to_le_bytes());
        out[4..8].copy_from_slice(&(self.gap as u32).to_le_bytes());
        out[8..10].copy_from_slice(&u16::try_from(self.name_len).ok()?.to_le_bytes());
        out[10] = if self.line { LINE } else { 0 };
        Some(out)
    }

    /// `None` for flags no writer sets.
    fn parse(bytes: &[u8]) -> Option<Self> {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        (bytes[10] & !LINE == 0 && bytes[11] == 0).then(|| Entry {
            len: u32_at(0),
            gap: u32_at(4),
            name_len: u16::from_le_bytes([bytes[8], bytes[9]]) as usize,
            line: bytes[10] & LINE != 0,
        })
    }
}

/// Where the data's bytes come from, in order.
enum Piece<'a> {
    /// A stretch of the buffer lines were cut from, the gaps between them included.
    Stretch(&'a Bytes, Range<usize>),
    /// A small slice, copied into the record.
    Copy(&'a Bytes),
    /// A large slice, written from where it lies.
    Shared(&'a Bytes),
}

impl Piece<'_> {
    fn len(&self) -> u64 {
        match self {
            Piece::Stretch(_, range) => range.len() as u64,
            Piece::Copy(bytes) | Piece::Shared(bytes) => bytes.len() as u64,
        }
    }
}

/// Lays payloads out one after the other as data, joining lines that lie together in
/// one buffer into one stretch of it.
#[derive(Default)]
struct Placer<'a> {
    /// The stretch being extended, line by line.
    run: Option<(&'a Bytes, Range<usize>)>,
}

impl<'a> Placer<'a> {
    /// Places `payload` after the ones before, handing `lay` what is settled, and
    /// returns its gap.
    fn place(&mut self, payload: &'a Payload, lay: &mut impl FnMut(Piece<'a>)) -> usize {
        if let Some((buffer, start)) = payload.line_place() {
            let end = start + payload.len() as usize;
            if let Some((_, lines)) = self
                .run
                .as_mut()
                .filter(|(run, lines)| same_bytes(run, buffer) && (lines.end..=lines.end + MAX_GAP).contains(&start))
            {
                let gap = start - lines.end;
                lines.end = end;
                return gap;
            }
            if let Some((run, lines)) = self.run.replace((buffer, start..end)) {
                lay(Piece::Stretch(run, lines));
            }
            return 0;
        }
        self.finish(lay);
        for chunk in payload.chunks() {
            lay(if chunk.len() <= INLINE_PAYLOAD { Piece::Copy(chunk) } else { Piece::Shared(chunk) });
        }
        0
    }

    /// Hands over the stretch still being extended.
    fn finish(&mut self, lay: &mut impl FnMut(Piece<'a>)) {
        if let Some((run, lines)) = self.run.take() {
            lay(Piece::Stretch(run, lines));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spool::record::{parse, Parsed};

    /// Records as written into segment 1.
    pub fn placed(records: Vec<Unplaced>) -> Vec<Bytes> {
        placed_in(1, records)
    }

    fn placed_in(segment: u64, records: Vec<Unplaced>) -> Vec<Bytes> {
        let mut chunks = Vec::new();
        for record in records {
            record.place(segment, &mut chunks);
        }
        chunks
    }

    /// One message's record, as the spool writes it into segment 1.
    pub fn message_record(seq: u64, name: &str, payload: &[u8]) -> Vec<u8> {
        message_record_in(1, seq, name, payload)
    }

    /// One message's record, as the spool writes it into segment number `segment`.
    pub fn message_record_in(segment: u64, seq: u64, name: &str, payload: &[u8]) -> Vec<u8> {
        let message = Message {
            seq,
            name: (!name.is_empty()).then(|| name.to_owned()),
            payload: Payload::from(Bytes::copy_from_slice(payload)),
            line: false,
            origin: None,
        };
        placed_in(segment, encode(&[message]).unwrap()).concat()
    }

    fn numbered(payloads: Vec<(Option<&str>, Payload, bool)>) -> Vec<Message> {
        let numbered = payloads.into_iter().zip(40..);
        numbered
            .map(|((name, payload, line), seq)| Message {
                seq,
                name: name.map(str::to_owned),
                payload,
                line,
                origin: None,
            })
            .collect()
    }

    /// Every record in `bytes`, parsed back into messages.
    fn read(bytes: Vec<u8>) -> Vec<Message> {
        let mut rest = Bytes::from(bytes);
        let mut out = Vec::new();
        while !rest.is_empty() {
            let Parsed::Record(record) = parse(&rest) else { panic!("whole records") };
            out.extend(messages(&record));
            rest = rest.slice(record.header.record_len() as usize..);
        }
        out
    }

    fn same(back: &[Message], written: &[Message]) {
        assert_eq!(back.len(), written.len());
        for (back, written) in back.iter().zip(written) {
            assert_eq!(
                (back.seq, &back.name, back.line, back.payload.to_vec()),
                (written.seq, &written.name, written.line, written.payload.to_vec())
            );
        }
    }

    #[test]
    fn lines_are_written_as_the_stretch_of_body_they_lie_in() {
        let body = Bytes::from(format!("a\nbb\n\nccc\n{}\nd\n", " ".repeat(MAX_GAP + 1)));
        let other = Bytes::from_static(b"e\nf\n");
        let d = body.len() - 2;
        let written = numbered(vec![
            (None, Payload::line_in(body.clone(), 0..1), true),
            (None, Payload::line_in(body.clone(), 2..4), true),
            // After an empty line: still the same stretch.
            (Some("named/one"), Payload::line_in(body.clone(), 6..9), true),
            // After more than a separator: a stretch of its own.
            (None, Payload::line_in(body.clone(), d..d + 1), true),
            (None, Payload::line_in(other.clone(), 0..1), true),
            (None, Payload::line_in(other.clone(), 2..3), true),
        ]);
        let chunks = placed(encode(&written).unwrap());
        let slices: Vec<&[u8]> = chunks[1..].iter().map(|c| &c[..]).collect();
        assert_eq!(slices, [&b"a\nbb\n\nccc"[..], b"d", b"e\nf"], "after the header, index and names");
        assert_eq!(chunks[1].as_ptr(), body.as_ptr(), "a slice of the body, not a copy");
        let bytes = chunks.concat();
        assert_eq!(spooled_len(&written), bytes.len() as u64);
        let back = read(bytes);
        same(&back, &written);
        // Lines read back keep their `\n` where it followed them, for a batch file.
        let placed: Vec<bool> = back.iter().map(|m| m.payload.line_place().is_some()).collect();
        assert_eq!(placed, [true, true, false, false, true, false]);
    }

    #[test]
    fn frames_names_and_large_payloads_round_trip() {
        let large = Bytes::from(vec![b'L'; INLINE_PAYLOAD + 1]);
        let body = Bytes::from_static(b"x\ny\n");
        let written = numbered(vec![
            (None, Payload::from(Bytes::from_static(b"frame")), false),
            (Some("f/2"), Payload::new(), false),
            (None, Payload::from(vec![Bytes::from_static(b"two "), Bytes::from_static(b"reads")]), false),
            (None, Payload::line_in(body.clone(), 0..1), true),
            (Some("big.bin"), Payload::from(large.clone()), false),
            (None, Payload::line_in(body, 2..3), true),
            (None, Payload::from(Bytes::from_static(b"last")), true),
        ]);
        let chunks = placed(encode(&written).unwrap());
        assert!(chunks.iter().any(|c| c.as_ptr() == large.as_ptr()), "a large payload is written from where it lies");
        let bytes = chunks.concat();
        assert_eq!(spooled_len(&written), bytes.len() as u64);
        same(&read(bytes), &written);
    }

    #[test]
    fn a_request_larger_than_a_record_takes_several() {
        let written = numbered((0..50).map(|i| (None, Payload::from(Bytes::from(vec![i as u8; 40])), false)).collect());
        let chunks = placed(encode_by(&written, 600).unwrap());
        let bytes = chunks.concat();
        assert_eq!(spooled_len_by(&written, 600), bytes.len() as u64);
        let mut records = 0;
        let mut rest = Bytes::from(bytes.clone());
        while let Parsed::Record(record) = parse(&rest) {
            assert!(record.header.record_len() <= 600 + HEADER_LEN as u64);
            rest = rest.slice(record.header.record_len() as usize..);
            records += 1;
        }
        assert!(records > 4, "{records} records");
        same(&read(bytes), &written);
    }

    #[test]
    fn a_name_too_long_for_the_index_is_refused() {
        let name = "n".repeat(70_000);
        let written = numbered(vec![(Some(&name), Payload::from(Bytes::from_static(b"x")), false)]);
        assert!(encode(&written).is_err());
    }
}
