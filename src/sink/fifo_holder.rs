//! The pipe holder: a small process that keeps the `fifo:` sink's write end of the
//! spout's pipe open across a crash of the sidecar, so that Pachyderm's reader never
//! sees EOF inside an archive.
//!
//! Why: Pachyderm's reader copies an archive through Go's `archive/tar` and commits
//! it when the tar reader says io.EOF. A writer that vanishes exactly at an entry's
//! end (or inside its padding) gives a clean EOF there, and the reader commits the
//! entries read so far: part of a batch, whose messages a replay would commit again.
//!
//! How: when the sink opens the pipe it starts this same binary again in holder mode
//! ([`HOLDER_ENV`]), the pipe as its standard output (the same open file, so the same
//! `flock`, see [`super::fifo`]) and the read end of a notes pipe as its standard
//! input. Before and after each write the sink notes where it is ([`Note`]). When the
//! notes end without a [`Note::Release`] the sidecar is gone: if it stopped inside an
//! archive, or may have (a write in flight), the holder ends the archive with bytes
//! Go's reader rejects (0xFF: a header of them fails its checksum, whereas a zero
//! block would end the archive and commit the prefix), enough of them to reach the
//! next header whatever entry they land in. The reader fails, commits nothing and
//! Pachyderm restarts the spout; the spool replays the batch whole.
//!
//! Whole archives the sidecar wrote but did not live to see read are committed by
//! the reader after the crash, and the spool does not know. So the holder, the
//! sidecar gone, waits until the reader has read everything or left, works out
//! which archives it read whole, and writes the last seq of the last of them to
//! [`HANDOFF`] in the spool directory; a restarted sidecar acknowledges the batches
//! at or below it without writing them again. Then the holder exits, which releases
//! the lock a restarted sidecar waits for before it writes.
//!
//! The one window left: the sidecar killed between a write that ended an archive
//! and its note of it. The holder cannot tell that write's end from a cut inside
//! the archive; it spoils the pipe after it all the same (the reader may have
//! committed the archive whole, or not), counts it as unsure in [`HANDOFF`]
//! (`spout_fifo_unsure_archives_total`), and the replay may commit it a second time.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use super::vectored;

/// Set in the environment of the process that is to be a holder: the path of its
/// [`HANDOFF`] file, or empty without a spool.
pub const HOLDER_ENV: &str = "SPOUT_SIDECAR_FIFO_HOLDER";

/// In the spool directory: `LAST_SEQ UNSURE`, the last seq of the batches a dead
/// sidecar's reader committed, and how many archives so far the holder could not
/// tell committed or not.
pub const HANDOFF: &str = "fifo-handoff";
/// In the spool directory: locked while a holder may yet write [`HANDOFF`]. The
/// pipe's own lock is not enough: Pachyderm makes a new pipe when the reader fails.
pub const HANDOFF_LOCK: &str = "fifo-handoff.lock";
/// The descriptor a holder finds the handoff lock on.
const LOCK_FD: i32 = 3;

/// Every note is a tag and four numbers, offsets in bytes written into the pipe
/// since it was opened.
const NOTE_LEN: usize = 33;
const POISON: u8 = 0xFF;

/// What the sink tells its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// The archive at `start..end`, of the batch ending at `last_seq`, is being
    /// written; `poison` bytes from anywhere in it reach a header position.
    Archive { start: u64, end: u64, poison: u64, last_seq: u64 },
    /// A write is in flight; `from` bytes were written before it.
    Writing { from: u64 },
    /// The write returned: exactly `total` bytes are in the pipe.
    Wrote { total: u64 },
    /// The sink closes the pipe on purpose: exit without a word into it.
    Release,
}

