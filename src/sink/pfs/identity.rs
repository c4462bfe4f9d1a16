//! A batch's identity in the description of its PFS commit, so that a batch replayed
//! from the disk spool after a crash can tell whether it landed before the crash.
//!
//! The description reads `spout-sidecar: batch 7 of 120 messages, seq 1796…001-1796…120`:
//! the batch number is this run's, for people; the sequence numbers are the identity,
//! the same in every run that commits the batch.

use super::committer::MARKER;

/// The sequence numbers of a batch's first and last message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchIdentity {
    pub first_seq: u64,
    pub last_seq: u64,
}

const SEQ: &str = ", seq ";

impl BatchIdentity {
    /// The commit description for batch `no` of `messages` messages.
    pub fn describe(&self, no: u64, messages: u64) -> String {
        format!("{MARKER}: batch {no} of {messages} messages{SEQ}{}-{}", self.first_seq, self.last_seq)
    }

    /// The identity a description written by [`Self::describe`] carries.
    pub fn parse(description: &str) -> Option<Self> {
        let rest = description.strip_prefix(MARKER)?;
        let (_, seqs) = rest.rsplit_once(SEQ)?;
        let (first, last) = seqs.split_once('-')?;
        Some(Self { first_seq: first.parse().ok()?, last_seq: last.parse().ok()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_carries_the_identity_back() {
        let identity = BatchIdentity { first_seq: 1_796_000_000_000_000_001, last_seq: 1_796_000_000_000_000_120 };
        let description = identity.describe(7, 120);
        assert_eq!(description, "spout-sidecar: batch 7 of 120 messages, seq 1796000000000000001-1796000000000000120");
        assert_eq!(BatchIdentity::parse(&description), Some(identity));
        assert_eq!(BatchIdentity::parse("spout-sidecar: batch 7 of 120 messages"), None);
        assert_eq!(BatchIdentity::parse("someone else, seq 1-2"), None);
    }
}
