//! From the records a previous run left to the batches to commit again: messages past
//! the last committed mark, grouped as they were sealed, so that a batch the sink may
//! already hold is rebuilt exactly (same messages, same first seq, same commit id).
//! Messages no seal covers were still in the open batch: they were never committed
//! and are batched afresh. Messages between two seals that no seal covers had theirs
//! damaged (quarantined): they become a batch of their own, in their place, so that
//! nothing valid is dropped.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::record::{Kind, Record};
use crate::message::{Message, Payload};

/// What start-up hands the batcher.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Batches sealed before the crash and not known to be committed, oldest first.
    pub sealed: Vec<Vec<Message>>,
    /// Messages of the batch that was open, in order.
    pub open: Vec<Message>,
    /// The highest seq any record names: new messages are numbered past it.
    pub max_seq: u64,
    /// Every message up to this seq is committed.
    pub committed: u64,
}

impl Recovered {
    pub fn messages(&self) -> u64 {
        self.sealed.iter().map(|b| b.len() as u64).sum::<u64>() + self.open.len() as u64
    }
}

/// Groups `records` (from every segment, any order). A seq seen twice keeps its first
/// record: the spool never writes one twice, so a second is a stale copy.
pub fn recover(records: impl IntoIterator<Item = Record>) -> Recovered {
    let mut messages = BTreeMap::new();
    let mut seals = BTreeMap::new();
    let mut out = Recovered::default();
    for record in records {
        let seq = record.header.seq;
        out.max_seq = out.max_seq.max(seq);
        match record.header.kind {
            Kind::Message => {
                messages.entry(seq).or_insert(record);
            }
            Kind::Sealed => {
                if let Some(last) = record.sealed_last() {
                    out.max_seq = out.max_seq.max(last);
                    seals.insert(seq, last);
                }
            }
            Kind::Committed => out.committed = out.committed.max(seq),
        }
    }
    let mut messages = messages.split_off(&(out.committed + 1));
    for (first, last) in seals {
        let rest = messages.split_off(&(last + 1));
        let mut batch = std::mem::replace(&mut messages, rest);
        let sealed = batch.split_off(&first);
        for group in [batch, sealed] {
            if !group.is_empty() {
                out.sealed.push(group.into_values().map(message).collect());
            }
        }
    }
    out.open = messages.into_values().map(message).collect();
    out
}

/// The message a message record holds.
pub(super) fn message(record: Record) -> Message {
    let name_len = record.header.name_len as usize;
    let name = (name_len > 0).then(|| String::from_utf8_lossy(&record.body[..name_len]).into_owned());
    let payload: Bytes = record.body.slice(name_len..);
    Message { seq: record.header.seq, name, payload: Payload::from(payload), line: record.header.line, origin: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::record::{parse, Header, Parsed};

    fn record(kind: Kind, seq: u64, body: &[u8]) -> Record {
        let header = Header { kind, line: false, body_len: body.len() as u32, name_len: 0, seq };
        let mut bytes = header.encode([body]).to_vec();
        bytes.extend_from_slice(body);
        match parse(&Bytes::from(bytes)) {
            Parsed::Record(record) => record,
            other => panic!("{other:?}"),
        }
    }

    fn seqs(batch: &[Message]) -> Vec<u64> {
        batch.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn batches_come_back_as_sealed_past_the_committed_mark() {
        let mut records: Vec<Record> = (10..=20).map(|s| record(Kind::Message, s, b"x")).collect();
        records.push(record(Kind::Sealed, 10, &12u64.to_le_bytes()));
        records.push(record(Kind::Sealed, 13, &16u64.to_le_bytes()));
        records.push(record(Kind::Sealed, 17, &18u64.to_le_bytes()));
        records.push(record(Kind::Committed, 12, b""));
        records.push(record(Kind::Message, 14, b"a stale copy"));
        let recovered = recover(records);
        assert_eq!(recovered.sealed.iter().map(|b| seqs(b)).collect::<Vec<_>>(), [vec![13, 14, 15, 16], vec![17, 18]]);
        assert_eq!(seqs(&recovered.open), [19, 20]);
        assert_eq!((recovered.max_seq, recovered.committed, recovered.messages()), (20, 12, 8));
        assert_eq!(recovered.sealed[0][1].payload.to_vec(), b"x");
    }

    #[test]
    fn messages_whose_seal_was_lost_are_kept_as_a_batch_in_their_place() {
        let mut records: Vec<Record> = (1..=9).map(|s| record(Kind::Message, s, b"x")).collect();
        // The seal of 1..=3 was quarantined.
        records.push(record(Kind::Sealed, 4, &6u64.to_le_bytes()));
        let recovered = recover(records);
        assert_eq!(recovered.sealed.iter().map(|b| seqs(b)).collect::<Vec<_>>(), [vec![1, 2, 3], vec![4, 5, 6]]);
        assert_eq!(seqs(&recovered.open), [7, 8, 9]);
    }

    #[test]
    fn a_seal_whose_messages_were_deleted_is_ignored() {
        let records = vec![record(Kind::Sealed, 1, &5u64.to_le_bytes()), record(Kind::Message, 6, b"y")];
        let recovered = recover(records);
        assert!(recovered.sealed.is_empty());
        assert_eq!((seqs(&recovered.open), recovered.max_seq), (vec![6], 6));
    }
}
