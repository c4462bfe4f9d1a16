//! Cutting a byte stream into `\n`-terminated lines or length-prefixed frames.
//!
//! Both ingest paths use this one splitter: an HTTP body is a complete list of the
//! chunks it arrived in ([`Chunks`]), the raw socket's stream is a `BytesMut` read
//! buffer that grows read by read. Each hands out messages as zero-copy slices of its
//! bytes: a [`Payload`] of chunk slices, or a `Bytes` split off the read buffer.
//!
//! Rules, the same on both paths:
//! - Lines: a line ends at `\n`, which is not part of the message; a `\r` before it
//!   is kept, as bytes are never altered. Empty lines are skipped, as NDJSON readers
//!   commonly do, so a blank line never becomes an empty file. A last line without
//!   `\n` counts once the stream has ended.
//! - Frames: a 4-byte big-endian length, then that many bytes. A zero length is an
//!   explicit empty message. A stream that ends inside a frame (header or body) is
//!   malformed.
//! - A message longer than the limit fails as soon as that is known: a line once that
//!   many bytes have arrived without `\n`, a frame by its header. So the raw socket
//!   never buffers more than the limit for one message.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use super::DecodeError;
use crate::message::Payload;

const LENGTH_BYTES: usize = 4;

/// The unit a stream is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Line,
    Frame,
}

/// Bytes that messages are split off.
pub trait Source {
    /// What a message is made of: the source's own zero-copy slice type.
    type Piece;

    /// How many bytes are buffered.
    fn buffered(&self) -> usize;

    /// The offset of the first `\n` at or after `from`.
    fn find_newline(&self, from: usize) -> Option<usize>;

    /// The first four bytes, when there are that many.
    fn prefix(&self) -> Option<[u8; LENGTH_BYTES]>;

    fn skip(&mut self, count: usize);

    fn take(&mut self, count: usize) -> Self::Piece;

    /// Takes a line of `count` bytes, and the `\n` after it if `terminated`.
    fn take_line(&mut self, count: usize, terminated: bool) -> Self::Piece {
        take_then_skip_end(self, count, terminated)
    }
}

/// A line as any source can cut it: taken, then its `\n` skipped.
fn take_then_skip_end<S: Source + ?Sized>(source: &mut S, count: usize, terminated: bool) -> S::Piece {
    let line = source.take(count);
    source.skip(usize::from(terminated));
    line
}

/// Where the splitter is in a stream: which line or frame comes next, where it
/// started, and how much of it is known to hold no `\n` (so that a long line arriving
/// over many reads is scanned once, not once per read).
#[derive(Debug, Clone)]
pub struct Splitter {
    unit: Unit,
    max: usize,
    number: u64,
    offset: u64,
    scanned: usize,
}

impl Splitter {
    pub fn new(unit: Unit, max_message_bytes: u64) -> Self {
        let max = usize::try_from(max_message_bytes).unwrap_or(usize::MAX);
        Self { unit, max, number: 1, offset: 0, scanned: 0 }
    }

    /// Splits the next message off `source`. `Ok(None)` means more bytes are needed,
    /// or, once `ended`, that the stream is done. After an error the stream cannot be
    /// trusted any further.
    pub fn next<S: Source>(&mut self, source: &mut S, ended: bool) -> Result<Option<S::Piece>, DecodeError> {
        match self.unit {
            Unit::Line => self.next_line(source, ended),
            Unit::Frame => self.next_frame(source, ended),
        }
    }

    fn next_line<S: Source>(&mut self, source: &mut S, ended: bool) -> Result<Option<S::Piece>, DecodeError> {
        loop {
            let newline = source.find_newline(self.scanned);
            let end = match newline {
                Some(end) => end,
                None if source.buffered() > self.max => return Err(self.line_too_long()),
                None if ended && source.buffered() > 0 => source.buffered(),
                None => {
                    self.scanned = source.buffered();
                    return Ok(None);
                }
            };
            if end > self.max {
                return Err(self.line_too_long());
            }
            let line = source.take_line(end, newline.is_some());
            self.offset += (end + usize::from(newline.is_some())) as u64;
            self.number += 1;
            self.scanned = 0;
            if end > 0 {
                return Ok(Some(line));
            }
        }
    }

