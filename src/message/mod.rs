//! A message: its payload, the name it asks for, and the sequence number that
//! orders it. `file_name` holds the rules for the names messages become in a commit.
//!
//! Payloads are `Bytes` slices of the buffers the bytes arrived in: a message that
//! straddles two reads of a body is a list of two slices, never a fresh copy.

pub mod file_name;

use std::ops::Range;

use bytes::Bytes;
use smallvec::SmallVec;

/// The bytes of one message or file, as one or more zero-copy slices.
#[derive(Clone, Debug, Default)]
pub struct Payload {
    /// Almost always one slice, held inline: no allocation per message.
    chunks: SmallVec<[Bytes; 1]>,
    len: u64,
    /// Set by [`Payload::line_in`]: where the one slice lies in the buffer it was cut from.
    line_in: Option<LineIn>,
}

/// A line's place in its buffer, the `\n` that ended it right after it.
#[derive(Clone, Debug)]
struct LineIn {
    buffer: Bytes,
    start: usize,
}

impl Payload {
    pub fn new() -> Self {
        Self::default()
    }

    /// A line cut from `buffer` at `range`, the `\n` that ended it at `range.end`. It
    /// remembers its buffer, so that a batch file can take the line with its `\n` as one
    /// slice, and consecutive lines as one ([`Payload::into_ended_line`]).
    pub fn line_in(buffer: Bytes, range: Range<usize>) -> Self {
        debug_assert_eq!(buffer.get(range.end), Some(&b'\n'), "the line's end follows it");
        let chunk = buffer.slice(range.clone());
        let line_in = (!chunk.is_empty()).then_some(LineIn { buffer, start: range.start });
        let mut payload = Payload::from(chunk);
        payload.line_in = line_in;
        payload
    }

    /// The buffer a [`Payload::line_in`] line was cut from, and the range of it the line
    /// and its `\n` take; the payload itself if it was not cut so or has grown since.
    pub fn into_ended_line(self) -> Result<(Bytes, Range<usize>), Payload> {
        match self.line_in {
            Some(LineIn { buffer, start }) if self.chunks.len() == 1 => {
                let end = start + self.chunks[0].len() + 1;
                Ok((buffer, start..end))
            }
            _ => Err(self),
        }
    }

    /// Where a [`Payload::line_in`] line lies: the buffer it was cut from and its start
    /// there; `None` if it was not cut so or has grown since.
    pub fn line_place(&self) -> Option<(&Bytes, usize)> {
        match &self.line_in {
            Some(LineIn { buffer, start }) if self.chunks.len() == 1 => Some((buffer, *start)),
            _ => None,
        }
    }

    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len() as u64;
            self.chunks.push(chunk);
        }
    }

    /// Moves `other`'s slices to the end of this payload.
    pub fn append(&mut self, other: Payload) {
        self.len += other.len;
        self.chunks.extend(other.chunks);
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// Copies the payload into one vector: for tests and for the rare consumer that
    /// needs contiguous bytes (never on the commit path).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len as usize);
        for chunk in &self.chunks {
            out.extend_from_slice(chunk);
        }
        out
    }
}

/// Payloads are equal when their slices are: where a line was cut from does not count.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.chunks == other.chunks
    }
}

impl Eq for Payload {}

impl From<Bytes> for Payload {
    fn from(chunk: Bytes) -> Self {
        let mut payload = Payload::new();
        payload.push(chunk);
        payload
    }
}

impl From<Vec<Bytes>> for Payload {
    fn from(chunks: Vec<Bytes>) -> Self {
        let mut payload = Payload::new();
        for chunk in chunks {
            payload.push(chunk);
        }
        payload
    }
}

/// Whether two slices, both alive, are the same bytes of the same buffer: what lets
/// lines cut from one buffer be taken together as the stretch they lie in.
pub fn same_bytes(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

/// One message as ingest decoded it, before the batcher numbers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// The file name the client asked for; `None` takes the default name.
    pub name: Option<String>,
    pub payload: Payload,
    /// Came from a line-oriented framing: `--layout batch` ends it with `\n`.
    pub line: bool,
    /// Where a `--source` read it; `None` for what producers send. Boxed: a message
    /// is moved twice on its way into a batch, and most have none.
    pub origin: Option<Box<Origin>>,
}

/// A numbered message inside a batch.
#[derive(Clone, Debug)]
pub struct Message {
    /// Arrival order, unique across restarts (see `Sequencer`).
    pub seq: u64,
    pub name: Option<String>,
    pub payload: Payload,
    pub line: bool,
    pub origin: Option<Box<Origin>>,
}

/// Where a source (`--source`) read a message: which source, by its index among the
/// configured ones, and its place there. The sink side folds the origins of each
/// batch into the checkpoint committed with it (`encode::checkpoint`), which is how
/// a restarted source knows where to resume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub source: u16,
    pub at: Position,
}

/// A message's place in its source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    /// A log with offsets (Kafka): the message at `offset` of `partition`.
    Offset { partition: i32, offset: i64 },
    /// A queue without positions (RabbitMQ, SQS): the message's own id, to recognise
    /// it should it be delivered again.
    Id(std::sync::Arc<str>),
}

impl Message {
    pub fn file_name(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => file_name::default_name(self.seq),
        }
    }
}

/// Hands out numbers that increase in arrival order and across restarts.
///
/// The first number is the wall clock in nanoseconds at start-up, so a restarted
/// sidecar starts above anything the previous run could have numbered (it would have
/// had to accept more than one message per nanosecond to catch up), without a state
/// file. The same scheme names `dir:` commits.
#[derive(Debug)]
pub struct Sequencer {
    next: u64,
}

impl Sequencer {
    pub fn starting_now() -> Self {
        Self::starting_at(unix_nanos())
    }

    pub fn starting_at(first: u64) -> Self {
        Self { next: first }
    }

    /// Reserves `count` consecutive numbers and returns the first.
    pub fn take(&mut self, count: u64) -> u64 {
        let first = self.next;
        self.next += count;
        first
    }

    /// Moves past `floor`, the highest number a previous run is known to have used.
    pub fn skip_past(&mut self, floor: u64) {
        self.next = self.next.max(floor + 1);
    }
}

/// A random number, different in every process and every call, for names that must
/// not repeat (std's hasher keys are random; no dependency needed).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// This machine's host name (a pod's name in Kubernetes), if it has one: what names
/// this sidecar among several writing to one place.
pub fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_owned()).filter(|name| !name.is_empty())
}

pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}
