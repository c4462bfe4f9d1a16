//! Vectored writes of a list of `Bytes`, for the tar-stream sinks.
//!
//! A [`Cursor`] remembers how far a list has been written, so one writer serves a
//! blocking fd (stdout: [`write_all`] waits for room itself) and a non-blocking fd
//! driven by poll (fifo: [`write_from`] stops at `WouldBlock` and resumes later).
//! Each `writev` takes at most `IOV_MAX` slices; partial writes and `EINTR` are
//! handled here, so callers see only "done", "would block" or a real error.
//! A pipe writer that keeps what it wrote until the reader has read it may lend
//! large payloads to the pipe instead ([`write_lending`]). `poll` and `FIONREAD`
//! on a pipe's write end live here too.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::pipe::{IoSliceRaw, SpliceFlags};

/// The most slices one `writev` accepts on Linux (`IOV_MAX`).
pub const IOV_MAX: usize = 1024;

/// How far a list of chunks has been written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    chunk: usize,
    offset: usize,
    done: u64,
}

impl Cursor {
    /// Bytes of the list written so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    fn advance(&mut self, chunks: &[Bytes], mut written: usize) {
        self.done += written as u64;
        while written > 0 {
            let left = chunks[self.chunk].len() - self.offset;
            if written < left {
                self.offset += written;
                return;
            }
            written -= left;
            self.chunk += 1;
            self.offset = 0;
        }
    }

    /// Steps over chunks with nothing left to write (empty ones included).
    fn skip_finished(&mut self, chunks: &[Bytes]) {
        while self.chunk < chunks.len() && self.offset == chunks[self.chunk].len() {
            self.chunk += 1;
            self.offset = 0;
        }
    }
}

/// Writes `chunks` from `at` on. Returns `Ok` once everything is written, or the
/// first error other than `EINTR`; on a non-blocking fd that is `WouldBlock` when
/// the pipe is full, with `at` telling where to resume.
pub fn write_from(out: &mut impl Write, chunks: &[Bytes], at: &mut Cursor) -> io::Result<()> {
    drive(chunks, at, |at| out.write_vectored(&slices(chunks, at, chunks.len())))
}

/// Chunks at least this long are lent to the pipe by [`write_lending`], a run of
/// them per call; shorter ones cost less to copy than the pipe's slots they would
/// take (a slot per page touched, and a pipe has a slot per 4 KiB of its size).
pub const LEND_MIN: usize = 16 << 10;

/// Whether `vmsplice` works here (a seccomp profile may refuse it).
static LENDING_WORKS: AtomicBool = AtomicBool::new(true);

/// As [`write_from`] into a pipe, but chunks that `shared` marks and that are at
/// least [`LEND_MIN`] long are lent to it with `vmsplice` rather than copied: the
/// pipe then holds references to their pages, and the reader copies straight from
/// them. That saves the writer a copy and a fresh pipe page per 4 KiB, which was
/// two thirds of the sink's time with 1 MiB messages.
///
/// The caller's side of it: a lent chunk's bytes must stay as they are until the
/// reader has read them, so it keeps the chunk (or a clone) alive until then. A
/// `Bytes` is never written to while a handle to it exists, and its memory returns
/// to the allocator only when the last one is dropped.
pub fn write_lending(pipe: &mut File, chunks: &[Bytes], shared: &[bool], at: &mut Cursor) -> io::Result<()> {
    let lent = |i: usize| shared[i] && chunks[i].len() >= LEND_MIN && LENDING_WORKS.load(Ordering::Relaxed);
    drive(chunks, at, |at| {
        if !lent(at.chunk) {
            // No further than one `writev` reaches: a partial write looks again.
            let reach = chunks.len().min(at.chunk + IOV_MAX);
            let end = (at.chunk + 1..reach).find(|&i| lent(i)).unwrap_or(reach);
            return pipe.write_vectored(&slices(chunks, at, end));
        }
        let run = (at.chunk + 1..chunks.len()).take(IOV_MAX - 1).take_while(|&i| lent(i));
        let mut lend = Vec::with_capacity(run.size_hint().1.unwrap_or(0) + 1);
        lend.push(IoSliceRaw::from_slice(&chunks[at.chunk][at.offset..]));
        lend.extend(run.map(|i| IoSliceRaw::from_slice(&chunks[i])));
        // SAFETY: `pipe` is a pipe's write end, so the kernel only reads `lend`; that
        // its bytes stay unchanged until the reader has them is the caller's part.
        match unsafe { rustix::pipe::vmsplice(&*pipe, &lend, SpliceFlags::NONBLOCK) } {
            Err(err @ (Errno::NOSYS | Errno::PERM | Errno::INVAL)) => {
                tracing::info!("vmsplice is refused here ({err}): payloads are copied into the pipe");
                LENDING_WORKS.store(false, Ordering::Relaxed);
                Err(Errno::INTR.into())
            }
            done => Ok(done?),
        }
    })
}

