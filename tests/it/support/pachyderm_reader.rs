//! A named-pipe reader that behaves as a Pachyderm 1.x spout's reader does, for
//! tests of anything that writes spout archives into a FIFO.
//!
//! Like Pachyderm >= 1.11.3 it keeps the pipe open, skips stray zero blocks between
//! archives, reads exactly one archive per commit in 512-byte blocks (never a byte
//! past the end-of-archive marker) and discards an archive cut short by EOF. In
//! [`Mode::ReopenEachArchive`] it closes the pipe after each archive and opens it
//! again, as older Pachyderm did. A reader can also be started paused (it holds the
//! pipe open and reads nothing: a stalled consumer) or made to die inside an
//! archive (it closes the pipe there, as a killed process would) or leave after a
//! number of archives.
//!
//! The reader only finds where an archive ends; the `tar` crate then checks and
//! decodes the archive, long names included, into the files it commits.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{mkfifoat, OFlags, CWD};

const BLOCK: usize = 512;

/// One committed archive: its files as (name, bytes), in archive order.
pub type Commit = Vec<(String, Vec<u8>)>;

/// The next step of a reader reading archive after archive from one stream.
#[derive(Debug)]
pub enum Next {
    Commit(Commit),
    /// The stream ended where an archive would start.
    End,
    /// The stream ended inside an archive, which the reader discards.
    Truncated,
}

