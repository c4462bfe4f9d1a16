//! The `stdout:` sink: archive after archive on standard output, for
//! `spout-sidecar --sink stdout: | tar -tvf -` and friends.
//!
//! Blocking vectored writes to a duplicate of fd 1. A batch counts as committed
//! once the kernel has taken all of its archive: unlike a FIFO, a stdout stream has
//! no reader to ask. A failed write leaves part of an archive on a stream that
//! cannot be rewound, so the sink stops there and fails this batch and every later
//! one, rather than append archives after garbage.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use bytes::BytesMut;

use super::commit_id::CommitIds;
use super::spec::{BadSinkUri, OpenSink, Scheme, SinkSettings, SinkSpec};
use super::{vectored, Commit, Sink, SinkContext, SinkState};
use crate::encode::{tar, CommitFile};

pub const SCHEME: Scheme = Scheme { prefix: "stdout", form: "stdout:", parse };

fn parse(uri: &str) -> Result<SinkSpec, BadSinkUri> {
    match uri {
        "stdout:" | "stdout" => Ok(SinkSpec::new(StdoutUri)),
        _ => Err(BadSinkUri(format!("unknown sink `{uri}`: the standard output sink is `stdout:`"))),
    }
}

/// `stdout:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdoutUri;

impl std::fmt::Display for StdoutUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout:")
    }
}

impl OpenSink for StdoutUri {
    fn open(&self, _: &SinkSettings) -> io::Result<Box<dyn Sink>> {
        Ok(Box::new(StdoutSink::new()?))
    }

    fn writes_stdout(&self) -> bool {
        true
    }
}

pub struct StdoutSink {
    out: File,
    ids: CommitIds,
    /// Why the stream is unusable, once a write has failed.
    broken: Option<String>,
    /// Where archives' parts are encoded.
    metadata: BytesMut,
}

impl StdoutSink {
    pub fn new() -> io::Result<Self> {
        // A duplicate, so writes bypass Rust's line-buffered `Stdout` and its lock.
        Ok(Self::writing_to(File::from(io::stdout().as_fd().try_clone_to_owned()?)))
    }

    /// A sink writing its tar stream to `out` instead of standard output.
    pub fn writing_to(out: File) -> Self {
        Self { out, ids: CommitIds::starting_now(), broken: None, metadata: BytesMut::new() }
    }
}

impl StdoutSink {
    /// Writes the files' archive a part at a time, each part in the room of the one
    /// before (see `tar::encode_part`).
    fn write_archive(&mut self, files: &[CommitFile], ctx: &SinkContext) -> io::Result<()> {
        let (mtime, mut from) = (tar::mtime_now(), 0);
        loop {
            let part = tar::next_part(files, from, mtime, &mut self.metadata);
            vectored::write_all(&mut self.out, &part.chunks, || !ctx.giving_up())?;
            if part.next == files.len() {
                return Ok(());
            }
            from = part.next;
        }
    }
}

impl Sink for StdoutSink {
    fn describe(&self) -> String {
        "stdout:".into()
    }

    fn submit(&mut self, commit: Commit, ctx: &SinkContext) {
        if let Some(why) = &self.broken {
            commit.ack.failed(format_args!("stdout is unusable since an earlier write failed: {why}"));
            return;
        }
        vectored::block_sigpipe_on_this_thread();
        match self.write_archive(&commit.files, ctx) {
            Ok(()) => {
                ctx.health.up();
                let receipt = ctx.receipt(self.ids.next_id(), &commit.files);
                commit.ack.committed(receipt);
            }
            Err(err) => {
                let kind = if err.kind() == io::ErrorKind::BrokenPipe { "epipe" } else { "io" };
                ctx.health.failing(SinkState::Down, kind, &err);
                self.broken = Some(err.to_string());
                commit.ack.failed(format_args!("writing to stdout failed: {err}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Ledger;
    use crate::batch::{Batch, Batcher, Policy};
    use crate::buffer::Budget;
    use crate::encode::Layout;
    use crate::message::Sequencer;
    use crate::message::{Incoming, Payload};
    use crate::sink::Health;
    use bytes::Bytes;
    use std::io::Read;
    use std::sync::Arc;
    use std::time::Duration;

    /// A sealed batch of `messages`, as the batcher makes it, with a waiter for its verdict.
    fn batch(messages: &[(&str, &[&[u8]])]) -> (Batch, crate::ack::VerdictReceiver) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let ledger = Ledger::new(Arc::new(Budget::new(1 << 20)));
        let policy = Policy { max_bytes: 1 << 20, max_messages: 1000, max_age: Duration::from_secs(60) };
        let batcher = Batcher::new(policy, Sequencer::starting_at(1), ledger, tx);
        let incoming = messages
            .iter()
            .map(|(name, chunks)| Incoming {
                name: Some(name.to_string()),
                payload: Payload::from(chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect::<Vec<_>>()),
                line: false,
                origin: None,
            })
            .collect();
        let (verdict_tx, verdict_rx) = tokio::sync::oneshot::channel();
        batcher.push(incoming, Some(verdict_tx)).unwrap();
        batcher.flush();
        (rx.try_recv().unwrap(), verdict_rx)
    }

    fn context() -> SinkContext {
        SinkContext::new(Arc::new(Health::new("stdout:".into())), false)
    }

    #[test]
    fn writes_archive_after_archive() {
        let out = tempfile::tempfile().unwrap();
        let mut sink = StdoutSink::writing_to(out.try_clone().unwrap());
        let ctx = context();
        let (first, first_verdict) = batch(&[("a", &[b"one"]), ("b", &[b"tw", b"o"])]);
        let (second, second_verdict) = batch(&[(&"x".repeat(150), &[b"three"])]);
        sink.submit(Layout::Message.apply(first), &ctx);
        sink.submit(Layout::Message.apply(second), &ctx);

        let ids = [first_verdict, second_verdict].map(|v| v.blocking_recv().unwrap().unwrap().commit.clone());
        assert!(ids.iter().all(|id| id.len() == 20 && id.bytes().all(|b| b.is_ascii_digit())));
        assert!(ids[0] < ids[1]);

        let mut written = out;
        io::Seek::rewind(&mut written).unwrap();
        let mut stream = ::tar::Archive::new(written);
        stream.set_ignore_zeros(true);
        let files: Vec<(String, String)> = stream
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = String::new();
                e.read_to_string(&mut data).unwrap();
                (String::from_utf8(e.path_bytes().into_owned()).unwrap(), data)
            })
            .collect();
        let expected = [("a", "one"), ("b", "two"), (&*"x".repeat(150), "three")];
        assert_eq!(files, expected.map(|(n, d)| (n.to_string(), d.to_string())));
    }

    #[test]
    fn a_vanished_reader_fails_this_batch_and_the_next() {
        let (read, write) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(read);
        let write = File::from(std::os::fd::OwnedFd::from(write));
        let mut sink = StdoutSink::writing_to(write);
        let ctx = context();
        let (first, first_verdict) = batch(&[("a", &[b"one"])]);
        let (second, second_verdict) = batch(&[("b", &[b"two"])]);
        sink.submit(Layout::Message.apply(first), &ctx);
        sink.submit(Layout::Message.apply(second), &ctx);
        assert!(first_verdict.blocking_recv().unwrap().unwrap_err().0.contains("Broken pipe"));
        assert!(second_verdict.blocking_recv().unwrap().unwrap_err().0.contains("unusable"));
        assert_eq!(ctx.health.state(), SinkState::Down);
    }
}