    fn next_frame<S: Source>(&mut self, source: &mut S, ended: bool) -> Result<Option<S::Piece>, DecodeError> {
        let Some(header) = source.prefix() else {
            return match source.buffered() {
                0 => Ok(None),
                partial if ended => Err(DecodeError::bad_framing(format!(
                    "{} is cut short: the body ends {partial} bytes into its {LENGTH_BYTES}-byte length header",
                    self.here()
                ))),
                _ => Ok(None),
            };
        };
        let len = u32::from_be_bytes(header) as usize;
        if len > self.max {
            return Err(DecodeError::too_large(format!(
                "{} declares {len} bytes, over the {}-byte message limit (--max-message-bytes)",
                self.here(),
                self.max
            )));
        }
        let available = source.buffered() - LENGTH_BYTES;
        if available < len {
            if ended {
                return Err(DecodeError::bad_framing(format!(
                    "{} is cut short: its header declares {len} bytes but only {available} follow",
                    self.here()
                )));
            }
            return Ok(None);
        }
        source.skip(LENGTH_BYTES);
        let frame = source.take(len);
        self.offset += (LENGTH_BYTES + len) as u64;
        self.number += 1;
        Ok(Some(frame))
    }

    fn line_too_long(&self) -> DecodeError {
        DecodeError::too_large(format!(
            "{} is longer than the {}-byte message limit (--max-message-bytes)",
            self.here(),
            self.max
        ))
    }

    /// The message being read, as error messages name it.
    fn here(&self) -> String {
        let unit = match self.unit {
            Unit::Line => "line",
            Unit::Frame => "frame",
        };
        format!("{unit} {} (starting at byte {})", self.number, self.offset)
    }
}

/// A complete body as the chunks it arrived in.
#[derive(Debug, Default)]
pub struct Chunks {
    chunks: VecDeque<Bytes>,
    /// How much of the first chunk is taken. The chunk itself stays whole until all
    /// of it is, so that every line cut from it names the same buffer
    /// ([`Payload::line_in`]).
    start: usize,
    len: usize,
}

impl From<Vec<Bytes>> for Chunks {
    fn from(body: Vec<Bytes>) -> Self {
        let chunks: VecDeque<Bytes> = body.into_iter().filter(|c| !c.is_empty()).collect();
        let len = chunks.iter().map(Bytes::len).sum();
        Self { chunks, start: 0, len }
    }
}

impl Chunks {
    /// The bytes left, chunk by chunk.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        self.chunks.iter().enumerate().map(|(i, chunk)| if i == 0 { &chunk[self.start..] } else { &chunk[..] })
    }

    /// Removes the first `count` bytes, adding them to `kept` as chunk slices if given.
    fn advance(&mut self, count: usize, mut kept: Option<&mut Payload>) {
        assert!(count <= self.len, "advancing {count} bytes past the {} left", self.len);
        self.len -= count;
        let mut left = count;
        while left > 0 {
            let front = self.chunks.front().expect("len counts the chunks' bytes");
            let taken = left.min(front.len() - self.start);
            if let Some(payload) = kept.as_deref_mut() {
                payload.push(front.slice(self.start..self.start + taken));
            }
            left -= taken;
            self.start += taken;
            if self.start == front.len() {
                self.chunks.pop_front();
                self.start = 0;
            }
        }
    }
}

impl Source for Chunks {
    type Piece = Payload;

    fn buffered(&self) -> usize {
        self.len
    }

    fn find_newline(&self, from: usize) -> Option<usize> {
        let mut base = 0;
        for chunk in self.chunks() {
            let end = base + chunk.len();
            if end > from {
                let start = from.saturating_sub(base);
                if let Some(at) = memchr::memchr(b'\n', &chunk[start..]) {
                    return Some(base + start + at);
                }
            }
            base = end;
        }
        None
    }

