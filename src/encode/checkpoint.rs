//! Checkpoints: where each `--source` had got, committed in the same commit as the
//! messages that took it there, so that a restarted sidecar resumes exactly where
//! the last commit ends: nothing lost, nothing committed twice.
//!
//! Each batch that holds messages of a source gets one extra file,
//! `.spout/checkpoints/<source>.<replica>.json` ([`file_name`]), a [`Checkpoint`]
//! folded from every message of that source committed so far by this replica:
//! a log's next offset per partition, or a queue's most recent message ids. One
//! file per replica, so that sidecars sharing a branch never overwrite each other's;
//! a source reads them all back and [`Checkpoint::merge`]s them.
//!
//! The fold runs on the sink thread, which sees batches in commit order, so the
//! checkpoint in a commit covers exactly the commits up to it. (With Pachyderm 1.x,
//! a spout whose `marker` is `.spout` gets these files on its marker branch, and
//! back under `/pfs/.spout` when it restarts.)

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::CommitFile;
use crate::message::{Message, Payload, Position};

/// The directory of every checkpoint file inside a commit.
pub const DIR: &str = ".spout/checkpoints";

/// The file a replica's checkpoint of a source is committed as.
pub fn file_name(source: &str, replica: &str) -> String {
    format!("{DIR}/{source}.{replica}.json")
}

/// Whether a commit's file is a checkpoint: sinks that append to a file already
/// there replace a checkpoint instead.
pub fn is_checkpoint(name: &str) -> bool {
    name.strip_prefix(DIR).is_some_and(|rest| rest.starts_with('/'))
}

/// What a checkpoint file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The source as configured (`kafka://…`), credentials removed.
    pub source: String,
    /// For a log: per partition, the offset of the next message to read.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub offsets: BTreeMap<i32, i64>,
    /// For a queue: the ids of the most recent messages committed, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
}

/// A checkpoint file that cannot be read: a source refuses to guess where to resume.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint file {name} is not valid: {source}")]
pub struct BadCheckpoint {
    pub name: String,
    #[source]
    pub source: serde_json::Error,
}

impl Checkpoint {
    pub fn parse(name: &str, bytes: &[u8]) -> Result<Self, BadCheckpoint> {
        serde_json::from_slice(bytes).map_err(|source| BadCheckpoint { name: name.to_owned(), source })
    }

    /// What every replica's checkpoint of one source says together: the highest
    /// offset of each partition (offsets only grow, and a replica's file lags for a
    /// partition it no longer reads), and every id any of them recalls.
    pub fn merge<'a>(checkpoints: impl IntoIterator<Item = &'a Checkpoint>) -> Checkpoint {
        let mut merged = Checkpoint::default();
        for checkpoint in checkpoints {
            if merged.source.is_empty() {
                merged.source.clone_from(&checkpoint.source);
            }
            for (&partition, &next) in &checkpoint.offsets {
                let at = merged.offsets.entry(partition).or_insert(next);
                *at = (*at).max(next);
            }
            merged.ids.extend(checkpoint.ids.iter().cloned());
        }
        merged
    }
}

/// How a source's positions fold into its checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    /// Per partition, one past the highest offset committed.
    Offsets,
    /// The last `window` ids committed.
    Ids { window: usize },
}

/// One source as the sink thread tracks it.
#[derive(Debug)]
pub struct Tracked {
    pub file: String,
    pub fold: Fold,
    /// This replica's checkpoint as its last commit left it.
    pub state: Checkpoint,
}

/// The checkpoints of every configured source, folded batch by batch on the sink
/// thread: index `i` is the source of [`crate::message::Origin::source`] `i`.
#[derive(Debug, Default)]
pub struct Checkpoints {
    sources: Vec<Tracked>,
    /// The ids of each source's state with the seq of their message (0 for those
    /// recalled at start-up), as a queue to drop the oldest from.
    windows: Vec<VecDeque<(u64, Arc<str>)>>,
    /// Sources whose ids changed other than by a batch of theirs: their next
    /// checkpoint is written with the next batch, whatever it holds.
    changed: Vec<bool>,
}

impl Checkpoints {
    pub fn new(sources: Vec<Tracked>) -> Self {
        let recalled = |tracked: &Tracked| tracked.state.ids.iter().map(|id| (0, Arc::from(id.as_str()))).collect();
        let windows = sources.iter().map(recalled).collect();
        let changed = vec![false; sources.len()];
        Self { sources, windows, changed }
    }

    /// Forgets the ids of messages whose batch failed (seq ranges, first and last),
    /// so that no later checkpoint recalls them as committed and a queue commits
    /// them when they come back. (A log's offsets are left as they are.)
    pub fn forget(&mut self, failed: &[(u64, u64)]) {
        if failed.is_empty() {
            return;
        }
        let in_failed = |seq: u64| failed.iter().any(|&(first, last)| (first..=last).contains(&seq));
        for (ids, changed) in self.windows.iter_mut().zip(&mut self.changed) {
            let before = ids.len();
            ids.retain(|(seq, _)| !in_failed(*seq));
            *changed |= ids.len() != before;
        }
    }

