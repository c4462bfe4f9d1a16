//! The raw Unix socket: clients write newline-delimited messages or length-prefixed
//! frames and read nothing back.
//!
//! With no answer to give, back-pressure is not reading: while the memory budget is
//! full the connection's task waits in `admit`, the kernel's socket buffer fills, and
//! the client's writes block. A malformed or oversize frame closes the connection,
//! since nothing after it can be trusted to start where a message starts; the
//! messages before it are kept. A last line without `\n` counts once the client has
//! closed its end; one still unfinished at shutdown is dropped (and logged).
//!
//! Zero copy: reads land in a `BytesMut`; each complete message is split off its front
//! and frozen, sharing the allocation with the batch. A fresh block is allocated only
//! when less than [`MIN_READ`] of room is left, so many small messages share one
//! block instead of pinning one each; the unfinished tail of a message is the only
//! thing copied into the new block.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::framing::split::{Splitter, Unit};
use super::framing::DecodeError;
use super::{AdmitOptions, Answer, FullBudget, Intake, Transport};
use crate::buffer::charge;
use crate::cancel::Cancel;
use crate::message::Incoming;
use crate::metrics::METRICS;

/// How the raw socket's stream is cut into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RawFraming {
    /// Newline-delimited messages.
    Lines,
    /// 4-byte big-endian length, then that many bytes.
    Frames,
}

/// The size of a fresh read block.
pub const READ_BLOCK: usize = 64 * 1024;
/// Below this much room, the next read goes to a fresh block.
pub const MIN_READ: usize = 4 * 1024;
/// At shutdown, how much already-sent data one connection still reads.
const SHUTDOWN_DRAIN: usize = 4 * 1024 * 1024;

/// Serves the raw socket until `stop` is cancelled, one
/// task per connection. Then it stops accepting, lets every connection admit what it
/// has read and what the kernel already holds for it, and returns once they are all
/// done: start draining the intake only after that, or their last reads are lost.
/// Connections still waiting in the listen backlog are not served.
pub async fn serve(
    listener: UnixListener,
    framing: RawFraming,
    intake: Arc<Intake>,
    max_message_bytes: u64,
    stop: Cancel,
) {
    let unit = match framing {
        RawFraming::Lines => Unit::Line,
        RawFraming::Frames => Unit::Frame,
    };
    let mut connections = JoinSet::new();
    let mut accepted_so_far = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(done) = connections.join_next() => report_panic(done),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    accepted_so_far += 1;
                    let pid = stream.peer_cred().ok().and_then(|cred| cred.pid());
                    let span = tracing::info_span!("raw socket", connection = accepted_so_far, pid);
                    let connection = Connection {
                        splitter: Splitter::new(unit, max_message_bytes),
                        line: unit == Unit::Line,
                        intake: intake.clone(),
                        stop: stop.clone(),
                    };
                    connections.spawn(connection.run(stream).instrument(span));
                }
                Err(e) => {
                    // Out of file descriptors, usually: pause rather than spin.
                    tracing::warn!("raw socket: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    while let Some(done) = connections.join_next().await {
        report_panic(done);
    }
}

fn report_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!("raw socket: a connection's task failed: {e}");
    }
}

struct Connection {
    splitter: Splitter,
    line: bool,
    intake: Arc<Intake>,
    stop: Cancel,
}