    fn prefix(&self) -> Option<[u8; LENGTH_BYTES]> {
        if self.len < LENGTH_BYTES {
            return None;
        }
        // The header may straddle chunks; these four bytes are the only ones copied.
        let mut header = [0; LENGTH_BYTES];
        let mut filled = 0;
        for chunk in self.chunks() {
            let n = (LENGTH_BYTES - filled).min(chunk.len());
            header[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == LENGTH_BYTES {
                break;
            }
        }
        Some(header)
    }

    fn skip(&mut self, count: usize) {
        self.advance(count, None);
    }

    fn take(&mut self, count: usize) -> Payload {
        let mut payload = Payload::new();
        self.advance(count, Some(&mut payload));
        payload
    }

    /// A line that ends inside the first chunk is cut as a line of that chunk.
    fn take_line(&mut self, count: usize, terminated: bool) -> Payload {
        let end = self.start + count;
        match self.chunks.front() {
            Some(front) if terminated && count > 0 && end < front.len() => {
                let line = Payload::line_in(front.clone(), self.start..end);
                self.advance(count + 1, None);
                line
            }
            _ => take_then_skip_end(self, count, terminated),
        }
    }
}

/// The raw socket's read buffer: messages are split off its front, frozen, and shared
/// with the batch; the read buffer keeps only the unfinished tail.
impl Source for BytesMut {
    type Piece = Bytes;

    fn buffered(&self) -> usize {
        BytesMut::len(self)
    }

    fn find_newline(&self, from: usize) -> Option<usize> {
        memchr::memchr(b'\n', &self[from..]).map(|at| from + at)
    }

    fn prefix(&self) -> Option<[u8; LENGTH_BYTES]> {
        self.get(..LENGTH_BYTES).map(|h| h.try_into().expect("four bytes"))
    }

    fn skip(&mut self, count: usize) {
        self.advance(count);
    }

    fn take(&mut self, count: usize) -> Bytes {
        self.split_to(count).freeze()
    }
}

/// Encoders for tests of both ingest paths.
#[cfg(test)]
pub mod encode {
    /// Messages as a frames stream.
    pub fn frames(messages: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for message in messages {
            out.extend_from_slice(&(message.len() as u32).to_be_bytes());
            out.extend_from_slice(message);
        }
        out
    }

    /// Messages as lines, the last one `\n`-terminated or not.
    pub fn lines(messages: &[Vec<u8>], final_newline: bool) -> Vec<u8> {
        let mut out = messages.join(&b'\n');
        if final_newline && !messages.is_empty() {
            out.push(b'\n');
        }
        out
    }

    /// `stream` cut into chunks at `cuts` (offsets in any order, clamped to the end).
    pub fn cut(stream: &[u8], cuts: &[usize]) -> Vec<bytes::Bytes> {
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(stream.len())).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut start = 0;
        for end in cuts.into_iter().chain([stream.len()]) {
            out.push(bytes::Bytes::copy_from_slice(&stream[start..end]));
            start = end;
        }
        out
    }