impl Note {
    fn encode(self) -> [u8; NOTE_LEN] {
        let (tag, numbers) = match self {
            Note::Archive { start, end, poison, last_seq } => (b'A', [start, end, poison, last_seq]),
            Note::Writing { from } => (b'P', [from, 0, 0, 0]),
            Note::Wrote { total } => (b'W', [total, 0, 0, 0]),
            Note::Release => (b'R', [0; 4]),
        };
        let mut out = [0; NOTE_LEN];
        out[0] = tag;
        for (i, n) in numbers.into_iter().enumerate() {
            out[1 + 8 * i..9 + 8 * i].copy_from_slice(&n.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8; NOTE_LEN]) -> Option<Self> {
        let n = |i: usize| u64::from_le_bytes(bytes[1 + 8 * i..9 + 8 * i].try_into().expect("8 bytes"));
        Some(match bytes[0] {
            b'A' => Note::Archive { start: n(0), end: n(1), poison: n(2), last_seq: n(3) },
            b'P' => Note::Writing { from: n(0) },
            b'W' => Note::Wrote { total: n(0) },
            b'R' => Note::Release,
            _ => return None,
        })
    }
}

/// The sink's side: the running holder and the notes pipe to it.
pub struct Holder {
    child: Child,
    notes: io::PipeWriter,
}

impl Holder {
    /// Starts a holder of `pipe` (the sink's own open file: it shares its lock),
    /// handing over to a restarted sidecar through `handoff` if there is a spool,
    /// whose lock (taken) the holder then shares too.
    pub fn spawn(pipe: &File, handoff: Option<(&Path, &File)>) -> io::Result<Self> {
        let (notes_in, notes) = io::pipe()?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .env(HOLDER_ENV, handoff.map_or(Default::default(), |(path, _)| path.as_os_str()))
            .stdin(Stdio::from(notes_in))
            .stdout(Stdio::from(pipe.try_clone()?))
            // A terminal's Ctrl-C reaches the process group: the holder must outlive it.
            .process_group(0);
        if let Some((_, lock)) = handoff {
            let lock = OwnedFd::from(lock.try_clone()?);
            // SAFETY: between fork and exec, only dup2 (async-signal-safe) runs; the
            // target is wrapped, not owned, so nothing is closed or freed.
            unsafe {
                command.pre_exec(move || {
                    if lock.as_raw_fd() == LOCK_FD {
                        // dup2 onto itself would leave close-on-exec set.
                        rustix::io::fcntl_setfd(&lock, rustix::io::FdFlags::empty())?;
                    } else {
                        let mut target = std::mem::ManuallyDrop::new(OwnedFd::from_raw_fd(LOCK_FD));
                        rustix::io::dup2(&lock, &mut target)?;
                    }
                    Ok(())
                });
            }
        }
        Ok(Self { child: command.spawn()?, notes })
    }

    /// Tells the holder; a holder that is gone cannot hold, which the sink can do
    /// nothing about but go on (the pipe works as without one).
    pub fn note(&mut self, note: Note) {
        let _ = self.notes.write_all(&note.encode());
    }

    /// Lets the holder go without a word into the pipe, and waits for it, so that the
    /// pipe is closed on every side once this returns.
    pub fn release(mut self) {
        self.note(Note::Release);
        drop(self.notes);
        let _ = self.child.wait();
    }
}

/// What the handoff file says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Handoff {
    /// Every batch up to this seq is committed.
    pub last_seq: u64,
    /// Archives a holder could not tell committed or not, ever.
    pub unsure: u64,
}

impl Handoff {
    /// Reads `path`; nothing there (or nothing readable) says nothing.
    pub fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut numbers = text.split_whitespace().map(|n| n.parse().unwrap_or(0));
        Self { last_seq: numbers.next().unwrap_or(0), unsure: numbers.next().unwrap_or(0) }
    }

    /// Replaces `path` whole (a temporary file renamed over it, synced).
    fn write(self, path: &Path) -> io::Result<()> {
        let temp = path.with_extension("tmp");
        let mut file = File::create(&temp)?;
        writeln!(file, "{} {}", self.last_seq, self.unsure)?;
        file.sync_data()?;
        std::fs::rename(&temp, path)
    }
}

