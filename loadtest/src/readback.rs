//! Reading back what a sink committed: a `dir:` tree after the run, or a named pipe
//! read while the run goes on, the way a Pachyderm 1.x worker reads a spout: tar
//! archives back to back, one commit each, the pipe reopened whenever its writer
//! closes it (the Python pattern commits by closing the pipe).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{mkfifoat, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::tar_stream;
use crate::verify::{Separator, Tally};

/// Reads a `dir:` sink's tree, `<root>/<commit-id>/<files...>`, into `tally`.
pub fn read_dir_tree(root: &Path, separator: Separator, tally: &mut Tally) -> anyhow::Result<()> {
    let mut commits: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            // Commits in the making are hidden; after a clean shutdown none are left.
            tally.note(format!("leftover temporary entry {}", entry.path().display()));
            continue;
        }
        if !entry.file_type()?.is_dir() {
            bail!("{} is not a commit directory", entry.path().display());
        }
        commits.push(entry.path());
    }
    commits.sort();
    for commit in commits {
        tally.commits += 1;
        scan_tree(&commit, &commit, separator, tally)?;
    }
    Ok(())
}

fn scan_tree(commit: &Path, dir: &Path, separator: Separator, tally: &mut Tally) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            scan_tree(commit, &path, separator, tally)?;
        } else {
            let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let name = path.strip_prefix(commit.parent().unwrap_or(commit)).unwrap_or(&path);
            tally.scan(&name.display().to_string(), &data, separator);
        }
    }
    Ok(())
}

/// Paces reads to a byte rate: a slow consumer, to make a sink back up.
struct Paced<R> {
    inner: R,
    bytes_per_sec: f64,
    started: Instant,
    total: u64,
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let cap = buf.len().min(64 << 10);
        let n = self.inner.read(&mut buf[..cap])?;
        self.total += n as u64;
        let due = Duration::from_secs_f64(self.total as f64 / self.bytes_per_sec);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(ahead);
        }
        Ok(n)
    }
}

/// How fast the read-back consumes: a slow or stalled consumer makes the sink back up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pace {
    /// Read no faster than this (bytes/s); `None` reads as fast as the pipe gives.
    pub bytes_per_sec: Option<f64>,
    /// Read nothing until this long after the reader starts (the pipe held open
    /// meanwhile, as by a worker that has stalled).
    pub stall: Duration,
}

/// A thread reading a named pipe until told to stop, reopening it whenever its writer
/// closes it.
pub struct PipeReader<T> {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    thread: JoinHandle<anyhow::Result<T>>,
}

/// What one open of the pipe is handed: the reader, and the running result.
type Consume<T> = dyn FnMut(&mut dyn BufRead, &mut T) -> io::Result<()> + Send;