    /// Whether every slice of `piece` lies inside one of `body`'s chunks: no copy.
    pub fn is_slice_of(body: &[bytes::Bytes], piece: &crate::message::Payload) -> bool {
        piece.chunks().iter().all(|slice| {
            let slice = slice.as_ptr_range();
            body.iter().any(|chunk| {
                let chunk = chunk.as_ptr_range();
                chunk.start <= slice.start && slice.end <= chunk.end
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::DecodeErrorKind;
    use super::encode::{cut, frames, is_slice_of, lines};
    use super::*;
    use proptest::prelude::*;

    /// Splits a complete body, as the HTTP path does.
    fn whole(unit: Unit, max: u64, body: Vec<Bytes>) -> Result<Vec<Payload>, DecodeError> {
        let mut splitter = Splitter::new(unit, max);
        let mut source = Chunks::from(body);
        std::iter::from_fn(|| splitter.next(&mut source, true).transpose()).collect()
    }

    /// Feeds the stream read by read into one buffer, as the raw socket does.
    fn incremental(unit: Unit, max: u64, reads: Vec<Bytes>) -> Result<Vec<Bytes>, DecodeError> {
        let mut splitter = Splitter::new(unit, max);
        let mut buffer = BytesMut::new();
        let mut out = Vec::new();
        let count = reads.len();
        for (i, read) in reads.into_iter().enumerate() {
            buffer.extend_from_slice(&read);
            while let Some(message) = splitter.next(&mut buffer, i + 1 == count)? {
                out.push(message);
            }
        }
        Ok(out)
    }

    fn texts(payloads: Vec<Payload>) -> Vec<String> {
        payloads.iter().map(|p| String::from_utf8(p.to_vec()).unwrap()).collect()
    }

    fn error(result: Result<Vec<Payload>, DecodeError>) -> (DecodeErrorKind, String) {
        let e = result.unwrap_err();
        (e.kind, e.message)
    }

    #[test]
    fn lines_skip_empty_ones_keep_cr_and_count_an_unterminated_last_one() {
        let body = cut(b"a\n\nb\r\n\nc", &[1, 5]);
        assert_eq!(texts(whole(Unit::Line, 10, body).unwrap()), ["a", "b\r", "c"]);
        assert!(whole(Unit::Line, 10, vec![]).unwrap().is_empty());
        assert!(whole(Unit::Line, 10, cut(b"\n\n", &[1])).unwrap().is_empty());
    }

    #[test]
    fn lines_inside_one_chunk_keep_their_place_in_it() {
        let mut splitter = Splitter::new(Unit::Line, 10);
        let mut body = Chunks::from(cut(b"ab\ncd\nef\ngh", &[5]));
        let mut next = || splitter.next(&mut body, true).unwrap().unwrap().into_ended_line();
        let (buffer, range) = next().unwrap();
        assert_eq!((&buffer[..], range), (&b"ab\ncd"[..], 0..3));
        assert!(next().is_err(), "its newline is in the next chunk");
        let (buffer, range) = next().unwrap();
        assert_eq!((&buffer[..], range), (&b"\nef\ngh"[..], 1..4));
        assert!(next().is_err(), "no newline after the last line");
    }

    #[test]
    fn a_long_line_names_its_number_and_offset() {
        let (kind, message) = error(whole(Unit::Line, 3, cut(b"ab\n\nabcd\nx", &[])));
        assert_eq!(kind, DecodeErrorKind::TooLarge);
        assert_eq!(
            message,
            "line 3 (starting at byte 4) is longer than the 3-byte message limit (--max-message-bytes)"
        );
        assert_eq!(texts(whole(Unit::Line, 3, cut(b"abc\nabc", &[])).unwrap()), ["abc", "abc"]);
    }

    #[test]
    fn a_line_over_the_limit_fails_before_its_newline_arrives() {
        let mut splitter = Splitter::new(Unit::Line, 4);
        let mut buffer = BytesMut::from(&b"abcd"[..]);
        assert_eq!(splitter.next(&mut buffer, false), Ok(None));
        buffer.extend_from_slice(b"e");
        assert_eq!(splitter.next(&mut buffer, false).unwrap_err().kind, DecodeErrorKind::TooLarge);
    }

    #[test]
    fn frames_allow_empty_messages() {
        let body = frames(&[b"one".to_vec(), vec![], b"three".to_vec()]);
        assert_eq!(texts(whole(Unit::Frame, 10, cut(&body, &[2, 9])).unwrap()), ["one", "", "three"]);
    }

    #[test]
    fn a_truncated_frame_anywhere_is_bad_framing() {
        let mut body = frames(&[b"one".to_vec()]);
        body.extend_from_slice(&[0, 0]);
        let (kind, message) = error(whole(Unit::Frame, 10, cut(&body, &[])));
        assert_eq!(kind, DecodeErrorKind::BadFraming);
        assert_eq!(
            message,
            "frame 2 (starting at byte 7) is cut short: the body ends 2 bytes into its 4-byte length header"
        );

        let body = frames(&[b"one".to_vec(), b"four".to_vec()]);
        let (kind, message) = error(whole(Unit::Frame, 10, cut(&body[..body.len() - 1], &[5])));
        assert_eq!(kind, DecodeErrorKind::BadFraming);
        assert_eq!(message, "frame 2 (starting at byte 7) is cut short: its header declares 4 bytes but only 3 follow");
    }

    #[test]
    fn an_oversize_frame_fails_by_its_header_alone() {
        let mut splitter = Splitter::new(Unit::Frame, 100);
        let mut buffer = BytesMut::from(&1000u32.to_be_bytes()[..]);
        let e = splitter.next(&mut buffer, false).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::TooLarge);
        assert!(e.message.contains("frame 1 (starting at byte 0) declares 1000 bytes"), "{}", e.message);
    }

    #[test]
    fn waits_for_more_until_the_stream_ends() {
        let mut splitter = Splitter::new(Unit::Frame, 100);
        let mut buffer = BytesMut::from(&frames(&[b"abc".to_vec()])[..5]);
        assert_eq!(splitter.next(&mut buffer, false), Ok(None));
        buffer.extend_from_slice(b"bc");
        assert_eq!(splitter.next(&mut buffer, false), Ok(Some(Bytes::from_static(b"abc"))));
        assert_eq!(splitter.next(&mut buffer, true), Ok(None));
    }

    /// Both paths give back `messages` from `body`, the HTTP one as slices of its chunks.
    fn round_trip(unit: Unit, max: u64, body: Vec<Bytes>, messages: &[Vec<u8>]) -> Result<(), TestCaseError> {
        let decoded = whole(unit, max, body.clone()).unwrap();
        prop_assert!(decoded.iter().all(|m| is_slice_of(&body, m)));
        prop_assert_eq!(decoded.iter().map(Payload::to_vec).collect::<Vec<_>>(), messages);
        let streamed = incremental(unit, max, body).unwrap();
        prop_assert_eq!(streamed.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), messages);
        Ok(())
    }

    proptest! {
        #[test]
        fn lines_round_trip(
            messages in prop::collection::vec(prop::collection::vec(any::<u8>().prop_map(|b| if b == b'\n' { b'n' } else { b }), 1..40), 0..30),
            final_newline in any::<bool>(),
            cuts in prop::collection::vec(0usize..1500, 0..12),
        ) {
            round_trip(Unit::Line, 40, cut(&lines(&messages, final_newline), &cuts), &messages)?;
        }

        #[test]
        fn lines_laid_out_as_a_batch_file_are_the_lines_ended(
            messages in prop::collection::vec(prop::collection::vec(any::<u8>().prop_map(|b| if b == b'\n' { b'n' } else { b }), 0..40), 0..30),
            final_newline in any::<bool>(),
            cuts in prop::collection::vec(0usize..1500, 0..12),
        ) {
            let lines_in = whole(Unit::Line, 40, cut(&lines(&messages, final_newline), &cuts)).unwrap();
            let batch = lines_in
                .into_iter()
                .map(|payload| crate::message::Message { seq: 0, name: None, payload, line: true, origin: None })
                .collect();
            let expected: Vec<u8> = messages.iter().filter(|m| !m.is_empty()).flat_map(|m| m.iter().chain(b"\n")).copied().collect();
            prop_assert_eq!(crate::encode::batch_file(batch).to_vec(), expected);
        }

        #[test]
        fn frames_round_trip(
            messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..20),
            cuts in prop::collection::vec(0usize..6000, 0..12),
        ) {
            round_trip(Unit::Frame, 300, cut(&frames(&messages), &cuts), &messages)?;
        }

        #[test]
        fn a_truncated_frames_stream_never_decodes(
            messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..50), 1..10),
            short_by in 1usize..50,
            cuts in prop::collection::vec(0usize..600, 0..6),
        ) {
            let stream = frames(&messages);
            let frame_ends: Vec<usize> = (0..=messages.len()).map(|n| frames(&messages[..n]).len()).collect();
            let stream = &stream[..stream.len().saturating_sub(short_by)];
            prop_assume!(!frame_ends.contains(&stream.len()), "cut between frames: still well formed");
            let kind = whole(Unit::Frame, 100, cut(stream, &cuts)).unwrap_err().kind;
            prop_assert_eq!(kind, DecodeErrorKind::BadFraming);
        }
    }
}
