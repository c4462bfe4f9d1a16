//! Commit ids for the sinks that name commits themselves (`fifo:`, `stdout:`, `dir:`).
//!
//! Ids are 20-digit zero-padded numbers, so they sort as text in commit order, and
//! they start from the clock in nanoseconds, so they keep increasing across restarts
//! without a state file (see [`Sequencer`]).

use crate::message::Sequencer;

/// The number of digits of every id.
pub const DIGITS: usize = 20;

#[derive(Debug)]
pub struct CommitIds(Sequencer);

impl CommitIds {
    pub fn starting_now() -> Self {
        Self(Sequencer::starting_now())
    }

    /// Moves past `id`, one a previous run is known to have used.
    pub fn skip_past(&mut self, id: u64) {
        self.0.skip_past(id);
    }

    pub fn next_id(&mut self) -> String {
        id_of(self.0.take(1))
    }

    /// The number of `name` if it is an id, e.g. a directory a previous run made.
    pub fn parse(name: &str) -> Option<u64> {
        if name.len() == DIGITS && name.bytes().all(|b| b.is_ascii_digit()) {
            name.parse().ok()
        } else {
            None
        }
    }
}

/// The id that names number `n`, e.g. a `dir:` commit named by its first seq.
pub fn id_of(n: u64) -> String {
    format!("{n:0DIGITS$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_as_text_and_parse_back() {
        let mut ids = CommitIds::starting_now();
        let (a, b) = (ids.next_id(), ids.next_id());
        assert_eq!(a.len(), DIGITS);
        assert!(a < b);
        ids.skip_past(CommitIds::parse(&b).unwrap() + 1_000_000_000_000);
        assert!(ids.next_id() > b);
        assert_eq!(CommitIds::parse("batch-1"), None);
        assert_eq!(CommitIds::parse(&"9".repeat(21)), None);
    }
}
