//! Reading a fuzz input: a few leading bytes set the knobs (limits, read sizes, ...),
//! the rest is the body. Past the end every knob reads as zero, so every input,
//! however short, is a valid case and no run is wasted on rejecting it.

use bytes::Bytes;

pub struct Knobs<'a> {
    bytes: &'a [u8],
}

impl<'a> Knobs<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub fn byte(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    pub fn u64(&mut self) -> u64 {
        let mut value = [0; 8];
        let bytes = self.take(8);
        value[..bytes.len()].copy_from_slice(bytes);
        u64::from_be_bytes(value)
    }

    /// Up to seven chunk sizes of 1 to 256 bytes, for [`cut`].
    pub fn sizes(&mut self) -> Vec<usize> {
        let count = self.byte() % 8;
        (0..count).map(|_| usize::from(self.byte()) + 1).collect()
    }

    /// The next `count` bytes, or as many as are left.
    pub fn take(&mut self, count: usize) -> &'a [u8] {
        let (taken, rest) = self.bytes.split_at(count.min(self.bytes.len()));
        self.bytes = rest;
        taken
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn rest(self) -> &'a [u8] {
        self.bytes
    }
}

/// `body` as the chunks (HTTP) or reads (raw socket) it arrives in: chunk sizes cycle
/// through `sizes`; no sizes means one chunk.
pub fn cut(body: &[u8], sizes: &[usize]) -> Vec<Bytes> {
    if sizes.is_empty() {
        return vec![Bytes::copy_from_slice(body)];
    }
    let mut chunks = Vec::new();
    let mut rest = body;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunks.push(Bytes::copy_from_slice(chunk));
        rest = tail;
    }
    chunks
}
