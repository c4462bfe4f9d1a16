//! Reading a segment back after a crash, whatever state it is in: every whole record
//! is kept, a torn or zero-filled tail is cut off, and damaged bytes in between are
//! set aside (quarantined) with their offset so that the records after them survive.
//!
//! Nothing here ever fails on bad contents: the worst a segment can do is be
//! quarantined whole. Only I/O errors are errors.

use bytes::Bytes;

use super::record::{self, Parsed, Record, HEADER_LEN};

/// Bytes that are not records, found at `offset` in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub bytes: Bytes,
    pub kind: DamageKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum DamageKind {
    /// Records no CRC confirms, followed by valid ones (or by the end).
    Corrupt,
    /// A record cut short at the end of the segment: a write the crash interrupted,
    /// or a length damaged in the last record. Kept in case it is the latter.
    Torn,
}

impl DamageKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What a segment holds.
#[derive(Debug, Default)]
pub struct Scanned {
    pub records: Vec<Record>,
    pub damage: Vec<Damage>,
    /// The segment's length once its bad tail is cut off.
    pub keep_len: u64,
}

/// Reads every record of a segment's bytes.
pub fn scan(bytes: &Bytes) -> Scanned {
    let mut out = Scanned::default();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = bytes.slice(at..);
        match record::parse(&rest) {
            Parsed::Record(record) => {
                at += record.header.record_len() as usize;
                out.records.push(record);
            }
            bad => {
                if rest.iter().all(|&b| b == 0) {
                    // A tail the file system extended but the crash kept from being
                    // written: nothing was ever acknowledged from it.
                    break;
                }
                let next = next_record(&rest);
                let kind = match (bad, next) {
                    (Parsed::Torn, None) => DamageKind::Torn,
                    _ => DamageKind::Corrupt,
                };
                let end = next.unwrap_or(rest.len());
                out.damage.push(Damage { offset: at as u64, bytes: rest.slice(..end), kind });
                match next {
                    Some(next) => at += next,
                    None => break,
                }
            }
        }
    }
    out.keep_len = match out.damage.last() {
        Some(last) if last.offset as usize + last.bytes.len() == bytes.len() => last.offset,
        _ => at.min(bytes.len()) as u64,
    };
    out
}

/// The offset in `rest` (past its first byte) of the first whole, checked record.
fn next_record(rest: &Bytes) -> Option<usize> {
    let mut from = 1;
    while let Some(found) = memchr::memmem::find(&rest[from..], b"SP") {
        let at = from + found;
        if rest.len() - at >= HEADER_LEN && matches!(record::parse(&rest.slice(at..)), Parsed::Record(_)) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spool::request::tests::message_record;

    fn segment(n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for seq in 1..=n {
            starts.push(bytes.len());
            bytes.extend(message_record(seq, "", format!("payload number {seq}").as_bytes()));
        }
        (bytes, starts)
    }

    fn seqs(scanned: &Scanned) -> Vec<u64> {
        scanned.records.iter().map(|r| r.header.seq).collect()
    }

    #[test]
    fn a_clean_segment_reads_whole() {
        let (bytes, _) = segment(5);
        let scanned = scan(&Bytes::from(bytes.clone()));
        assert_eq!(
            (seqs(&scanned), scanned.damage.len(), scanned.keep_len),
            (vec![1, 2, 3, 4, 5], 0, bytes.len() as u64)
        );
    }

    #[test]
    fn a_torn_tail_is_cut_and_kept_aside() {
        let (mut bytes, starts) = segment(5);
        bytes.truncate(starts[4] + 30);
        let scanned = scan(&Bytes::from(bytes));
        assert_eq!(seqs(&scanned), [1, 2, 3, 4]);
        assert_eq!(scanned.keep_len, starts[4] as u64);
        assert_eq!(scanned.damage[0].kind, DamageKind::Torn);
    }

    #[test]
    fn a_flipped_payload_byte_quarantines_that_record_only() {
        let (mut bytes, starts) = segment(5);
        bytes[starts[2] + HEADER_LEN + 12 + 3] ^= 1; // past the one-entry index
        let scanned = scan(&Bytes::from(bytes.clone()));
        assert_eq!(seqs(&scanned), [1, 2, 4, 5]);
        assert_eq!(scanned.damage.len(), 1);
        assert_eq!(scanned.damage[0].offset, starts[2] as u64);
        assert_eq!(scanned.damage[0].bytes.len(), starts[3] - starts[2]);
        assert_eq!(scanned.keep_len, bytes.len() as u64);
    }

    #[test]
    fn a_flipped_length_does_not_lose_the_records_after_it() {
        for record in [1, 4] {
            let (mut bytes, starts) = segment(5);
            bytes[starts[record] + 9] ^= 0x40;
            let scanned = scan(&Bytes::from(bytes));
            let expected: Vec<u64> = (1..=5).filter(|&s| s != record as u64 + 1).collect();
            assert_eq!(seqs(&scanned), expected, "length of record {record} damaged");
            assert_eq!(scanned.damage.len(), 1);
        }
    }

    #[test]
    fn a_zero_filled_tail_is_cut_silently() {
        let (mut bytes, _) = segment(3);
        let len = bytes.len();
        bytes.resize(len + 4096, 0);
        let scanned = scan(&Bytes::from(bytes));
        assert_eq!((seqs(&scanned).len(), scanned.damage.len(), scanned.keep_len), (3, 0, len as u64));
    }

    #[test]
    fn garbage_between_records_is_skipped() {
        let (bytes, starts) = segment(3);
        let mut damaged = bytes[..starts[1]].to_vec();
        damaged.extend_from_slice(b"SPSP garbage that looks a little like a header SP\x01\x00");
        damaged.extend_from_slice(&bytes[starts[1]..]);
        let scanned = scan(&Bytes::from(damaged));
        assert_eq!(seqs(&scanned), [1, 2, 3]);
        assert_eq!(scanned.damage.len(), 1);
    }

    #[test]
    fn an_empty_segment_is_nothing() {
        let scanned = scan(&Bytes::new());
        assert_eq!((scanned.records.len(), scanned.damage.len(), scanned.keep_len), (0, 0, 0));
    }
}
