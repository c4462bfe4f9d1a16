//! A named-pipe reader that behaves as a Pachyderm 1.x spout's reader does, for
//! tests of anything that writes spout archives into a FIFO.
//!
//! It follows Pachyderm v1.11.3 to v1.13.4 (`ReceiveSpout`, `getNextTarStream`,
//! `skipReader` in `src/server/worker/pipeline/common.go`) and Go's `archive/tar`
//! under it: it keeps the pipe open, skips stray zero blocks between archives,
//! reads one archive through the tar reader (never a byte past its end-of-archive
//! marker) and commits it. What a writer that vanishes inside an archive leaves
//! depends on where its bytes stop, as in Go:
//! - inside a header, or inside an entry's data (`io.ErrUnexpectedEOF`), or on a
//!   header whose checksum fails (`tar.ErrHeader`): nothing is committed; the spout
//!   fails and its worker restarts it on a new FIFO after a backoff;
//! - exactly at an entry's end, inside its padding, or after one end-of-archive
//!   block: Go's reader sees a clean io.EOF, and **the entries read whole so far are
//!   committed**, a prefix of the batch;
//! - where an archive would start (or inside stray zero blocks): the writer left
//!   between archives; the reader keeps its end open and waits for the next writer
//!   (`openAndWait`).
//!
//! In [`Mode::ReopenEachArchive`] it closes the pipe after each archive and opens it
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
/// How long a failed spout waits before its worker starts it again.
const RESTART_BACKOFF: Duration = Duration::from_millis(100);

/// One committed archive: its files as (name, bytes), in archive order.
pub type Commit = Vec<(String, Vec<u8>)>;

/// The next step of a reader reading archive after archive from one stream.
#[derive(Debug)]
pub enum Next {
    Commit(Commit),
    /// The stream ended where an archive would start.
    End,
    /// The stream ended inside an archive, or went wrong there.
    Truncated,
}

/// Reads the next archive from `stream` as the reader does from its pipe: never a
/// byte past the archive's end. For another process's record of what it consumed,
/// whose end is that process dying: an archive it did not read whole it never
/// committed, even where a writer's EOF there would have committed a prefix.
pub fn next_commit(stream: &mut impl Read) -> Next {
    match read_archive(stream, &Control::default()) {
        Outcome::Archive(bytes) => Next::Commit(decode(&bytes)),
        Outcome::Eof => Next::End,
        Outcome::Prefix(_) | Outcome::Failed(_) | Outcome::Died => Next::Truncated,
    }
}