/// The slices of `chunks` from `at` up to chunk `end`, as many as one `writev` takes.
fn slices<'a>(chunks: &'a [Bytes], at: &Cursor, end: usize) -> Vec<IoSlice<'a>> {
    let rest = &chunks[at.chunk + 1..end];
    let mut slices = Vec::with_capacity(IOV_MAX.min(rest.len() + 1));
    slices.push(IoSlice::new(&chunks[at.chunk][at.offset..]));
    slices.extend(rest.iter().take(IOV_MAX - 1).map(|chunk| IoSlice::new(chunk)));
    slices
}

/// Calls `write` from each point it reached until `chunks` are all written or it
/// fails; `write` is only called with unfinished chunks left.
fn drive(chunks: &[Bytes], at: &mut Cursor, mut write: impl FnMut(&Cursor) -> io::Result<usize>) -> io::Result<()> {
    loop {
        at.skip_finished(chunks);
        if at.chunk == chunks.len() {
            return Ok(());
        }
        match write(at) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => at.advance(chunks, written),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes all of `chunks` to `out`, waiting for room whenever the fd turns out to be
/// non-blocking (an inherited stdout may be). `keep_going` is asked between waits.
pub fn write_all(out: &mut File, chunks: &[Bytes], keep_going: impl Fn() -> bool) -> io::Result<()> {
    let mut at = Cursor::default();
    loop {
        match write_from(out, chunks, &mut at) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !keep_going() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "gave up waiting for the reader"));
                }
                poll_writable(out.as_fd(), true, Duration::from_millis(100))?;
            }
            done => return done,
        }
    }
}

/// The longest single wait of [`poll_writable`].
const MAX_POLL: Duration = Duration::from_millis(i32::MAX as u64);

/// What `poll` says about the write end of a pipe.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub writable: bool,
    /// No reader any more (`POLLERR` on a pipe's write end, `POLLHUP` elsewhere).
    pub reader_gone: bool,
}

/// Waits up to `timeout` for room to write (if `want_write`) or for the reader to
/// go away, whichever comes first. An `EINTR` counts as "nothing happened yet".
pub fn poll_writable(fd: BorrowedFd<'_>, want_write: bool, timeout: Duration) -> io::Result<Readiness> {
    let events = if want_write { PollFlags::OUT } else { PollFlags::empty() };
    let mut fds = [PollFd::from_borrowed_fd(fd, events)];
    // Capped at poll(2)'s limit (i32::MAX milliseconds, 24 days), which a timespec holds.
    let timeout = Timespec::try_from(timeout.min(MAX_POLL)).expect("24 days fit a timespec");
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(_) => {}
        Err(Errno::INTR) => return Ok(Readiness::default()),
        Err(err) => return Err(err.into()),
    }
    let revents = fds[0].revents();
    Ok(Readiness {
        writable: revents.contains(PollFlags::OUT),
        reader_gone: revents.intersects(PollFlags::ERR | PollFlags::HUP),
    })
}

/// Makes a write to a pipe without reader fail with `EPIPE` on this thread rather
/// than kill the process with `SIGPIPE`. Rust's runtime ignores SIGPIPE for its own
/// binaries, but a library must not count on how its host was built (a test
/// harness, `-Zon-broken-pipe=kill`). The signal a write raises goes to the writing
/// thread, so blocking it here is enough and leaves the rest of the process alone.
/// (`nix`, as rustix leaves signal masks to libc by design.)
pub fn block_sigpipe_on_this_thread() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGPIPE);
    // Fails only for an invalid `how`, which SIG_BLOCK is not.
    let _ = set.thread_block();
}

/// Bytes written into a pipe that its reader has not read yet (`FIONREAD`, which
/// Linux answers on either end of a pipe).
pub fn unread_bytes(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(rustix::io::ioctl_fionread(fd)?)
}

/// The pipe buffer the sink asks for: Linux's default ceiling for unprivileged
/// processes (`/proc/sys/fs/pipe-max-size`). The default 64 KiB pipe makes a 1 MiB
/// message sixteen `writev`s, each followed by a wait for the reader to make room.
pub const PIPE_BUFFER: usize = 1 << 20;

