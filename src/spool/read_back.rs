//! Reading a sealed batch back from the segments, for a batch whose messages were let
//! go of from memory while it waited for a lagging sink (see `batch`): the spool then
//! holds the backlog, bounded by `--max-spool-bytes`, and memory only what is being
//! committed. Reading starts where the batch's first message was written and goes
//! record by record, each checked as at start-up, into the segments after it if need
//! be, until the batch's last message.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};

use super::record::{parse, Kind, Parsed, HEADER_LEN};
use super::replay::message;
use crate::message::Message;

/// The messages `first..=last`, the first written at `offset` in the first of
/// `segments` (the others are the segments written after it, in order).
pub fn read_back(segments: &[PathBuf], offset: u64, first: u64, last: u64) -> io::Result<Vec<Message>> {
    let mut messages = Vec::new();
    for (i, path) in segments.iter().enumerate() {
        let mut file = File::open(path)?;
        if i == 0 {
            file.seek(SeekFrom::Start(offset))?;
        }
        let mut reader = BufReader::with_capacity(1 << 20, file);
        while let Some(record) = next_record(&mut reader, path)? {
            if record.header.kind != Kind::Message || record.header.seq < first {
                continue;
            }
            let seq = record.header.seq;
            if seq > last {
                return Ok(messages);
            }
            messages.push(message(record));
            if seq == last {
                return Ok(messages);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the spool ends before message {last} of the batch {first}..={last}"),
    ))
}

/// The next whole record, or `None` at the end of the segment.
fn next_record(reader: &mut impl Read, path: &std::path::Path) -> io::Result<Option<super::record::Record>> {
    let mut buf = BytesMut::zeroed(HEADER_LEN);
    match reader.read_exact(&mut buf) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let header = buf.clone().freeze();
    if parse(&header) == Parsed::Corrupt {
        return Err(damaged(path, Parsed::Corrupt));
    }
    let body_len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
    buf.resize(HEADER_LEN + body_len, 0);
    reader.read_exact(&mut buf[HEADER_LEN..])?;
    match parse(&Bytes::from(buf)) {
        Parsed::Record(record) => Ok(Some(record)),
        other => Err(damaged(path, other)),
    }
}

fn damaged(path: &std::path::Path, parsed: Parsed) -> io::Error {
    let what = if parsed == Parsed::Torn { "cut short" } else { "damaged" };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("spool segment {}: a record read back is {what}", path.display()),
    )
}
