//! Reading a segment back after a crash, whatever state it is in: every whole record
//! is kept, a torn or zero-filled tail is cut off, and damaged bytes in between are
//! set aside (quarantined) with their offset so that the records after them survive.
//!
//! Nothing here ever fails on bad contents: the worst a segment can do is be
//! quarantined whole. Only I/O errors are errors.

use bytes::Bytes;

use super::record::{self, Parsed, Record};

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

/// Reads every record of the bytes of segment number `segment`.
pub fn scan(bytes: &Bytes, segment: u64) -> Scanned {
    let mut out = Scanned::default();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = bytes.slice(at..);
        let parsed = match record::parse(&rest) {
            Parsed::Record(record) if record.header.segment == segment => {
                at += record.header.record_len() as usize;
                out.records.push(record);
                continue;
            }
            other => other,
        };
        if let Some(next) = next_record(&rest, segment) {
            out.damage.push(Damage { offset: at as u64, bytes: rest.slice(..next), kind: DamageKind::Corrupt });
            at += next;
            continue;
        }
        // Nothing of this segment's follows: its writes end here. Past them lies what
        // the file held before it was reused, zeros the file system left, or a write the
        // crash cut; nothing was acknowledged from any of them. Only a record of this
        // segment begun here is kept aside, in case it is whole and its length damaged.
        if record::begins_record_of(&rest, segment) {
            let kind = if parsed == Parsed::Torn { DamageKind::Torn } else { DamageKind::Corrupt };
            let end = record::claimed_len(&rest).min(rest.len() as u64) as usize;
            out.damage.push(Damage { offset: at as u64, bytes: rest.slice(..end), kind });
        }
        break;
    }
    out.keep_len = at as u64;
    out
}

/// The offset in `rest` (past its first byte) of the first whole, checked record of
/// segment number `segment`.
fn next_record(rest: &Bytes, segment: u64) -> Option<usize> {
    let mut from = 1;
    while let Some(found) = memchr::memmem::find(&rest[from..], b"SP") {
        let at = from + found;
        if record::begins_record_of(&rest[at..], segment)
            && matches!(record::parse(&rest.slice(at..)), Parsed::Record(_))
        {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spool::record::HEADER_LEN;
    use crate::spool::request::tests::{message_record, message_record_in};

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
        let scanned = scan(&Bytes::from(bytes.clone()), 1);
        assert_eq!(
            (seqs(&scanned), scanned.damage.len(), scanned.keep_len),
            (vec![1, 2, 3, 4, 5], 0, bytes.len() as u64)
        );
    }

    #[test]
    fn a_torn_tail_is_cut_and_kept_aside() {
        let (mut bytes, starts) = segment(5);
        bytes.truncate(starts[4] + HEADER_LEN + 8);
        let scanned = scan(&Bytes::from(bytes), 1);
        assert_eq!(seqs(&scanned), [1, 2, 3, 4]);
        assert_eq!(scanned.keep_len, starts[4] as u64);
        assert_eq!(scanned.damage[0].kind, DamageKind::Torn);
    }

    #[test]
    fn a_flipped_payload_byte_quarantines_that_record_only() {
        let (mut bytes, starts) = segment(5);
        bytes[starts[2] + HEADER_LEN + 12 + 3] ^= 1; // past the one-entry index
        let scanned = scan(&Bytes::from(bytes.clone()), 1);
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
            let scanned = scan(&Bytes::from(bytes), 1);
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
        let scanned = scan(&Bytes::from(bytes), 1);
        assert_eq!((seqs(&scanned).len(), scanned.damage.len(), scanned.keep_len), (3, 0, len as u64));
    }

    #[test]
    fn garbage_between_records_is_skipped() {
        let (bytes, starts) = segment(3);
        let mut damaged = bytes[..starts[1]].to_vec();
        damaged.extend_from_slice(b"SPSP garbage that looks a little like a header SP\x01\x00");
        damaged.extend_from_slice(&bytes[starts[1]..]);
        let scanned = scan(&Bytes::from(damaged), 1);
        assert_eq!(seqs(&scanned), [1, 2, 3]);
        assert_eq!(scanned.damage.len(), 1);
    }

    #[test]
    fn an_empty_segment_is_nothing() {
        let scanned = scan(&Bytes::new(), 1);
        assert_eq!((scanned.records.len(), scanned.damage.len(), scanned.keep_len), (0, 0, 0));
    }

    #[test]
    fn what_a_reused_file_held_before_ends_the_segment_silently() {
        let mut bytes: Vec<u8> = (1..=6).flat_map(|seq| message_record_in(3, seq, "", &[b'o'; 50])).collect();
        let ours: Vec<u8> = (10..=11).flat_map(|seq| message_record_in(7, seq, "", b"new")).collect();
        bytes[..ours.len()].copy_from_slice(&ours);
        let scanned = scan(&Bytes::from(bytes), 7);
        assert_eq!((seqs(&scanned), scanned.damage.len(), scanned.keep_len), (vec![10, 11], 0, ours.len() as u64));
    }

    #[test]
    fn a_write_cut_over_a_reused_file_is_kept_aside_alone() {
        let mut bytes: Vec<u8> = (1..=6).flat_map(|seq| message_record_in(3, seq, "", &[b'o'; 50])).collect();
        let first = message_record_in(7, 10, "", b"new");
        let cut = message_record_in(7, 11, "", &[b'n'; 40]);
        bytes[..first.len()].copy_from_slice(&first);
        bytes[first.len()..first.len() + cut.len() - 10].copy_from_slice(&cut[..cut.len() - 10]);
        let scanned = scan(&Bytes::from(bytes), 7);
        assert_eq!((seqs(&scanned), scanned.keep_len), (vec![10], first.len() as u64));
        assert_eq!(scanned.damage.len(), 1);
        assert_eq!((scanned.damage[0].offset, scanned.damage[0].bytes.len()), (first.len() as u64, cut.len()));
    }
}