/// Grows a pipe's buffer to [`PIPE_BUFFER`]; returns the size it has. A pipe that
/// cannot grow (the user's pipe quota, `/proc/sys/fs/pipe-user-pages-soft`, is
/// spent) keeps the size it had: it works as before, only with more wake-ups.
pub fn grow_pipe(fd: BorrowedFd<'_>) -> io::Result<usize> {
    match rustix::pipe::fcntl_setpipe_size(fd, PIPE_BUFFER) {
        Ok(size) => Ok(size),
        Err(Errno::PERM) => Ok(rustix::pipe::fcntl_getpipe_size(fd)?),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A writer that takes at most a few bytes per call and is interrupted every
    /// other call: the worst a kernel may do.
    struct Stingy {
        got: Vec<u8>,
        calls: usize,
        max_slices: usize,
    }

    impl Write for Stingy {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            self.max_slices = self.max_slices.max(bufs.len());
            if self.calls.is_multiple_of(2) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let flat: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).take(7).collect();
            self.got.extend_from_slice(&flat);
            Ok(flat.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn chunks(count: usize) -> Vec<Bytes> {
        (0..count).map(|i| Bytes::from(vec![(i % 251) as u8; i % 13])).collect()
    }

    fn flat(chunks: &[Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn partial_writes_and_interrupts_lose_nothing() {
        let chunks = chunks(3000);
        let mut out = Stingy { got: Vec::new(), calls: 0, max_slices: 0 };
        let mut at = Cursor::default();
        write_from(&mut out, &chunks, &mut at).unwrap();
        assert_eq!(out.got, flat(&chunks));
        assert_eq!(at.done(), out.got.len() as u64);
        assert!(out.max_slices <= IOV_MAX);
    }

    fn pipe() -> (File, File) {
        use rustix::pipe::{pipe_with, PipeFlags};
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).unwrap();
        (File::from(read), File::from(write))
    }

    /// Writes with `write` into a small non-blocking pipe, reading a bit
    /// whenever it is full; returns what came out and how often the writer waited.
    fn through_a_full_pipe(mut write: impl FnMut(&mut File, &mut Cursor) -> io::Result<()>) -> (Vec<u8>, usize) {
        let (mut reader, mut writer) = pipe();
        let mut at = Cursor::default();
        let (mut got, mut would_block) = (Vec::new(), 0);
        loop {
            match write(&mut writer, &mut at) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => would_block += 1,
                Err(e) => panic!("{e}"),
            }
            assert_eq!(at.done(), got.len() as u64 + unread_bytes(reader.as_fd()).unwrap());
            let mut buf = vec![0; 50_000];
            let read = reader.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..read]);
        }
        drop(writer);
        reader.read_to_end(&mut got).unwrap();
        (got, would_block)
    }

    #[test]
    fn resumes_on_a_full_non_blocking_pipe() {
        let chunks: Vec<Bytes> = (0..2500).map(|i| Bytes::from(vec![(i % 256) as u8; 100 + i % 300])).collect();
        let (got, would_block) = through_a_full_pipe(|w, at| write_from(w, &chunks, at));
        assert!(would_block > 0, "500 KB must overflow a 64 KiB pipe");
        assert_eq!(got, flat(&chunks));
    }

    #[test]
    fn lent_and_copied_chunks_arrive_in_order_across_a_full_pipe() {
        // Around the lending threshold, shared or not, at odd offsets in their pages.
        let mut sizes = vec![LEND_MIN + 1, 700, LEND_MIN - 1, 3 * LEND_MIN + 4097, 5, LEND_MIN, 200_000];
        // More small ones than a `writev` takes, then one more to lend.
        sizes.extend((0..2500).map(|i| 100 + i % 300));
        sizes.push(2 * LEND_MIN);
        let backing: Vec<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| Bytes::from((0..size + 3).map(|b| (b * 7 + i) as u8).collect::<Vec<_>>()))
            .collect();
        let chunks: Vec<Bytes> = backing.iter().map(|b| b.slice(3..)).collect();
        let shared: Vec<bool> = (0..chunks.len()).map(|i| i % 3 != 1).collect();
        let (got, would_block) = through_a_full_pipe(|w, at| write_lending(w, &chunks, &shared, at));
        assert!(would_block > 0, "1 MB must overflow a 64 KiB pipe");
        assert_eq!(got, flat(&chunks));
    }

    #[test]
    fn poll_reports_room_then_a_vanished_reader() {
        let (reader, writer) = pipe();
        let ready = poll_writable(writer.as_fd(), true, Duration::ZERO).unwrap();
        assert_eq!(ready, Readiness { writable: true, reader_gone: false });
        drop(reader);
        assert!(poll_writable(writer.as_fd(), false, Duration::from_secs(5)).unwrap().reader_gone);
    }
}
