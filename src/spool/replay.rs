//! From the records a previous run left to the batches to commit again: messages past
//! the last committed mark, grouped as they were sealed, so that a batch the sink may
//! already hold is rebuilt exactly (same messages, same first seq, same commit id).
//! Messages no seal covers were still in the open batch: they were never committed
//! and are batched afresh. Messages between two seals that no seal covers had theirs
//! damaged (quarantined): they become a batch of their own, in their place, so that
//! nothing valid is dropped.

use std::collections::BTreeMap;

use super::record::{Kind, Record};
use super::request;
use crate::message::Message;

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
/// message: the spool never writes one twice, so a second is a stale copy.
pub fn recover(records: impl IntoIterator<Item = Record>) -> Recovered {
    let mut messages = BTreeMap::new();
    let mut seals = BTreeMap::new();
    let mut out = Recovered::default();
    for record in records {
        out.max_seq = out.max_seq.max(record.last_seq());
        match record.header.kind {
            Kind::Messages => {
                for message in request::messages(&record) {
                    messages.entry(message.seq).or_insert(message);
                }
            }
            Kind::Sealed => {
                if let Some(last) = record.sealed_last() {
                    seals.insert(record.header.seq, last);
                }
            }
            Kind::Committed => out.committed = out.committed.max(record.header.seq),
        }
    }
    let mut messages = messages.split_off(&(out.committed + 1));
    for (first, last) in seals {
        let rest = messages.split_off(&(last + 1));
        let mut batch = std::mem::replace(&mut messages, rest);
        let sealed = batch.split_off(&first);
        for group in [batch, sealed] {
            if !group.is_empty() {
                out.sealed.push(group.into_values().collect());
            }
        }
    }
    out.open = messages.into_values().collect();
    out
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::spool::record::{parse, Header, Parsed};
    use crate::spool::request::tests::{message_record, placed};

    fn parsed(bytes: Vec<u8>) -> Record {
        match parse(&Bytes::from(bytes)) {
            Parsed::Record(record) => record,
            other => panic!("{other:?}"),
        }
    }

    fn message(seq: u64, payload: &[u8]) -> Record {
        parsed(message_record(seq, "", payload))
    }

    fn mark(kind: Kind, seq: u64, body: &[u8]) -> Record {
        let header = Header { kind, body_len: body.len() as u32, count: 0, seq, segment: 1 };
        let mut bytes = header.encode([body]).to_vec();
        bytes.extend_from_slice(body);
        parsed(bytes)
    }

    fn sealed(first: u64, last: u64) -> Record {
        mark(Kind::Sealed, first, &last.to_le_bytes())
    }

    fn seqs(batch: &[Message]) -> Vec<u64> {
        batch.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn batches_come_back_as_sealed_past_the_committed_mark() {
        let mut records: Vec<Record> = (10..=20).map(|s| message(s, b"x")).collect();
        records.push(sealed(10, 12));
        records.push(sealed(13, 16));
        records.push(sealed(17, 18));
        records.push(mark(Kind::Committed, 12, b""));
        records.push(message(14, b"a stale copy"));
        let recovered = recover(records);
        assert_eq!(recovered.sealed.iter().map(|b| seqs(b)).collect::<Vec<_>>(), [vec![13, 14, 15, 16], vec![17, 18]]);
        assert_eq!(seqs(&recovered.open), [19, 20]);
        assert_eq!((recovered.max_seq, recovered.committed, recovered.messages()), (20, 12, 8));
        assert_eq!(recovered.sealed[0][1].payload.to_vec(), b"x");
    }

    #[test]
    fn a_request_s_record_is_split_where_its_batches_were() {
        let request: Vec<Message> = (1..=6)
            .map(|seq| Message {
                seq,
                name: None,
                payload: Bytes::from(vec![b'a'; seq as usize]).into(),
                line: false,
                origin: None,
            })
            .collect();
        let records = vec![parsed(placed(super::request::encode(&request).unwrap()).concat()), sealed(1, 4)];
        let recovered = recover(records);
        assert_eq!(recovered.sealed.iter().map(|b| seqs(b)).collect::<Vec<_>>(), [vec![1, 2, 3, 4]]);
        assert_eq!((seqs(&recovered.open), recovered.max_seq), (vec![5, 6], 6));
        assert_eq!(recovered.open[1].payload.to_vec(), b"aaaaaa");
    }

    #[test]
    fn messages_whose_seal_was_lost_are_kept_as_a_batch_in_their_place() {
        let mut records: Vec<Record> = (1..=9).map(|s| message(s, b"x")).collect();
        // The seal of 1..=3 was quarantined.
        records.push(sealed(4, 6));
        let recovered = recover(records);
        assert_eq!(recovered.sealed.iter().map(|b| seqs(b)).collect::<Vec<_>>(), [vec![1, 2, 3], vec![4, 5, 6]]);
        assert_eq!(seqs(&recovered.open), [7, 8, 9]);
    }

    #[test]
    fn a_seal_whose_messages_were_deleted_is_ignored() {
        let records = vec![sealed(1, 5), message(6, b"y")];
        let recovered = recover(records);
        assert!(recovered.sealed.is_empty());
        assert_eq!((seqs(&recovered.open), recovered.max_seq), (vec![6], 6));
    }
}