/// Where the sidecar was when it went, as its notes tell, and which of the archives
/// it wrote the reader has read whole.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Position {
    start: u64,
    end: u64,
    poison: u64,
    written: u64,
    writing: bool,
    /// Archives written and maybe not yet read: (end, last seq), oldest first.
    archives: VecDeque<(u64, u64)>,
    /// The last seq of the last archive read whole.
    read_through: u64,
}

impl Position {
    fn apply(&mut self, note: Note) {
        match note {
            Note::Archive { start, end, poison, last_seq } => {
                (self.start, self.end, self.poison) = (start, end, poison);
                self.archives.push_back((end, last_seq));
            }
            Note::Writing { from } => (self.written, self.writing) = (from, true),
            Note::Wrote { total } => (self.written, self.writing) = (total, false),
            Note::Release => {}
        }
    }

    /// Whether the pipe may end inside an archive. A write in flight may have
    /// ended anywhere in it, even at its end.
    fn inside_archive(&self) -> bool {
        self.writing || (self.start < self.written && self.written < self.end)
    }

    /// Takes note that the reader has read `consumed` bytes. With a write in flight
    /// the bytes written are not known, only that they are at least `written`: the
    /// estimate falls short, never over.
    fn consumed(&mut self, consumed: u64) {
        while self.archives.front().is_some_and(|&(end, _)| end <= consumed) {
            let (_, last_seq) = self.archives.pop_front().expect("checked above");
            self.read_through = self.read_through.max(last_seq);
        }
    }

    fn look(&mut self, pipe: &File, extra: u64) {
        if let Ok(unread) = vectored::unread_bytes(pipe.as_fd()) {
            self.consumed((self.written + extra).saturating_sub(unread));
        }
    }
}

/// The holder process: stdin the notes, stdout the pipe.
pub fn run() -> ExitCode {
    // SAFETY: fd 1 is the pipe the sink handed over, owned by nobody else here.
    let pipe = File::from(unsafe { OwnedFd::from_raw_fd(1) });
    let handoff = std::env::var_os(HOLDER_ENV).filter(|path| !path.is_empty()).map(PathBuf::from);
    // SAFETY: with a handoff, the sink put its lock on this descriptor; held until exit.
    let _lock = handoff.as_ref().map(|_| unsafe { OwnedFd::from_raw_fd(LOCK_FD) });
    let mut notes = io::stdin().lock();
    let mut position = Position::default();
    let mut note = [0; NOTE_LEN];
    while notes.read_exact(&mut note).is_ok() {
        match Note::decode(&note) {
            Some(Note::Release) => return ExitCode::SUCCESS,
            Some(note @ Note::Archive { .. }) => {
                // Forgets what has been read, so that the list stays short.
                position.look(&pipe, 0);
                position.apply(note);
            }
            Some(note) => position.apply(note),
            None => break,
        }
    }
    let mut poisoned = 0;
    if position.inside_archive() {
        // Whatever the reader reads of it, it never reads it whole: poison follows.
        let broken = position.end;
        position.archives.retain(|&(end, _)| end != broken);
        poisoned = spoil(&pipe, &position);
    } else {
        let _ = quiet_stderr();
    }
    wait_read_or_left(&pipe);
    position.look(&pipe, poisoned);
    let Some(handoff) = handoff else { return ExitCode::SUCCESS };
    let before = Handoff::read(&handoff);
    let unsure = u64::from(position.writing);
    let after = Handoff { last_seq: before.last_seq.max(position.read_through), unsure: before.unsure + unsure };
    if after != before {
        // Nobody reads stderr now; a restarted sidecar logs what it finds.
        let _ = after.write(&handoff);
    }
    ExitCode::SUCCESS
}

/// Ends the broken archive with poison; returns how many bytes of it went in.
fn spoil(pipe: &File, position: &Position) -> u64 {
    eprintln!(
        "spout-sidecar pipe holder: the sidecar went {} an archive ({} of its {} bytes written{}); ending it with {} \
         bytes the reader rejects",
        if position.writing { "while writing" } else { "inside" },
        position.written.saturating_sub(position.start),
        position.end - position.start,
        if position.writing { " before the last write" } else { "" },
        position.poison,
    );
    let _ = quiet_stderr();
    // A reader that left cannot commit the broken archive: no need to say more.
    poison(pipe, position.poison)
}