impl<T: Send + 'static> PipeReader<T> {
    fn spawn(path: &Path, pace: Pace, mut state: T, mut consume: Box<Consume<T>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let thread = {
            let (path, stop, bytes) = (path.to_owned(), stop.clone(), bytes.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut total = 0;
                while !stop.load(Ordering::Acquire) {
                    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                    if let Some(stalled) = pace.stall.checked_sub(started.elapsed()) {
                        std::thread::sleep(stalled);
                    }
                    let counted = Counted { inner: file, total: &bytes, stop: &stop };
                    let mut reader: Box<dyn BufRead> = match pace.bytes_per_sec {
                        Some(rate) => Box::new(BufReader::with_capacity(
                            256 << 10,
                            Paced { inner: counted, bytes_per_sec: rate, started, total },
                        )),
                        None => Box::new(BufReader::with_capacity(256 << 10, counted)),
                    };
                    consume(&mut reader, &mut state).with_context(|| format!("reading {}", path.display()))?;
                    total = bytes.load(Ordering::Relaxed);
                }
                Ok(state)
            })
        };
        Self { path: path.to_owned(), stop, bytes, thread }
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Ends the reader once every writer has closed the pipe: wakes it from its
    /// blocking open with a writer that writes nothing, and joins it.
    pub fn finish(self) -> anyhow::Result<T> {
        self.stop.store(true, Ordering::Release);
        while !self.thread.is_finished() {
            // Opening for write without blocking fails (ENXIO) while no reader has the
            // pipe open; the reader is then between two opens, so try again.
            let poke =
                std::fs::OpenOptions::new().write(true).custom_flags(OFlags::NONBLOCK.bits() as i32).open(&self.path);
            drop(poke);
            std::thread::sleep(Duration::from_millis(2));
        }
        self.thread.join().map_err(|_| anyhow::anyhow!("the pipe reader panicked"))?
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// The pipe's read end: counts bytes, and once told to stop, ends at the first
/// 100 ms without data even if a writer still has the pipe open (a sidecar this
/// harness did not start keeps it open; everything it committed has been read by
/// then, since `/flush?wait=commit` returned).
struct Counted<'a> {
    inner: File,
    total: &'a AtomicU64,
    stop: &'a AtomicBool,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let wait = Timespec { tv_sec: 0, tv_nsec: 100_000_000 };
        loop {
            let mut fds = [PollFd::new(&self.inner, PollFlags::IN)];
            match poll(&mut fds, Some(&wait)) {
                // Readable, or every writer gone: read() says which.
                Ok(1..) => break,
                Ok(0) if self.stop.load(Ordering::Acquire) => return Ok(0),
                Ok(0) | Err(Errno::INTR) => {}
                Err(err) => return Err(err.into()),
            }
        }
        let n = self.inner.read(buf)?;
        self.total.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Reads tar archives from the pipe into a tally, one commit per archive.
pub fn tar_reader(path: &Path, pace: Pace, tally: Tally, separator: Separator) -> PipeReader<Tally> {
    PipeReader::spawn(path, pace, tally, Box::new(move |r, t| read_archives(r, t, separator)))
}

/// Reads the pipe and checksums every byte, as the tar reader does: the consumer
/// side of the pipe-bandwidth ceiling.
pub fn drain_reader(path: &Path) -> PipeReader<crc32fast::Hasher> {
    PipeReader::spawn(
        path,
        Pace::default(),
        crc32fast::Hasher::new(),
        Box::new(|reader, hasher| loop {
            let chunk = reader.fill_buf()?;
            if chunk.is_empty() {
                return Ok(());
            }
            hasher.update(chunk);
            let n = chunk.len();
            reader.consume(n);
        }),
    )
}

/// Archives back to back until the writer closes the pipe.
fn read_archives(reader: &mut dyn BufRead, tally: &mut Tally, separator: Separator) -> io::Result<()> {
    let mut scratch = Vec::new();
    while let Some(first) = tar_stream::next_archive(reader)? {
        match tar_stream::read_archive(reader, first, &mut scratch, |name, data| tally.scan(name, data, separator)) {
            Ok(0) => {}
            Ok(_) => tally.commits += 1,
            Err(e) => {
                tally.corrupt += 1;
                tally.note(format!("commit {} is not a whole tar archive: {e}", tally.commits + 1));
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Creates a named pipe at `path`.
pub fn make_fifo(path: &Path) -> anyhow::Result<()> {
    mkfifoat(CWD, path, Mode::from_raw_mode(0o600))
        .map_err(io::Error::from)
        .with_context(|| format!("mkfifo {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Generator;
    use std::io::Write;

    fn archive(generator: &mut Generator, ids: &[u64], record_padding: bool) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for &id in ids {
            let data = generator.message(id, 700).to_vec();
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, format!("m-{id}"), &data[..]).unwrap();
        }
        let mut bytes = builder.into_inner().unwrap();
        if record_padding {
            bytes.resize(bytes.len().next_multiple_of(10240), 0);
        }
        bytes
    }

    #[test]
    fn reads_archives_back_to_back_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out");
        make_fifo(&fifo).unwrap();
        let reader = tar_reader(&fifo, Pace::default(), Tally::new(5), Separator::None);
        let mut generator = Generator::new(5, 1000);
        {
            let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            pipe.write_all(&archive(&mut generator, &[0, 1], false)).unwrap();
            pipe.write_all(&archive(&mut generator, &[2], true)).unwrap();
        }
        {
            let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            pipe.write_all(&archive(&mut generator, &[3], true)).unwrap();
        }
        let tally = reader.finish().unwrap();
        assert_eq!((tally.commits, tally.messages, tally.corrupt), (3, 4, 0));
    }
}
