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
use crate::message::{same_bytes, Message, Payload};

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
                vec![CommitFile { name: file_name::batch_name(batch.ack.first_seq), data: batch_file(batch.messages) }]
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

/// The one file of `--layout batch`: the messages one after the other, lines ended
/// with `\n`.
pub fn batch_file(messages: Vec<Message>) -> Payload {
    let mut file = BatchFile::default();
    for message in messages {
        file.push(message);
    }
    file.finish()
}

/// The one file of `--layout batch`, as it is laid out. Lines that follow one another
/// in the buffer they arrived in (an NDJSON body's, mostly) are taken as they lie
/// there, `\n`s included: one slice for a run of lines rather than two per line, which
/// spares the batch file's list of slices and the vectored writes of its archive.
#[derive(Default)]
struct BatchFile {
    data: Payload,
    /// Lines taken but not yet in `data`: `run.0[run.1]` holds them, `\n`s included.
    run: Option<(Bytes, std::ops::Range<usize>)>,
}

impl BatchFile {
    fn push(&mut self, message: Message) {
        let line = if message.line { message.payload.into_ended_line() } else { Err(message.payload) };
        match line {
            Ok((buffer, line)) => match &mut self.run {
                // The same buffer (the same bytes, as both are alive), right where the run ends.
                Some((run, lines)) if same_bytes(run, &buffer) && lines.end == line.start => lines.end = line.end,
                _ => {
                    self.end_run();
                    self.run = Some((buffer, line));
                }
            },
            Err(payload) => {
                self.end_run();
                self.data.append(payload);
                if message.line {
                    self.data.push(NEWLINE.clone());
                }
            }
        }
    }

    fn end_run(&mut self) {
        if let Some((buffer, lines)) = self.run.take() {
            self.data.push(buffer.slice(lines));
        }
    }

    fn finish(mut self) -> Payload {
        self.end_run();
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: Payload, line: bool) -> Message {
        Message { seq: 1, name: None, payload, line, origin: None }
    }

    #[test]
    fn lines_that_lie_together_become_one_slice_of_their_buffer() {
        let body = Bytes::from_static(b"a\nbb\n\nccc\nd");
        let other = Bytes::from_static(b"e\nf\n");
        let messages = vec![
            message(Payload::line_in(body.clone(), 0..1), true),
            message(Payload::line_in(body.clone(), 2..4), true),
            // After an empty line, which is no message: a run of its own.
            message(Payload::line_in(body.clone(), 6..9), true),
            // The body's last line, without `\n`.
            message(Payload::from(body.slice(10..)), true),
            message(Payload::from(Bytes::from_static(b"frame")), false),
            message(Payload::line_in(other.clone(), 0..1), true),
            message(Payload::line_in(other.clone(), 2..3), true),
        ];
        let file = batch_file(messages);
        assert_eq!(file.to_vec(), b"a\nbb\nccc\nd\nframee\nf\n");
        let chunks: Vec<&[u8]> = file.chunks().iter().map(|c| &c[..]).collect();
        assert_eq!(chunks, [&b"a\nbb\n"[..], b"ccc\n", b"d", b"\n", b"frame", b"e\nf\n"]);
        assert_eq!(file.chunks()[0].as_ptr(), body.as_ptr(), "a slice of the body, not a copy");
        assert_eq!(file.len(), 20);
    }

    #[test]
    fn a_line_that_grew_or_a_frame_is_laid_out_as_it_is() {
        let body = Bytes::from_static(b"ab\ncd\n");
        let mut grown = Payload::line_in(body.clone(), 0..2);
        grown.push(Bytes::from_static(b"!"));
        let messages = vec![
            message(grown, true),
            message(Payload::line_in(body.clone(), 3..5), true),
            message(Payload::line_in(body, 3..5), false),
        ];
        assert_eq!(batch_file(messages).to_vec(), b"ab!\ncd\ncd");
    }
}
