//! Encoding: how a sealed batch becomes the files of one commit (`--layout`, plus
//! the sources' `checkpoint` files), and how those files become one tar archive
//! (`tar`) for the sinks that write archives.
//!
//! Payload bytes are shared, never copied: a file's data is the list of slices its
//! messages arrived in.

pub mod checkpoint;
pub mod tar;

use bytes::Bytes;

use crate::ack::{BatchAck, Receipt};
use crate::batch::Batch;
use crate::message::file_name;
use crate::message::Payload;

/// One file of a commit: the unit every sink writes.
#[derive(Clone, Debug)]
pub struct CommitFile {
    pub name: String,
    pub data: Payload,
}

/// One batch, laid out as files, for a sink to commit; settle `ack` with the verdict.
#[derive(Debug)]
pub struct Commit {
    pub files: Vec<CommitFile>,
    pub ack: BatchAck,
}

/// A commit's files with each name once, in first-seen order: the payloads sent
/// under one name append to it, or with `overwrite` the last replaces the others.
pub fn merge_by_name(files: &[CommitFile], overwrite: bool) -> Vec<(&str, Vec<&Payload>)> {
    let mut position: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut merged: Vec<(&str, Vec<&Payload>)> = Vec::new();
    for file in files {
        match position.get(file.name.as_str()) {
            Some(&at) if overwrite => merged[at].1 = vec![&file.data],
            Some(&at) => merged[at].1.push(&file.data),
            None => {
                position.insert(&file.name, merged.len());
                merged.push((&file.name, vec![&file.data]));
            }
        }
    }
    merged
}

/// How a batch's messages become files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// One file per message, named by `Spout-File` or the message's sequence number.
    Message,
    /// One file per batch holding all its messages (lines end with `\n`).
    Batch,
}

static NEWLINE: Bytes = Bytes::from_static(b"\n");

impl Layout {
    /// Lays a batch out as files.
    pub fn apply(self, batch: Batch) -> Commit {
        let files = match self {
            Layout::Message => batch
                .messages
                .into_iter()
                .map(|m| {
                    let name = m.file_name();
                    let mut data = m.payload;
                    // Lines sent under one name (`Spout-File` on NDJSON) append to one
                    // file: each keeps its line end so they do not run together. A line
                    // in a file of its own is stored without one.
                    if m.line && m.name.is_some() {
                        data.push(NEWLINE.clone());
                    }
                    CommitFile { name, data }
                })
                .collect(),
            Layout::Batch => {
                let mut data = Payload::new();
                for m in &batch.messages {
                    data.extend(&m.payload);
                    if m.line {
                        data.push(NEWLINE.clone());
                    }
                }
                vec![CommitFile { name: file_name::batch_name(batch.ack.first_seq), data }]
            }
        };
        Commit { files, ack: batch.ack }
    }

    /// The receipt for `files` committed as `commit`, naming the batch's one file
    /// under `--layout batch`.
    pub fn receipt(self, commit: String, files: &[CommitFile]) -> Receipt {
        let batch_file = match self {
            Layout::Batch => files.first().map(|f| f.name.clone()),
            Layout::Message => None,
        };
        Receipt { commit, batch_file, objects: None }
    }
}