/// Reads the next archive from `stream` as the reader does from its pipe: never a
/// byte past the archive's end. For readers of other streams (another process's
/// record of what it consumed) that must draw the same boundaries.
pub fn next_commit(stream: &mut impl Read) -> Next {
    match read_archive(stream, &Control::default()) {
        Outcome::Archive(bytes) => Next::Commit(decode(&bytes)),
        Outcome::Eof => Next::End,
        Outcome::Truncated | Outcome::Died => Next::Truncated,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pachyderm >= 1.11.3: one open pipe, archive after archive.
    KeepOpen,
    /// Older Pachyderm: close the pipe after each archive, then open it again.
    ReopenEachArchive,
}

#[derive(Default)]
struct Control {
    stop: AtomicBool,
    paused: AtomicBool,
    /// Die inside the first archive still being read once this many bytes are read.
    die_after: Option<u64>,
    /// Close the pipe and end after this many archives, between two archives.
    leave_after: Option<usize>,
    bytes_read: AtomicU64,
}

/// A reader running on its own thread; see the module comment.
pub struct PachydermReader {
    path: PathBuf,
    control: Arc<Control>,
    thread: JoinHandle<Vec<Commit>>,
}

/// How one attempt to read an archive ended.
enum Outcome {
    Archive(Vec<u8>),
    /// EOF where an archive would start: the writer closed between archives.
    Eof,
    /// EOF inside an archive: discarded, as Pachyderm does.
    Truncated,
    /// Told to die inside an archive.
    Died,
}

impl PachydermReader {
    pub fn start(path: &Path, mode: Mode) -> Self {
        Self::spawn(path, mode, Control::default())
    }

    /// Opens the pipe (once a writer appears) but reads nothing until [`Self::resume`].
    pub fn start_paused(path: &Path, mode: Mode) -> Self {
        Self::spawn(path, mode, Control { paused: AtomicBool::new(true), ..Control::default() })
    }

    /// Reads as usual until at least `bytes` are read, then closes the pipe in the
    /// middle of the archive it is reading and ends: [`Self::join`] waits for that.
    pub fn dying_after(path: &Path, bytes: u64) -> Self {
        Self::spawn(path, Mode::KeepOpen, Control { die_after: Some(bytes), ..Control::default() })
    }

    /// Reads `archives` archives, then closes the pipe and ends: [`Self::join`].
    pub fn leaving_after(path: &Path, archives: usize) -> Self {
        Self::spawn(path, Mode::KeepOpen, Control { leave_after: Some(archives), ..Control::default() })
    }

    fn spawn(path: &Path, mode: Mode, control: Control) -> Self {
        let control = Arc::new(control);
        let thread = {
            let (path, control) = (path.to_owned(), control.clone());
            std::thread::spawn(move || read_commits(&path, mode, &control))
        };
        Self { path: path.to_owned(), control, thread }
    }

    pub fn resume(&self) {
        self.control.paused.store(false, Ordering::SeqCst);
    }

    pub fn bytes_read(&self) -> u64 {
        self.control.bytes_read.load(Ordering::SeqCst)
    }

    /// Waits for the reader to end by itself (dying or leaving) and returns its commits.
    pub fn join(self) -> Vec<Commit> {
        self.thread.join().expect("the reader thread panicked")
    }

    /// Stops at the next archive boundary or EOF and returns the commits. Meant for
    /// when the writer is done: a reader blocked opening the pipe is woken by
    /// opening it for writing, briefly, until the thread has ended.
    pub fn stop(self) -> Vec<Commit> {
        self.control.stop.store(true, Ordering::SeqCst);
        self.resume();
        while !self.thread.is_finished() {
            let poke = OpenOptions::new().write(true).custom_flags(OFlags::NONBLOCK.bits() as i32).open(&self.path);
            drop(poke);
            std::thread::sleep(Duration::from_millis(5));
        }
        self.join()
    }
}

/// Makes the named pipe `dir/out`.
pub fn fifo_in(dir: &Path) -> PathBuf {
    let path = dir.join("out");
    mkfifoat(CWD, &path, rustix::fs::Mode::from_raw_mode(0o600))
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
    path
}

/// Bytes written into the named pipe at `fifo` that no reader has read yet: what a
/// writer has put there, seen without taking any of it. Needs a reader to have the
/// pipe open, or the kernel has dropped its contents anyway.
pub fn unread_bytes(fifo: &Path) -> usize {
    // A second read end of the same pipe, never read from; O_NONBLOCK so that
    // opening it does not wait for a writer.
    let nonblocking = OFlags::NONBLOCK.bits() as i32;
    let pipe = OpenOptions::new().read(true).custom_flags(nonblocking).open(fifo).expect("open the FIFO");
    let unread = rustix::io::ioctl_fionread(&pipe).unwrap_or_else(|e| panic!("FIONREAD on {}: {e}", fifo.display()));
    unread as usize
}

/// Whether the named pipe at `fifo` is full: a writer could put nothing more in it
/// until a reader reads. Needs a reader to have the pipe open.
pub fn is_full(fifo: &Path) -> bool {
    // A second write end, to ask poll(2) whether a write would block; it writes
    // nothing, and closing it ends no reader's stream while another writer is open.
    let nonblocking = OFlags::NONBLOCK.bits() as i32;
    let pipe = OpenOptions::new().write(true).custom_flags(nonblocking).open(fifo).expect("open the FIFO");
    let mut fds = [PollFd::new(&pipe, PollFlags::OUT)];
    let no_wait = Timespec { tv_sec: 0, tv_nsec: 0 };
    rustix::event::poll(&mut fds, Some(&no_wait)).unwrap_or_else(|e| panic!("poll on {}: {e}", fifo.display()));
    !fds[0].revents().contains(PollFlags::OUT)
}

fn read_commits(path: &Path, mode: Mode, control: &Control) -> Vec<Commit> {
    let mut commits = Vec::new();
    while !control.stop.load(Ordering::SeqCst) {
        // Blocks until a writer has the pipe open, as Pachyderm's open does.
        let mut pipe = File::open(path).expect("open the FIFO for reading");
        loop {
            match read_archive(&mut pipe, control) {
                Outcome::Archive(bytes) => {
                    commits.push(decode(&bytes));
                    if control.leave_after == Some(commits.len()) {
                        return commits;
                    }
                    if mode == Mode::ReopenEachArchive || control.stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
                Outcome::Eof | Outcome::Truncated => break,
                Outcome::Died => return commits,
            }
        }
    }
    commits
}

fn read_archive(pipe: &mut impl Read, control: &Control) -> Outcome {
    let must_die = || control.die_after.is_some_and(|limit| control.bytes_read.load(Ordering::SeqCst) >= limit);
    let mut archive = Vec::new();
    loop {
        let Some(header) = read_block(pipe, control) else {
            return if archive.is_empty() { Outcome::Eof } else { Outcome::Truncated };
        };
        if is_zero(&header) {
            if archive.is_empty() {
                continue; // a stray zero block between archives
            }
            archive.extend_from_slice(&header);
            // The end-of-archive marker is two zero blocks; the archive ends after both.
            let Some(second) = read_block(pipe, control) else { return Outcome::Truncated };
            archive.extend_from_slice(&second);
            return Outcome::Archive(archive);
        }
        archive.extend_from_slice(&header);
        if must_die() {
            return Outcome::Died;
        }
        let header = tar::Header::from_byte_slice(&header);
        assert_eq!(
            header.cksum().ok(),
            Some(checksum(header.as_bytes())),
            "a valid tar header: did the reader start inside an archive?"
        );
        let size = header.entry_size().expect("a header's size");
        for _ in 0..size.div_ceil(BLOCK as u64) {
            let Some(data) = read_block(pipe, control) else { return Outcome::Truncated };
            archive.extend_from_slice(&data);
            if must_die() {
                return Outcome::Died;
            }
        }
    }
}

/// Reads one 512-byte block; `None` at EOF (whole or partial block).
fn read_block(pipe: &mut impl Read, control: &Control) -> Option<[u8; BLOCK]> {
    while control.paused.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut block = [0; BLOCK];
    let mut filled = 0;
    while filled < BLOCK {
        match pipe.read(&mut block[filled..]) {
            Ok(0) => return None,
            Ok(n) => {
                filled += n;
                control.bytes_read.fetch_add(n as u64, Ordering::SeqCst);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the FIFO: {e}"),
        }
    }
    Some(block)
}

/// A header's checksum: the sum of its bytes, the checksum field counted as spaces.
fn checksum(header: &[u8; BLOCK]) -> u32 {
    let field = 148..156;
    let sum: u32 = header.iter().enumerate().filter(|(i, _)| !field.contains(i)).map(|(_, &b)| u32::from(b)).sum();
    sum + 8 * u32::from(b' ')
}

fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// The files of one complete archive, checked (checksums, long names) by the `tar` crate.
fn decode(archive: &[u8]) -> Commit {
    let mut reader = tar::Archive::new(archive);
    reader
        .entries()
        .expect("a tar archive")
        .map(|entry| {
            let mut entry = entry.expect("a valid tar entry");
            assert_eq!(entry.header().entry_type(), tar::EntryType::Regular);
            let name = String::from_utf8(entry.path_bytes().into_owned()).expect("a UTF-8 name");
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("the entry's bytes");
            (name, data)
        })
        .collect()
}
