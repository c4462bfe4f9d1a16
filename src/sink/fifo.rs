//! The `fifo:` sink: one tar archive per batch into a Pachyderm 1.x spout's named
//! pipe, each archive one commit.
//!
//! The pipe stays open and archives follow each other, as Pachyderm's reader expects.
//! Writes are non-blocking and pipelined: an archive is written as soon as it is
//! submitted, without waiting for the reader to finish the one before.
//!
//! **When is an archive committed?** Once the reader has consumed all of its bytes.
//! The sink counts the bytes written since it opened the pipe; `FIONREAD` tells how
//! many of them still sit unread in the pipe, so `consumed = written - unread`, and
//! every archive that ends at or before `consumed` is acknowledged.
//!
//! **When the reader goes away** (`EPIPE` on a write, `POLLERR` from poll) and is
//! not back already (a reader that reopens the pipe after each archive often is,
//! reading on), the sink first settles what the reader consumed, while the pipe
//! can still tell. Then:
//! - the reader left between two archives (`consumed` is an archive's first byte):
//!   what is left in the pipe begins with a whole archive, so the pipe stays open
//!   for the next reader. Older Pachyderm closes and reopens the pipe after each
//!   commit; closing on our side too would expose every commit to the race below;
//! - the reader left inside an archive: it discards that truncated archive, so the
//!   sink closes the pipe at once, which makes the kernel drop what the dead reader
//!   left unread, backs off, reopens, and sends every archive not wholly consumed
//!   again, each from its first byte, in order. Nothing is lost or doubled, and the
//!   next reader starts at an archive's first byte.
//!
//! The one race no writer can close: a new reader that opens the pipe after the old
//! one left inside an archive but before the sink has closed it joins the old pipe,
//! so it reads what the dead reader left (starting inside an archive), and archives
//! it reads whole in that moment are also sent again. Polling every few
//! milliseconds keeps the window short; a restarted Pachyderm worker takes far
//! longer to reopen the pipe.
//!
//! **When the sidecar itself dies inside an archive**, the reader would see EOF
//! there, and Go's tar reader commits the entries read so far when that EOF falls
//! at an entry's end. So the sink hands a [`Holder`] process its write end of the
//! pipe whenever it opens it: see [`super::fifo_holder`]. The sink takes an
//! exclusive `flock` on the pipe with every open, which the holder shares; a
//! restarted sidecar that finds it taken waits (`previous_writer`) until the old
//! holder has ended the broken archive, so its own archives never follow one.
//!
//! Payloads of 16 KiB or more are lent to the pipe (`vmsplice`) rather than copied
//! into it: they stay in the queue until the reader has read them anyway. (A reader
//! that spliced the pipe into another pipe would carry the lent pages on past that
//! point; Pachyderm's reader copies with `read`, as every `tar` reader does.)
//!
//! Memory: an archive's bytes are released from the budget only when it is
//! committed, so a stalled reader stops ingest by itself; the queue holds nothing
//! the budget does not count but the headers of the part being written: an archive
//! is encoded a part at a time as it is written, each part in the room the one
//! before it left (`tar::encode_part`). Everything here runs on the sink thread.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustix::fs::{FlockOperation, OFlags};
use rustix::io::Errno;

use super::backoff::Backoff;
use super::commit_id::CommitIds;
use super::fifo_holder::{self, Handoff, Holder, Note};
use super::spec::{BadSinkUri, PathKind, PathSink, Scheme, SinkSettings, SinkSpec};
use super::vectored::{self, Cursor};
use super::{Commit, Sink, SinkContext, SinkState};
use crate::ack::{BatchAck, Receipt};
use crate::encode::tar::{self, Part, Shape};
use crate::encode::CommitFile;
use crate::metrics::METRICS;

pub const SCHEME: Scheme = Scheme { prefix: "fifo:", form: "fifo:PATH", parse };

const KIND: PathKind = PathKind { scheme: "fifo", open, read: Some(super::fifo_marker::reader) };

fn parse(uri: &str) -> Result<SinkSpec, BadSinkUri> {
    PathSink::parse(uri, &KIND)
}