/// Lets go of stderr before waiting on the reader, which may take long: whoever reads
/// the sidecar's log to its end is not kept waiting too.
fn quiet_stderr() -> io::Result<()> {
    let null = File::open("/dev/null")?;
    // SAFETY: fd 2 stays open (dup2 replaces it in place); forgotten, never closed here.
    let mut stderr = std::mem::ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(2) });
    rustix::io::dup2(&null, &mut stderr)?;
    Ok(())
}

/// Writes `len` poison bytes into the (non-blocking) pipe as the reader makes room;
/// returns how many went in before it was done or the reader left.
fn poison(pipe: &File, len: u64) -> u64 {
    let block = [POISON; 4096];
    let mut written = 0;
    while written < len {
        match vectored::poll_writable(pipe.as_fd(), true, Duration::from_millis(100)) {
            Ok(ready) if !ready.reader_gone => {}
            _ => break,
        }
        match (&*pipe).write(&block[..(len - written).min(block.len() as u64) as usize]) {
            Ok(n) => written += n as u64,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    written
}

/// Holds the pipe (and its lock) until the reader has read the poison or left.
fn wait_read_or_left(pipe: &File) {
    loop {
        let gone = vectored::poll_writable(pipe.as_fd(), false, Duration::ZERO).is_ok_and(|r| r.reader_gone);
        if gone || vectored::unread_bytes(pipe.as_fd()).is_ok_and(|n| n == 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_round_trip() {
        let notes = [
            Note::Archive { start: 1, end: u64::MAX, poison: 3, last_seq: 4 },
            Note::Writing { from: 7 },
            Note::Wrote { total: 9 },
            Note::Release,
        ];
        for note in notes {
            assert_eq!(Note::decode(&note.encode()), Some(note));
        }
        assert_eq!(Note::decode(&[b'?'; NOTE_LEN]), None);
    }

    #[test]
    fn poisons_only_where_the_pipe_may_end_inside_an_archive() {
        let mut at = Position::default();
        assert!(!at.inside_archive(), "nothing written");
        at.apply(Note::Archive { start: 0, end: 2048, poison: 1024, last_seq: 10 });
        assert!(!at.inside_archive(), "the archive not begun");
        at.apply(Note::Writing { from: 0 });
        assert!(at.inside_archive(), "a write in flight may have stopped anywhere");
        at.apply(Note::Wrote { total: 1536 });
        assert!(at.inside_archive());
        at.apply(Note::Writing { from: 1536 });
        at.apply(Note::Wrote { total: 2048 });
        assert!(!at.inside_archive(), "the archive whole");
        at.apply(Note::Archive { start: 2048, end: 4096, poison: 1024, last_seq: 20 });
        assert!(!at.inside_archive(), "between two archives");
    }

    #[test]
    fn archives_count_as_read_once_the_reader_has_consumed_their_last_byte() {
        let mut at = Position::default();
        at.apply(Note::Archive { start: 0, end: 2048, poison: 1024, last_seq: 10 });
        at.apply(Note::Archive { start: 2048, end: 4096, poison: 1024, last_seq: 20 });
        at.consumed(2047);
        assert_eq!(at.read_through, 0);
        at.consumed(3000);
        assert_eq!((at.read_through, at.archives.len()), (10, 1));
        at.consumed(4096);
        assert_eq!((at.read_through, at.archives.len()), (20, 0));
    }

    #[test]
    fn the_handoff_file_round_trips_and_nothing_there_says_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HANDOFF);
        assert_eq!(Handoff::read(&path), Handoff::default());
        Handoff { last_seq: 42, unsure: 1 }.write(&path).unwrap();
        assert_eq!(Handoff::read(&path), Handoff { last_seq: 42, unsure: 1 });
    }
}
