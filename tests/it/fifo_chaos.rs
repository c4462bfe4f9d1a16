//! Reader chaos on `fifo:` through the real binary: 100,000 messages go in over
//! HTTP while the pipe's reader, a separate process, is killed with SIGKILL at
//! random moments (mostly inside an archive) or leaves by itself between archives,
//! and a new one takes its place. At the end every message must have been committed
//! exactly once, its bytes unchanged.
//!
//! What did a killed reader commit? Each reader moves what it reads from the pipe
//! into a record file with `splice(2)`, so the bytes it consumed and the bytes it
//! recorded are the same bytes, whenever the kill lands. Read back with the
//! Pachyderm reader's own rules, a record's complete archives are its commits and an
//! archive cut short at its end is discarded, as Pachyderm discards it.
//!
//! The reader process is this test binary run again with `fifo_chaos::reader_process`
//! as its only test and the reader's settings in the environment.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::pipe::{splice, SpliceFlags};
use rustix::process::Signal;

use crate::support::client::Connection;
use crate::support::ndjson_lines::{assert_lines_exactly_once, post_lines};
use crate::support::pachyderm_reader::{fifo_in, next_commit, Commit, Next};
use crate::support::sidecar::{eventually, wait_exit, Sidecar};

const MESSAGES: usize = 100_000;
const PER_REQUEST: usize = 100;

/// The reader process's settings.
const FIFO_VAR: &str = "SPOUT_CHAOS_READER_FIFO";
const RECORD_VAR: &str = "SPOUT_CHAOS_READER_RECORD";
const LEAVE_AFTER_VAR: &str = "SPOUT_CHAOS_READER_LEAVE_AFTER";

/// The pipe's read end, moving every byte it reads into the record first.
struct Recorder {
    pipe: File,
    record: File,
    recorded: u64,
}

impl Read for Recorder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let start = self.recorded;
        let moved = splice(&self.pipe, None, &self.record, Some(&mut self.recorded), buf.len(), SpliceFlags::empty())?;
        self.record.read_exact_at(&mut buf[..moved], start)?;
        Ok(moved)
    }
}

/// The reader process: opens the pipe (waiting for the sidecar), creates its record
/// (which tells the test it is reading), reads archive after archive, and leaves
/// after as many as it was told, or at EOF. Without its settings it does nothing.
#[test]
fn reader_process() {
    let Ok(fifo) = std::env::var(FIFO_VAR) else { return };
    let leave_after: Option<usize> = std::env::var(LEAVE_AFTER_VAR).ok().map(|n| n.parse().unwrap());
    let pipe = File::open(fifo).expect("open the FIFO for reading");
    let record_path = std::env::var(RECORD_VAR).unwrap();
    let record = OpenOptions::new().read(true).write(true).create_new(true).open(record_path).unwrap();
    let mut recorder = Recorder { pipe, record, recorded: 0 };
    let mut commits = 0;
    while let Next::Commit(_) = next_commit(&mut recorder) {
        commits += 1;
        if leave_after == Some(commits) {
            return;
        }
    }
}

/// What the test does to one reader.
#[derive(Debug, Clone, Copy)]
enum Fate {
    KillAfter(Duration),
    LeaveAfter(usize),
}

/// One reader process and the record of what it consumed.
struct Session {
    child: Child,
    record: PathBuf,
}

impl Session {
    fn start(fifo: &Path, record: PathBuf, leave_after: Option<usize>) -> Self {
        let mut command = Command::new(std::env::current_exe().unwrap());
        // The full path of the test: `--exact` matches it whole, and every test of
        // the suite is in this binary.
        command.args(["fifo_chaos::reader_process", "--exact", "--nocapture", "--test-threads", "1"]);
        command.env(FIFO_VAR, fifo).env(RECORD_VAR, &record).stdout(Stdio::null());
        if let Some(archives) = leave_after {
            command.env(LEAVE_AFTER_VAR, archives.to_string());
        }
        let child = command.spawn().expect("start a reader process");
        Self { child, record }
    }

    /// Waits until the reader has the pipe open (the sidecar may be backing off).
    fn wait_reading(&mut self) {
        eventually(Duration::from_secs(30), "the reader to open the pipe", || {
            if self.record.exists() {
                return Some(());
            }
            match self.child.try_wait().unwrap() {
                Some(status) => panic!("the reader exited before reading: {status}"),
                None => None,
            }
        });
    }

    fn kill(mut self) -> PathBuf {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success() || status.signal() == Some(Signal::KILL.as_raw()), "reader: {status}");
        self.record
    }

    /// Waits for the reader to leave by itself; kills it if it has not within `patience`.
    fn leave(mut self, patience: Duration) -> (PathBuf, bool) {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "reader: {status}");
                return (self.record, true);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (self.kill(), false)
    }
}