/// `fifo:PATH`.
pub fn spec(path: PathBuf) -> SinkSpec {
    PathSink::spec(&KIND, path)
}

fn open(path: PathBuf, settings: &SinkSettings) -> io::Result<Box<dyn Sink>> {
    let sink = FifoSink::new(path);
    Ok(Box::new(if settings.fifo_holder { sink.holding(settings.spool_dir.as_deref()) } else { sink }))
}

/// The longest the sink sleeps between looks at the pipe while waiting.
const STEP: Duration = Duration::from_millis(5);
/// How long a reader may be away between archives before the sink reports it.
const ABSENCE_GRACE: Duration = Duration::from_secs(1);

pub struct FifoSink {
    path: PathBuf,
    ids: CommitIds,
    /// Archives not yet consumed, oldest first: written, being written or waiting.
    queue: VecDeque<InFlight>,
    pipe: Option<Pipe>,
    backoff: Backoff,
    /// When to try opening the pipe again.
    reopen_at: Instant,
    /// Whether each open of the pipe gets a [`Holder`], and the handoff file it
    /// writes when there is a spool.
    holding: Option<Holding>,
}

struct Holding {
    handoff: Option<PathBuf>,
    /// Batches up to this seq were committed by a dead sidecar's reader.
    handed_over: u64,
    /// The handoff file's count of unsure archives, as last counted.
    unsure: u64,
}

/// A batch's archive, encoded a part at a time as it is written (and again from its
/// start should it be written to another pipe).
struct InFlight {
    files: Vec<CommitFile>,
    mtime: u64,
    shape: Shape,
    receipt: Receipt,
    ack: BatchAck,
    /// Where the archive ends in the bytes written since the pipe was opened; set
    /// when writing it begins.
    end: Option<u64>,
}

impl InFlight {
    fn start(&self) -> Option<u64> {
        self.end.map(|end| end - self.shape.len)
    }
}

struct Pipe {
    file: File,
    /// Bytes written since this open.
    written: u64,
    /// The first archive in the queue not yet wholly written, and how far it got: the
    /// part being written and the cursor in it.
    next: usize,
    part: Option<Part>,
    cursor: Cursor,
    /// Where parts' metadata is encoded: each part reuses the room of the one before
    /// once that is written, so it stays small and in cache.
    metadata: BytesMut,
    /// The reader left between two archives; the pipe waits for the next one.
    absent: Option<Absence>,
    holder: Option<Holder>,
}

struct Absence {
    since: Instant,
    reported: bool,
}

impl Pipe {
    fn new(file: File, holder: Option<Holder>) -> Self {
        let (part, cursor, metadata) = (None, Cursor::default(), BytesMut::new());
        Self { file, written: 0, next: 0, part, cursor, metadata, absent: None, holder }
    }

    fn note(&mut self, note: Note) {
        if let Some(holder) = &mut self.holder {
            holder.note(note);
        }
    }

    /// Whether a reader has the pipe open; notes and, past a grace period, reports
    /// its absence (older Pachyderm leaves between archives and comes right back).
    fn reader_present(&mut self, ctx: &SinkContext) -> bool {
        let gone =
            vectored::poll_writable(self.file.as_fd(), false, Duration::ZERO).is_ok_and(|ready| ready.reader_gone);
        if !gone {
            if self.absent.take().is_some() {
                ctx.health.up();
            }
            return true;
        }
        let absence = self.absent.get_or_insert(Absence { since: Instant::now(), reported: false });
        if !absence.reported && absence.since.elapsed() >= ABSENCE_GRACE {
            absence.reported = true;
            ctx.health.failing(SinkState::Down, "no_reader", &"the reader closed the pipe");
        }
        false
    }
}