impl Connection {
    async fn run(mut self, mut stream: UnixStream) {
        let mut buffer = BytesMut::new();
        loop {
            if buffer.capacity() - buffer.len() < MIN_READ {
                buffer.reserve(READ_BLOCK);
            }
            let read = tokio::select! {
                biased;
                () = self.stop.cancelled() => return self.finish(stream, buffer).await,
                read = stream.read_buf(&mut buffer) => read,
            };
            match read {
                Ok(count) => {
                    let ended = count == 0;
                    if !self.take_in(&mut buffer, ended).await || ended {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!("read failed, closing the connection: {e}");
                    return;
                }
            }
        }
    }

    /// At shutdown: takes in what the client has already sent, without waiting for more.
    async fn finish(mut self, stream: UnixStream, mut buffer: BytesMut) {
        let ended = match read_queued(stream, &mut buffer) {
            Ok(ended) => ended,
            Err(e) => {
                tracing::warn!("read failed at shutdown: {e}");
                false
            }
        };
        if self.take_in(&mut buffer, ended).await && !buffer.is_empty() {
            tracing::warn!("shutting down: dropping {} bytes of an unfinished message", buffer.len());
        }
    }

    /// Admits the complete messages in `buffer`. Returns false, after logging why, when
    /// the connection cannot go on: a bad frame, or messages refused.
    async fn take_in(&mut self, buffer: &mut BytesMut, ended: bool) -> bool {
        let (messages, bad) = self.split(buffer, ended);
        if !self.admit(messages).await {
            return false;
        }
        let Some(e) = bad else { return true };
        METRICS.messages_rejected.with_label_values(&[e.kind.reason()]).inc();
        tracing::warn!("{e}; closing the connection, as nothing after it can be trusted");
        false
    }

    /// Splits every complete message off `buffer`, and the error that stopped it if any.
    fn split(&mut self, buffer: &mut BytesMut, ended: bool) -> (Vec<Incoming>, Option<DecodeError>) {
        let mut messages = Vec::new();
        loop {
            match self.splitter.next(buffer, ended) {
                Ok(Some(bytes)) => {
                    messages.push(Incoming { name: None, payload: bytes.into(), line: self.line, origin: None })
                }
                Ok(None) => return (messages, None),
                Err(e) => return (messages, Some(e)),
            }
        }
    }

    /// Admits one read's messages, waiting for room in the budget. They go in groups
    /// that each fit the budget and one batch, so a read of many small messages never
    /// stretches a batch past its limits. Returns false if they were refused.
    async fn admit(&self, messages: Vec<Incoming>) -> bool {
        let policy = self.intake.batcher().policy();
        let max_bytes = policy.max_bytes;
        let max_count = usize::try_from(policy.max_messages).unwrap_or(usize::MAX).max(1);
        let mut group = Vec::new();
        let mut group_bytes = 0;
        let mut messages = messages.into_iter().peekable();
        let budget = self.intake.budget().limit();
        while let Some(message) = messages.next() {
            group_bytes += message.payload.len();
            group.push(message);
            let full = messages.peek().is_none_or(|next| {
                let bytes = group_bytes + next.payload.len();
                group.len() >= max_count || bytes > max_bytes || charge(bytes, group.len() as u64 + 1) > budget
            });
            if !full {
                continue;
            }
            let count = group.len();
            group_bytes = 0;
            let how = AdmitOptions {
                transport: Transport::Raw,
                answer: Answer::Accepted,
                when_full: FullBudget::WaitForRoom,
            };
            if let Err(refused) = self.intake.admit(std::mem::take(&mut group), how).await {
                tracing::warn!("{count} messages refused ({}), closing the connection", refused.reason());
                return false;
            }
        }
        true
    }
}

/// Reads, without waiting, what the kernel holds for the connection (up to
/// [`SHUTDOWN_DRAIN`]); returns whether the client had closed its end. The stream
/// leaves tokio for this so each read asks the kernel rather than tokio's last-known
/// readiness, which may predate bytes that have since arrived.
fn read_queued(stream: UnixStream, buffer: &mut BytesMut) -> std::io::Result<bool> {
    use std::io::Read;
    let mut stream = stream.into_std()?;
    let mut drained = 0;
    while drained < SHUTDOWN_DRAIN {
        let start = buffer.len();
        buffer.resize(start + READ_BLOCK, 0);
        let read = stream.read(&mut buffer[start..]);
        buffer.truncate(start + read.as_ref().map_or(0, |&count| count));
        match read {
            Ok(0) => return Ok(true),
            Ok(count) => drained += count,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::ack::{Ledger, Receipt};
    use crate::batch::{Batch, Batcher, Policy};
    use crate::buffer::Budget;
    use crate::ingest::framing::split::encode::frames;
    use crate::ingest::WhenFull;
    use crate::message::Sequencer;

    const PATIENCE: Duration = Duration::from_secs(20);

    struct Server {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        intake: Arc<Intake>,
        batches: crossbeam_channel::Receiver<Batch>,
        stop: Cancel,
        served: Option<tokio::task::JoinHandle<()>>,
    }

    fn start(framing: RawFraming, max_message_bytes: u64, budget: u64, max_messages: u64) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, batches) = crossbeam_channel::unbounded();
        let ledger = Ledger::new(Arc::new(Budget::new(budget)));
        let policy = Policy { max_bytes: 1 << 30, max_messages, max_age: Duration::from_secs(3600) };
        let batcher = Batcher::new(policy, Sequencer::starting_at(1), ledger, tx);
        let health = Arc::new(crate::sink::Health::new("test".into()));
        let intake = Arc::new(Intake::new(batcher, WhenFull::Block, Duration::from_secs(1), Cancel::new(), health));
        let stop = Cancel::new();
        let served = tokio::spawn(serve(listener, framing, intake.clone(), max_message_bytes, stop.clone()));
        Server { _dir: dir, path, intake, batches, stop, served: Some(served) }
    }

    impl Server {
        async fn until(&self, admitted: impl Fn(&Intake) -> bool) {
            let waiting = async {
                while !admitted(&self.intake) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::time::timeout(PATIENCE, waiting).await.expect("messages admitted");
        }

        async fn until_open_batch_holds(&self, messages: u64) {
            self.until(|intake| intake.batcher().info().messages == messages).await;
        }

        /// Every message admitted so far, batch by batch.
        fn flushed(&self) -> Vec<Batch> {
            self.intake.batcher().flush();
            self.batches.try_iter().collect()
        }

        async fn stop(&mut self) {
            self.stop.cancel();
            let served = self.served.take().unwrap();
            tokio::time::timeout(PATIENCE, served).await.expect("serve returns").unwrap();
        }
    }

    fn contents(batches: &[Batch]) -> Vec<(Vec<u8>, bool)> {
        batches.iter().flat_map(|b| &b.messages).map(|m| (m.payload.to_vec(), m.line)).collect()
    }

    #[tokio::test]
    async fn lines_until_eof_count_the_unterminated_last_one() {
        let mut server = start(RawFraming::Lines, 100, 1 << 20, 1000);
        let mut client = UnixStream::connect(&server.path).await.unwrap();
        client.write_all(b"first\n\nsecond\nla").await.unwrap();
        client.write_all(b"st").await.unwrap();
        client.shutdown().await.unwrap();
        server.until_open_batch_holds(3).await;
        server.stop().await;
        let batches = server.flushed();
        assert_eq!(
            contents(&batches),
            [(b"first".to_vec(), true), (b"second".to_vec(), true), (b"last".to_vec(), true)]
        );
        assert!(batches[0].messages.iter().all(|m| m.name.is_none()));
    }

    #[tokio::test]
    async fn an_oversize_frame_closes_the_connection_keeping_what_came_before() {
        let server = start(RawFraming::Frames, 10, 1 << 20, 1000);
        let rejected = || METRICS.messages_rejected.with_label_values(&["too_large"]).get();
        let before = rejected();
        let mut client = UnixStream::connect(&server.path).await.unwrap();
        let stream = frames(&[b"kept".to_vec(), vec![], b"far too large".to_vec(), b"lost".to_vec()]);
        client.write_all(&stream).await.unwrap();
        // A clean EOF, or a reset if the server closed with bytes unread: closed either way.
        let _ = tokio::time::timeout(PATIENCE, client.read_to_end(&mut Vec::new())).await.expect("closed");
        assert!(rejected() > before);
        assert_eq!(contents(&server.flushed()), [(b"kept".to_vec(), false), (vec![], false)]);

        let mut again = UnixStream::connect(&server.path).await.unwrap();
        again.write_all(&frames(&[b"next".to_vec()])).await.unwrap();
        server.until_open_batch_holds(1).await;
    }

    #[tokio::test]
    async fn a_truncated_frame_at_eof_is_rejected() {
        let mut server = start(RawFraming::Frames, 100, 1 << 20, 1000);
        let rejected = || METRICS.messages_rejected.with_label_values(&["bad_framing"]).get();
        let before = rejected();
        let mut client = UnixStream::connect(&server.path).await.unwrap();
        let stream = frames(&[b"whole".to_vec(), b"cut short".to_vec()]);
        client.write_all(&stream[..stream.len() - 3]).await.unwrap();
        client.shutdown().await.unwrap();
        server.until_open_batch_holds(1).await;
        server.stop().await;
        assert!(rejected() > before);
        assert_eq!(contents(&server.flushed()), [(b"whole".to_vec(), false)]);
    }

    #[tokio::test]
    async fn a_full_budget_stops_reading_until_commits_free_it() {
        let server = start(RawFraming::Lines, 100, charge(8, 2), 1000);
        let mut client = UnixStream::connect(&server.path).await.unwrap();
        client.write_all(b"aaaa\nbbbb\ncccc\n").await.unwrap();
        server.until_open_batch_holds(2).await;
        assert_eq!(server.intake.budget().used(), charge(8, 2));
        for batch in server.flushed() {
            batch.ack.committed(Receipt { commit: "1".into(), batch_file: None, objects: None });
        }
        server.until_open_batch_holds(1).await;
        assert_eq!(contents(&server.flushed()), [(b"cccc".to_vec(), true)]);
    }

    #[tokio::test]
    async fn one_read_never_stretches_a_batch_past_its_message_limit() {
        let server = start(RawFraming::Lines, 100, 1 << 20, 2);
        let mut client = UnixStream::connect(&server.path).await.unwrap();
        client.write_all(b"1\n2\n3\n4\n5\n").await.unwrap();
        server.until(|intake| intake.budget().used() == charge(5, 5)).await;
        let batches = server.flushed();
        assert_eq!(contents(&batches).len(), 5);
        assert!(batches.iter().all(|b| b.messages.len() <= 2), "{batches:?}");
    }

    #[tokio::test]
    async fn shutdown_admits_what_was_sent_and_drops_an_unfinished_line() {
        let mut server = start(RawFraming::Lines, 100, 1 << 20, 1000);
        let mut client = UnixStream::connect(&server.path).await.unwrap();
        client.write_all(b"one\n").await.unwrap();
        server.until_open_batch_holds(1).await;
        client.write_all(b"two\nthr").await.unwrap();
        server.stop().await;
        assert_eq!(contents(&server.flushed()), [(b"one".to_vec(), true), (b"two".to_vec(), true)]);
        assert_eq!(client.read_to_end(&mut Vec::new()).await.unwrap(), 0, "the server closed the connection");
        assert!(UnixStream::connect(&server.path).await.is_err(), "no longer accepting");
    }
}