/// The commits in a reader's record, and whether it ends inside an archive.
fn read_record(record: &Path) -> (Vec<Commit>, bool) {
    let mut stream = BufReader::new(File::open(record).unwrap());
    let mut commits = Vec::new();
    loop {
        match next_commit(&mut stream) {
            Next::Commit(commit) => commits.push(commit),
            Next::End => return (commits, false),
            Next::Truncated => return (commits, true),
        }
    }
}

/// Times the sink found its reader gone inside an archive (it closes the pipe then).
fn readers_lost_mid_archive(sidecar: &Sidecar) -> u64 {
    ["epipe", "reader_gone", "io"]
        .iter()
        .map(|kind| sidecar.metric(&format!("spout_sink_errors_total{{kind=\"{kind}\"}}")))
        .sum()
}

#[derive(Debug, Default)]
struct Tally {
    killed_mid_archive: usize,
    killed_between_archives: usize,
    left_between_archives: usize,
}

/// Runs one reader to its `fate`; returns its record once a successor may start.
fn one_reader(sidecar: &Sidecar, fifo: &Path, record: PathBuf, fate: Fate, tally: &mut Tally) -> PathBuf {
    let lost_before = readers_lost_mid_archive(sidecar);
    let leave_after = match fate {
        Fate::LeaveAfter(archives) => Some(archives),
        Fate::KillAfter(_) => None,
    };
    let mut session = Session::start(fifo, record, leave_after);
    session.wait_reading();
    let (record, left) = match fate {
        Fate::KillAfter(delay) => {
            std::thread::sleep(delay);
            (session.kill(), false)
        }
        Fate::LeaveAfter(_) => session.leave(Duration::from_secs(2)),
    };
    let (_, mid_archive) = read_record(&record);
    if mid_archive {
        tally.killed_mid_archive += 1;
        // The one race the documented guarantees leave to the reader: a new reader must not
        // open the pipe before the sink has closed it on the dead one.
        eventually(Duration::from_secs(30), "the sink to notice the reader died", || {
            (readers_lost_mid_archive(sidecar) > lost_before).then_some(())
        });
    } else if left {
        tally.left_between_archives += 1;
    } else {
        tally.killed_between_archives += 1;
    }
    record
}

#[test]
fn readers_killed_or_leaving_at_random_lose_and_double_nothing() {
    let started = Instant::now();
    let seed = std::env::var("SPOUT_CHAOS_SEED").map_or_else(|_| fastrand::u64(..), |s| s.parse().unwrap());
    eprintln!("chaos seed {seed} (SPOUT_CHAOS_SEED={seed} replays the same choices)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let tmp = tempfile::tempdir().unwrap();
    let fifo = fifo_in(tmp.path());
    let sink = format!("fifo:{}", fifo.display());
    let batching = ["--max-batch-messages", "300", "--max-batch-age", "20ms", "--max-buffer-bytes", "2MiB"];
    let sidecar = Sidecar::start(&[&["--sink", sink.as_str()][..], &batching].concat());
    let records = tmp.path().join("records");
    std::fs::create_dir(&records).unwrap();
    let record = |n: usize| records.join(format!("{n:04}"));
    let sent = AtomicBool::new(false);
    let mut done = Vec::new();
    let mut tally = Tally::default();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut conn = Connection::tcp(&sidecar.addr);
            for r in 0..MESSAGES / PER_REQUEST {
                post_lines(&mut conn, r * PER_REQUEST..(r + 1) * PER_REQUEST);
            }
            sent.store(true, Ordering::SeqCst);
        });
        while !sent.load(Ordering::SeqCst) {
            let fate = if rng.bool() {
                Fate::KillAfter(Duration::from_millis(rng.u64(20..300)))
            } else {
                Fate::LeaveAfter(rng.usize(1..6))
            };
            done.push(one_reader(&sidecar, &fifo, record(done.len()), fate, &mut tally));
            std::thread::sleep(Duration::from_millis(rng.u64(0..100)));
        }
    });
    let mut last = Session::start(&fifo, record(done.len()), None);
    last.wait_reading();
    sidecar.flush();
    let resent = sidecar.metric("spout_sink_retries_total");
    assert!(sidecar.stop().success());
    // The sidecar closed the pipe: the last reader sees EOF between archives and ends.
    assert!(wait_exit(&mut last.child, Duration::from_secs(30)).success());
    done.push(last.record);

    let commits: Vec<Commit> = done.iter().flat_map(|record| read_record(record).0).collect();
    assert_lines_exactly_once(&commits, MESSAGES);
    eprintln!(
        "{MESSAGES} messages in {} archives, {} readers ({tally:?}), {resent} archives re-sent: {:.1?}",
        commits.len(),
        done.len(),
        started.elapsed()
    );
    assert!(tally.killed_mid_archive >= 3, "too few kills inside an archive to mean anything: {tally:?}");
    assert!(tally.left_between_archives >= 3, "too few readers left between archives: {tally:?}");
    assert!(resent > 0, "archives cut short were sent again");
}