impl FifoSink {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            ids: CommitIds::starting_now(),
            queue: VecDeque::new(),
            pipe: None,
            backoff: Backoff::default(),
            reopen_at: Instant::now(),
            holding: None,
        }
    }

    /// The sink with a [`Holder`] for every open of the pipe (the binary's; the
    /// holder is the binary started again), handing over through the spool
    /// directory `spool_dir` if there is one.
    pub fn holding(self, spool_dir: Option<&Path>) -> Self {
        let handoff = spool_dir.map(|dir| dir.join(fifo_holder::HANDOFF));
        Self { holding: Some(Holding { handoff, handed_over: 0, unsure: 0 }), ..self }
    }

    /// Writes, settles and reopens as far as possible within `wait`; returns early
    /// once something settled.
    fn progress(&mut self, wait: Duration, ctx: &SinkContext) {
        let deadline = Instant::now() + wait;
        let unsettled = self.queue.len();
        while !self.queue.is_empty() {
            if ctx.giving_up() {
                return self.abandon();
            }
            if self.pipe.is_none() {
                self.try_open(ctx);
            }
            if self.pipe.is_some() {
                self.exchange(ctx);
            }
            let now = Instant::now();
            if now >= deadline || self.queue.len() < unsettled {
                return;
            }
            self.pause((deadline - now).min(STEP), ctx);
        }
    }

    fn try_open(&mut self, ctx: &SinkContext) {
        if Instant::now() < self.reopen_at {
            return;
        }
        vectored::block_sigpipe_on_this_thread();
        // Non-blocking, so an absent reader is ENXIO instead of a thread stuck in open().
        let opened = OpenOptions::new().write(true).custom_flags(OFlags::NONBLOCK.bits() as i32).open(&self.path);
        let failure = match opened {
            Ok(file) => match file.metadata() {
                Ok(meta) if meta.file_type().is_fifo() => match self.lock(&file) {
                    Ok(handoff_lock) => {
                        match vectored::grow_pipe(file.as_fd()) {
                            Ok(size) if size < vectored::PIPE_BUFFER => {
                                tracing::debug!("the pipe's buffer stays at {size} bytes (the pipe quota is spent)")
                            }
                            Ok(_) => {}
                            Err(err) => tracing::debug!("cannot grow the pipe's buffer: {err}"),
                        }
                        ctx.health.up();
                        self.backoff.reset();
                        let holder = self.take_over(&file, handoff_lock);
                        self.pipe = Some(Pipe::new(file, holder));
                        self.skip_handed_over();
                        return;
                    }
                    Err(Errno::WOULDBLOCK) => (
                        "previous_writer",
                        format!(
                            "a previous sidecar's pipe holder is still ending its archive in {}",
                            self.path.display()
                        ),
                    ),
                    Err(err) => ("open", format!("flock {}: {err}", self.path.display())),
                },
                Ok(_) => ("not_a_fifo", format!("{} is not a named pipe", self.path.display())),
                Err(err) => ("open", err.to_string()),
            },
            Err(err) if Errno::from_io_error(&err) == Some(Errno::NXIO) => {
                ("no_reader", format!("nothing has {} open for reading", self.path.display()))
            }
            Err(err) => ("open", format!("{}: {err}", self.path.display())),
        };
        ctx.health.failing(SinkState::Down, failure.0, &failure.1);
        self.reopen_at = Instant::now() + self.backoff.next_delay();
    }

    /// Takes the pipe's lock, and with a spool the handoff lock: both free means
    /// no holder of an earlier open is left. Returns the handoff lock, if any.
    fn lock(&self, pipe: &File) -> Result<Option<File>, Errno> {
        rustix::fs::flock(pipe, FlockOperation::NonBlockingLockExclusive)?;
        let Some(handoff) = self.holding.as_ref().and_then(|h| h.handoff.as_deref()) else { return Ok(None) };
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(handoff.with_file_name(fifo_holder::HANDOFF_LOCK))
            .map_err(|err| Errno::from_io_error(&err).unwrap_or(Errno::IO))?;
        rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive)?;
        Ok(Some(lock))
    }

    /// With the locks just taken (no older holder is left), reads what the last one
    /// handed over and starts this open's holder, which shares the locks.
    fn take_over(&mut self, file: &File, handoff_lock: Option<File>) -> Option<Holder> {
        let holding = self.holding.as_mut()?;
        if let Some(handoff) = &holding.handoff {
            let found = Handoff::read(handoff);
            if found.last_seq > holding.handed_over {
                tracing::info!("a previous sidecar's reader committed the batches up to seq {}", found.last_seq);
                holding.handed_over = found.last_seq;
            }
            if found.unsure > holding.unsure {
                let new = found.unsure - holding.unsure;
                tracing::warn!("{new} archive(s) a previous sidecar was killed writing may be committed twice");
                METRICS.fifo_unsure_archives.inc_by(new);
                holding.unsure = found.unsure;
            }
        }
        let handoff = holding.handoff.as_deref().zip(handoff_lock.as_ref());
        Holder::spawn(file, handoff)
            .inspect_err(|err| {
                tracing::warn!("cannot start the pipe holder ({err}): a crash inside an archive may commit part of it");
            })
            .ok()
    }

    /// Acknowledges, without writing them, the batches a dead sidecar's reader
    /// committed (replayed from the spool, they are the oldest in the queue).
    fn skip_handed_over(&mut self) {
        let Some(holding) = &self.holding else { return };
        while self.queue.front().is_some_and(|a| a.end.is_none() && a.ack.last_seq <= holding.handed_over) {
            let done = self.queue.pop_front().expect("checked above");
            METRICS.fifo_handed_over.inc();
            done.ack.committed(done.receipt);
        }
    }

    /// With the pipe open: notices a returning reader, writes what fits, settles
    /// what was consumed.
    fn exchange(&mut self, ctx: &SinkContext) {
        let pipe = self.pipe.as_mut().expect("called with the pipe open");
        if pipe.absent.is_some() && !pipe.reader_present(ctx) {
            return;
        }
        if let Err(err) = self.write_more().and_then(|()| self.commit_consumed().map(drop)) {
            let kind = if err.kind() == io::ErrorKind::BrokenPipe { "epipe" } else { "io" };
            self.reader_left(kind, &err, ctx);
        }
    }

    fn write_more(&mut self) -> io::Result<()> {
        let pipe = self.pipe.as_mut().expect("called with the pipe open");
        while let Some(next) = self.queue.get_mut(pipe.next) {
            if next.end.is_none() {
                let (start, end) = (pipe.written, pipe.written + next.shape.len);
                next.end = Some(end);
                // Enough to reach a header from any byte, and to spoil it.
                let poison = next.shape.longest_entry + tar::BLOCK as u64;
                pipe.note(Note::Archive { start, end, poison, last_seq: next.ack.last_seq });
            }
            let part = match pipe.part.take() {
                Some(part) => part,
                None => tar::next_part(&next.files, 0, next.mtime, &mut pipe.metadata),
            };
            pipe.note(Note::Writing { from: pipe.written });
            let before = pipe.cursor.done();
            // The files stay in the queue until the reader has read them: lending is safe.
            let result = vectored::write_lending(&mut pipe.file, &part.chunks, &part.shared, &mut pipe.cursor);
            pipe.written += pipe.cursor.done() - before;
            pipe.note(Note::Wrote { total: pipe.written });
            match result {
                Ok(()) => {
                    pipe.cursor = Cursor::default();
                    let after = part.next;
                    // Dropped first: its metadata's room is the next part's.
                    drop(part);
                    if after < next.files.len() {
                        pipe.part = Some(tar::next_part(&next.files, after, next.mtime, &mut pipe.metadata));
                    } else {
                        pipe.next += 1;
                    }
                }
                Err(err) => {
                    pipe.part = Some(part);
                    if err.kind() == io::ErrorKind::WouldBlock {
                        return Ok(());
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Acknowledges every archive the reader has consumed whole; returns `consumed`.
    fn commit_consumed(&mut self) -> io::Result<u64> {
        let pipe = self.pipe.as_mut().expect("called with the pipe open");
        let consumed = pipe.written.saturating_sub(vectored::unread_bytes(pipe.file.as_fd())?);
        while self.queue.front().is_some_and(|a| a.end.is_some_and(|end| end <= consumed)) {
            let done = self.queue.pop_front().expect("checked above");
            pipe.next -= 1;
            done.ack.committed(done.receipt);
        }
        Ok(consumed)
    }

    /// Waits up to `nap` for room in the pipe or for the reader to leave.
    fn pause(&mut self, nap: Duration, ctx: &SinkContext) {
        let Some(pipe) = &self.pipe else {
            std::thread::sleep(nap.min(self.reopen_at.saturating_duration_since(Instant::now())));
            return;
        };
        if pipe.absent.is_some() {
            std::thread::sleep(nap);
            return;
        }
        let want_write = pipe.next < self.queue.len();
        if let Ok(ready) = vectored::poll_writable(pipe.file.as_fd(), want_write, nap) {
            if ready.reader_gone {
                self.reader_left("reader_gone", &"the reader closed the pipe", ctx);
            }
        }
    }

    /// The reader is gone: see the module comment for what happens and why.
    fn reader_left(&mut self, kind: &str, error: &dyn std::fmt::Display, ctx: &SinkContext) {
        let pipe = self.pipe.as_ref().expect("called with the pipe open");
        if vectored::poll_writable(pipe.file.as_fd(), false, Duration::ZERO).is_ok_and(|ready| !ready.reader_gone) {
            // A reader is back already: one that reopens the pipe after each archive
            // (older Pachyderm) and is reading on where it left. What it has read of
            // the next archive says nothing of where it left, and closing the pipe
            // now would not drop what is in it but hand it to this reader, archives
            // it then reads whole included, to be sent again. So the pipe stays.
            return;
        }
        if let Ok(consumed) = self.commit_consumed() {
            let between_archives = self.queue.front().and_then(InFlight::start).is_none_or(|s| s == consumed);
            if between_archives {
                let pipe = self.pipe.as_mut().expect("called with the pipe open");
                pipe.absent.get_or_insert(Absence { since: Instant::now(), reported: false });
                return;
            }
        }
        // Closed first, then reported: whoever sees the report knows the pipe is gone.
        // The holder goes quietly: no reader is left to spare a partial archive.
        if let Some(holder) = self.pipe.take().and_then(|mut pipe| pipe.holder.take()) {
            holder.release();
        }
        let resent = self.queue.iter_mut().filter_map(|a| a.end.take()).count();
        METRICS.sink_retries.inc_by(resent as u64);
        ctx.health.failing(SinkState::Retrying, kind, error);
        self.reopen_at = Instant::now() + self.backoff.next_delay();
    }

    /// Shutting down past its deadline: settles what was consumed and fails the rest.
    /// A reader still holding the pipe may yet read archives that were wholly in it;
    /// failing them says "not known to be committed", which stays true.
    fn abandon(&mut self) {
        if self.pipe.is_some() {
            let _ = self.commit_consumed();
        }
        self.pipe = None;
        for archive in self.queue.drain(..) {
            if archive.end.is_some() {
                // Written at least in part: the pipe may still hold pages of its
                // payloads, lent rather than copied. Their memory must not return to
                // the allocator, to be written over before the reader gets to them;
                // the process is shutting down anyway.
                std::mem::forget(archive.files);
            }
            archive.ack.failed("gave up: the pipe's reader had not consumed the archive by the shutdown deadline");
        }
    }
}

impl Sink for FifoSink {
    fn describe(&self) -> String {
        format!("fifo:{}", self.path.display())
    }

    fn submit(&mut self, commit: Commit, ctx: &SinkContext) {
        let receipt = ctx.receipt(self.ids.next_id(), &commit.files);
        let (shape, mtime) = (tar::shape(&commit.files), tar::mtime_now());
        self.queue.push_back(InFlight { files: commit.files, mtime, shape, receipt, ack: commit.ack, end: None });
        self.skip_handed_over();
        self.progress(Duration::ZERO, ctx);
    }

    fn settle(&mut self, wait: Duration, ctx: &SinkContext) -> usize {
        self.progress(wait, ctx);
        self.queue.len()
    }

    /// Opens the pipe ahead of the first batch, and notices a reader that left
    /// while nothing was in flight: `/readyz` then says whether a reader is there,
    /// and the next archive does not wait for the open. An idle pipe is empty, so
    /// it stays open for whichever reader comes next.
    fn probe(&mut self, ctx: &SinkContext) {
        match &mut self.pipe {
            None => self.try_open(ctx),
            Some(pipe) => {
                pipe.reader_present(ctx);
            }
        }
    }
}
