//! Reading a sealed batch back from the segments, for a batch whose messages were let
//! go of from memory while it waited for a lagging sink (see `batch`): the spool then
//! holds the backlog, bounded by `--max-spool-bytes`, and memory only what is being
//! committed.
//!
//! The spool knows the byte ranges ([`Extent`]s) the batch's records lie in, from
//! where its first request's records start to where the next request's do. They are
//! read a few MiB at a time into one buffer each, and every record is parsed and
//! checked where it lies: a payload is a slice of that buffer, never a copy. Only a
//! record cut by the end of a read is copied, to the front of the next buffer.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes};

use super::record::{claimed_len, parse, Kind, Parsed};
use super::request;
use crate::message::Message;

/// Bytes read at once: large enough that a read costs little per record, small enough
/// that a batch's buffers hold little besides its records.
const READ_BYTES: u64 = 4 << 20;

/// Bytes `from..to` of the segment at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub path: PathBuf,
    pub from: u64,
    pub to: u64,
}

/// The messages `first..=last`, whose records lie in `extents`, in order.
pub fn read_back(extents: &[Extent], first: u64, last: u64) -> io::Result<Vec<Message>> {
    read_back_by(extents, first, last, READ_BYTES)
}

fn read_back_by(extents: &[Extent], first: u64, last: u64, read_bytes: u64) -> io::Result<Vec<Message>> {
    // Bounded: the range comes from a batch, but a batch is not trusted to be small.
    let mut messages = Vec::with_capacity((last.saturating_sub(first) + 1).min(1 << 20) as usize);
    for extent in extents {
        let mut file = File::open(&extent.path)?;
        file.seek(SeekFrom::Start(extent.from))?;
        let mut unread = extent.to.saturating_sub(extent.from);
        // Read but not yet parsed: at most the start of one record.
        let mut rest = Bytes::new();
        loop {
            loop {
                let record = match parse(&rest) {
                    Parsed::Record(record) => record,
                    Parsed::Torn => break,
                    Parsed::Corrupt => return Err(damaged(&extent.path, "damaged")),
                };
                rest.advance(record.header.record_len() as usize);
                if record.header.kind != Kind::Messages || record.last_seq() < first {
                    continue;
                }
                if record.header.seq > last {
                    return Ok(messages);
                }
                let whole = (first..=last).contains(&record.header.seq) && record.last_seq() <= last;
                match whole {
                    true => messages.extend(request::messages(&record)),
                    false => messages.extend(request::messages(&record).filter(|m| (first..=last).contains(&m.seq))),
                }
                if record.last_seq() >= last {
                    return Ok(messages);
                }
            }
            if unread == 0 {
                if !rest.is_empty() {
                    return Err(damaged(&extent.path, "cut short"));
                }
                break;
            }
            // At least the whole of the record `rest` begins, however large.
            let size = unread.min(read_bytes.max(claimed_len(&rest).saturating_sub(rest.len() as u64)));
            let mut buf = Vec::with_capacity(rest.len() + size as usize);
            buf.extend_from_slice(&rest);
            let got = (&mut file).take(size).read_to_end(&mut buf)?;
            if (got as u64) < size {
                return Err(damaged(&extent.path, "shorter than written"));
            }
            unread -= size;
            rest = Bytes::from(buf);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the spool ends before message {last} of the batch {first}..={last}"),
    ))
}

fn damaged(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("spool segment {}: a record read back is {what}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::record::HEADER_LEN;
    use crate::spool::request::tests::message_record;

    #[test]
    fn records_straddling_reads_and_extents_come_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        // Two segments; the batch 3..=12 starts in the first and ends in the second.
        // Payloads of 1 to 150 bytes, so that reads of 64 bytes cut records
        // everywhere, headers included, and some records are longer than a read.
        let mut segments = [Vec::new(), Vec::new()];
        let mut starts = Vec::new();
        for seq in 1..=14u64 {
            let segment = &mut segments[usize::from(seq > 7)];
            starts.push(segment.len() as u64);
            segment.extend(message_record(seq, "", &vec![seq as u8; (seq as usize * 37) % 150 + 1]));
        }
        let paths: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("{i}.seg"))).collect();
        for (path, bytes) in paths.iter().zip(&segments) {
            std::fs::write(path, bytes).unwrap();
        }
        let extents = [
            Extent { path: paths[0].clone(), from: starts[2], to: segments[0].len() as u64 },
            Extent { path: paths[1].clone(), from: 0, to: starts[12] },
        ];
        for read_bytes in [1, 7, 64, 1 << 20] {
            let back = read_back_by(&extents, 3, 12, read_bytes).unwrap();
            assert_eq!(back.iter().map(|m| m.seq).collect::<Vec<_>>(), (3..=12).collect::<Vec<_>>());
            for m in &back {
                assert_eq!(m.payload.to_vec(), vec![m.seq as u8; (m.seq as usize * 37) % 150 + 1], "{read_bytes}");
            }
        }
        // A byte flipped in a payload the batch needs is caught, wherever the reads fall.
        let mut flipped = segments[1].clone();
        flipped[starts[9] as usize + HEADER_LEN + 20] ^= 1;
        std::fs::write(&paths[1], &flipped).unwrap();
        for read_bytes in [7, 1 << 20] {
            assert_eq!(read_back_by(&extents, 3, 12, read_bytes).unwrap_err().kind(), io::ErrorKind::InvalidData);
        }
    }
}