    /// Folds a batch's messages in and returns the checkpoint files the batch's
    /// commit must carry: one per source it holds messages of.
    pub fn stamp(&mut self, messages: &[Message]) -> Vec<CommitFile> {
        if self.sources.is_empty() {
            return Vec::new();
        }
        let mut touched = std::mem::replace(&mut self.changed, vec![false; self.sources.len()]);
        for message in messages {
            let Some(origin) = &message.origin else { continue };
            let index = usize::from(origin.source);
            let Some(tracked) = self.sources.get_mut(index) else { continue };
            touched[index] = true;
            match (&origin.at, tracked.fold) {
                (Position::Offset { partition, offset }, _) => {
                    let next = tracked.state.offsets.entry(*partition).or_insert(offset + 1);
                    *next = (*next).max(offset + 1);
                }
                (Position::Id(id), Fold::Ids { window }) => {
                    let ids = &mut self.windows[index];
                    ids.push_back((message.seq, id.clone()));
                    while ids.len() > window {
                        ids.pop_front();
                    }
                }
                (Position::Id(_), Fold::Offsets) => {}
            }
        }
        let mut files = Vec::new();
        for (index, tracked) in self.sources.iter_mut().enumerate().filter(|(i, _)| touched[*i]) {
            if let Fold::Ids { .. } = tracked.fold {
                tracked.state.ids = self.windows[index].iter().map(|(_, id)| id.to_string()).collect();
            }
            // Serialising a map of integers and strings cannot fail.
            let json = serde_json::to_vec(&tracked.state).expect("a checkpoint serialises");
            files.push(CommitFile { name: tracked.file.clone(), data: Payload::from(Bytes::from(json)) });
        }
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Origin;

    fn message(seq: u64, origin: Option<Origin>) -> Message {
        Message { seq, name: None, payload: Bytes::from_static(b"m").into(), line: false, origin: origin.map(Box::new) }
    }

    fn offset(source: u16, partition: i32, offset: i64) -> Option<Origin> {
        Some(Origin { source, at: Position::Offset { partition, offset } })
    }

    fn id(source: u16, id: &str) -> Option<Origin> {
        Some(Origin { source, at: Position::Id(Arc::from(id)) })
    }

    fn tracked(source: &str, fold: Fold, state: Checkpoint) -> Tracked {
        Tracked { file: file_name(source, "r1"), fold, state }
    }

    fn parsed(file: &CommitFile) -> Checkpoint {
        Checkpoint::parse(&file.name, &file.data.to_vec()).unwrap()
    }

    #[test]
    fn offsets_fold_to_the_next_offset_per_partition_and_only_touched_sources_get_a_file() {
        let start = Checkpoint { source: "kafka://k/t".into(), offsets: BTreeMap::from([(2, 40)]), ids: vec![] };
        let mut checkpoints = Checkpoints::new(vec![
            tracked("kafka.t", Fold::Offsets, start),
            tracked("amqp.q", Fold::Ids { window: 3 }, Checkpoint::default()),
        ]);
        let files = checkpoints.stamp(&[
            message(1, offset(0, 0, 7)),
            message(2, None),
            message(3, offset(0, 1, 3)),
            message(4, offset(0, 0, 8)),
        ]);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].name, ".spout/checkpoints/kafka.t.r1.json");
        assert_eq!(parsed(&files[0]).offsets, BTreeMap::from([(0, 9), (1, 4), (2, 40)]));
        assert!(checkpoints.stamp(&[message(5, None)]).is_empty());
    }

    #[test]
    fn ids_keep_a_window_of_the_most_recent() {
        let start = Checkpoint { source: "amqp://h/v".into(), offsets: BTreeMap::new(), ids: vec!["a".into()] };
        let mut checkpoints = Checkpoints::new(vec![tracked("amqp.q", Fold::Ids { window: 3 }, start)]);
        let files = checkpoints.stamp(&[message(1, id(0, "b")), message(2, id(0, "c"))]);
        assert_eq!(parsed(&files[0]).ids, ["a", "b", "c"]);
        let files = checkpoints.stamp(&[message(3, id(0, "d"))]);
        assert_eq!(parsed(&files[0]).ids, ["b", "c", "d"]);
        assert_eq!(parsed(&files[0]).source, "amqp://h/v");
    }

    #[test]
    fn the_ids_of_a_failed_batch_are_forgotten_and_the_next_batch_says_so() {
        let start = Checkpoint { source: "amqp://h/v".into(), offsets: BTreeMap::new(), ids: vec!["a".into()] };
        let mut checkpoints = Checkpoints::new(vec![tracked("amqp.q", Fold::Ids { window: 10 }, start)]);
        checkpoints.stamp(&[message(1, id(0, "b")), message(2, id(0, "c"))]);
        checkpoints.stamp(&[message(3, id(0, "d"))]);
        checkpoints.forget(&[(2, 3)]);
        let files = checkpoints.stamp(&[message(4, None)]);
        assert_eq!(parsed(&files[0]).ids, ["a", "b"], "written though the batch holds none of its messages");
        assert!(checkpoints.stamp(&[message(5, None)]).is_empty());
    }

    #[test]
    fn merging_replicas_takes_the_highest_offset_and_every_id() {
        let a = Checkpoint { source: "s".into(), offsets: BTreeMap::from([(0, 10), (1, 5)]), ids: vec!["x".into()] };
        let b = Checkpoint { source: "s".into(), offsets: BTreeMap::from([(0, 7), (2, 1)]), ids: vec!["y".into()] };
        let merged = Checkpoint::merge([&a, &b]);
        assert_eq!(merged.offsets, BTreeMap::from([(0, 10), (1, 5), (2, 1)]));
        assert_eq!(merged.ids, ["x", "y"]);
        assert!(Checkpoint::parse("f.json", b"{").unwrap_err().to_string().starts_with("checkpoint file f.json"));
    }
}