/// What the reader does with the first archive of `stream` when the writer's EOF
/// ends the stream: commit it (whole or a prefix), wait for the next writer
/// (`End`), or fail (`Truncated`). For checks of these rules against Go's.
pub fn at_writer_eof(stream: &mut impl Read) -> Next {
    match read_archive(stream, &Control::default()) {
        Outcome::Archive(bytes) | Outcome::Prefix(bytes) => Next::Commit(decode(&bytes)),
        Outcome::Eof => Next::End,
        Outcome::Failed(_) | Outcome::Died => Next::Truncated,
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
    /// Archives that failed (the spout restarted on a new FIFO).
    failures: AtomicU64,
    /// Archives cut short at a clean EOF, whose first entries were committed.
    prefixes: AtomicU64,
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
    /// A clean EOF inside an archive: the entries read whole, ended as Go's tar
    /// writer ends the copy Pachyderm commits.
    Prefix(Vec<u8>),
    /// EOF where an archive would start: the writer closed between archives.
    Eof,
    /// Go's tar reader returned an error: nothing committed, the spout restarts.
    Failed(&'static str),
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

    /// Archives that failed, each restarting the spout on a new FIFO.
    pub fn failures(&self) -> u64 {
        self.control.failures.load(Ordering::SeqCst)
    }

    /// Archives cut short at a clean EOF, of which the reader committed a prefix.
    pub fn prefixes(&self) -> u64 {
        self.control.prefixes.load(Ordering::SeqCst)
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
/// until a reader reads. False while no reader has the pipe open (a reader's thread
/// not yet in its open(2)): nothing can fill it then.
pub fn is_full(fifo: &Path) -> bool {
    // A second write end, to ask poll(2) whether a write would block; it writes
    // nothing, and closing it ends no reader's stream while another writer is open.
    let nonblocking = OFlags::NONBLOCK.bits() as i32;
    let pipe = match OpenOptions::new().write(true).custom_flags(nonblocking).open(fifo) {
        Ok(pipe) => pipe,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) => return false,
        Err(e) => panic!("open the FIFO {}: {e}", fifo.display()),
    };
    let mut fds = [PollFd::new(&pipe, PollFlags::OUT)];
    let no_wait = Timespec { tv_sec: 0, tv_nsec: 0 };
    rustix::event::poll(&mut fds, Some(&no_wait)).unwrap_or_else(|e| panic!("poll on {}: {e}", fifo.display()));
    !fds[0].revents().contains(PollFlags::OUT)
}

fn read_commits(path: &Path, mode: Mode, control: &Control) -> Vec<Commit> {
    let mut commits = Vec::new();
    // Blocks until a writer has the pipe open, as Pachyderm's open does.
    let mut pipe = File::open(path).expect("open the FIFO for reading");
    while !control.stop.load(Ordering::SeqCst) {
        match read_archive(&mut pipe, control) {
            Outcome::Archive(bytes) => {
                commits.push(decode(&bytes));
                if control.leave_after == Some(commits.len()) {
                    return commits;
                }
                if mode == Mode::ReopenEachArchive {
                    drop(pipe);
                    pipe = File::open(path).expect("open the FIFO for reading");
                }
            }
            // Pachyderm's `openAndWait`: the same read end stays open, and opening
            // the path again blocks until a writer is there.
            Outcome::Eof if !control.stop.load(Ordering::SeqCst) => drop(File::open(path)),
            Outcome::Eof => {}
            Outcome::Prefix(bytes) => {
                control.prefixes.fetch_add(1, Ordering::SeqCst);
                let files = decode(&bytes);
                eprintln!("pachyderm reader: a clean EOF inside an archive; committing the {} files read", files.len());
                commits.push(files);
            }
            Outcome::Failed(why) => {
                control.failures.fetch_add(1, Ordering::SeqCst);
                eprintln!("pachyderm reader: {why}; the spout restarts on a new FIFO");
                drop(pipe);
                renew_fifo(path);
                std::thread::sleep(RESTART_BACKOFF);
                pipe = File::open(path).expect("open the new FIFO for reading");
            }
            Outcome::Died => return commits,
        }
    }
    commits
}

/// A failed spout's worker makes `/pfs/out` afresh: a writer still holding the old
/// pipe has no reader any more, and whatever was left in it is gone.
fn renew_fifo(path: &Path) {
    std::fs::remove_file(path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    mkfifoat(CWD, path, rustix::fs::Mode::from_raw_mode(0o600))
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}

/// How a short read ended a stretch of the stream.
enum Fill {
    Full,
    /// EOF after this many bytes (fewer than asked).
    Short(usize),
    Died,
}

/// One archive as Pachyderm's `getNextTarStream` reads it through Go's `archive/tar`:
/// stray zero blocks first (its `skipReader`), then header after header. Where EOF
/// lands decides the outcome, exactly as Go's reader decides it: see [`Outcome`].
fn read_archive(pipe: &mut impl Read, control: &Control) -> Outcome {
    let mut archive = Vec::new();
    let mut block = [0; BLOCK];
    // `skipReader`: whole zero blocks are dropped; EOF before a whole non-zero block,
    // even a partial one, is the first `Next()` returning io.EOF.
    loop {
        match fill(pipe, &mut block, control, true) {
            Fill::Full if is_zero(&block) => continue,
            Fill::Full => break,
            Fill::Short(_) => return Outcome::Eof,
            Fill::Died => return Outcome::Died,
        }
    }
    // The end of the last regular entry's data: what a clean EOF commits.
    let mut committed_end = None;
    loop {
        if is_zero(&block) {
            archive.extend_from_slice(&block);
            // Never dies on the read that ends the archive: it would be read whole
            // and not committed, which no real reader's death looks like to a writer.
            return match fill(pipe, &mut block, control, false) {
                Fill::Full if is_zero(&block) => {
                    archive.extend_from_slice(&block);
                    Outcome::Archive(archive)
                }
                Fill::Full => Outcome::Failed("tar: invalid header (a zero block, then a non-zero one)"),
                Fill::Short(0) => clean_eof(archive, committed_end),
                Fill::Short(_) => Outcome::Failed("unexpected EOF in the second end-of-archive block"),
                Fill::Died => Outcome::Died,
            };
        }
        if !checksum_ok(&block) {
            return Outcome::Failed("tar: invalid header (checksum)");
        }
        archive.extend_from_slice(&block);
        let header = tar::Header::from_byte_slice(&block);
        let size = header.entry_size().expect("a header's size") as usize;
        let regular = header.entry_type() == tar::EntryType::Regular;
        let mut data = vec![0; size.div_ceil(BLOCK) * BLOCK];
        match fill(pipe, &mut data, control, true) {
            Fill::Full => {}
            // Go's reader returns the data, then io.EOF from `Next()` in the padding.
            Fill::Short(read) if read >= size => {
                archive.extend_from_slice(&data[..size]);
                let end = if regular { Some(archive.len()) } else { committed_end };
                return clean_eof(archive, end);
            }
            Fill::Short(_) => return Outcome::Failed("unexpected EOF in an entry's data"),
            Fill::Died => return Outcome::Died,
        }
        archive.extend_from_slice(&data);
        if regular {
            committed_end = Some(archive.len() - (data.len() - size));
        }
        match fill(pipe, &mut block, control, true) {
            Fill::Full => {}
            Fill::Short(0) => return clean_eof(archive, committed_end),
            Fill::Short(_) => return Outcome::Failed("unexpected EOF in a header"),
            Fill::Died => return Outcome::Died,
        }
    }
}

/// Go's `Next()` returned io.EOF inside an archive: `copyTar` takes it for the end,
/// and Pachyderm commits the entries read whole so far (a GNU long name whose entry
/// never came is dropped). Before the first entry, it is the end of the stream.
fn clean_eof(mut archive: Vec<u8>, committed_end: Option<usize>) -> Outcome {
    let Some(end) = committed_end else { return Outcome::Eof };
    archive.truncate(end);
    archive.resize(end.div_ceil(BLOCK) * BLOCK + 2 * BLOCK, 0);
    Outcome::Prefix(archive)
}

/// Reads until `buf` is full or EOF; counts what it reads and, if it `may_die`,
/// dies when told.
fn fill(pipe: &mut impl Read, buf: &mut [u8], control: &Control, may_die: bool) -> Fill {
    let must_die =
        || may_die && control.die_after.is_some_and(|limit| control.bytes_read.load(Ordering::SeqCst) >= limit);
    while control.paused.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut filled = 0;
    while filled < buf.len() {
        // Never more than a block at a time, so that dying lands inside an archive.
        let upto = buf.len().min(filled + BLOCK);
        match pipe.read(&mut buf[filled..upto]) {
            Ok(0) => return Fill::Short(filled),
            Ok(n) => {
                filled += n;
                control.bytes_read.fetch_add(n as u64, Ordering::SeqCst);
                if must_die() {
                    return Fill::Died;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the FIFO: {e}"),
        }
    }
    Fill::Full
}

/// Go's `getFormat`: the checksum field, octal, must equal the header's sum with
/// that field counted as spaces (unsigned or signed bytes).
fn checksum_ok(block: &[u8; BLOCK]) -> bool {
    let field = std::str::from_utf8(&block[148..156]).ok().map(|f| f.trim_matches([' ', '\0']));
    let Some(Ok(stored)) = field.filter(|f| !f.is_empty()).map(|f| u32::from_str_radix(f, 8)) else { return false };
    let spaces = 8 * u32::from(b' ');
    let outside = |i: &usize| !(148..156).contains(i);
    let unsigned: u32 = block.iter().enumerate().filter(|(i, _)| outside(i)).map(|(_, &b)| u32::from(b)).sum();
    let signed: i64 = block.iter().enumerate().filter(|(i, _)| outside(i)).map(|(_, &b)| i64::from(b as i8)).sum();
    stored == unsigned + spaces || i64::from(stored) == signed + i64::from(spaces)
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
