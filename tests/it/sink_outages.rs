//! Sink outages through the real binary, each healing by itself: the pipe's reader
//! gone for seconds (killed inside an archive, or gone between archives), the `dir:`
//! root's file system full (ENOSPC), and read-only (EROFS). While the sink is out
//! the sidecar must retry with capped backoff, keep what it holds under
//! `--max-buffer-bytes`, answer 503 with `Retry-After` once the buffer is full, say
//! not ready on `/readyz`, and log one line per state change rather than one per
//! retry. Once the sink is back, every message must be committed exactly once.
//!
//! Real outages last minutes; a few seconds take the backoff to its
//! cap (2 s) and through several retries at it, which is what minutes would repeat.
//!
//! The `dir:` outages are real file-system errors, not permissions (root ignores
//! those): the sink writes into a small tmpfs that the test fills up, or remounts
//! read-only. Mounting needs root (CAP_SYS_ADMIN), as CI runs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rustix::io::Errno;
use rustix::mount::{mount, mount_remount, unmount, MountFlags, UnmountFlags};

use crate::support::client::{self, Connection};
use crate::support::ndjson_lines::{assert_lines_exactly_once, line, post_lines};
use crate::support::pachyderm_reader::{fifo_in, Commit, Mode, PachydermReader};
use crate::support::sidecar::{dir_commits, eventually, Sidecar};

/// How long each sink stays out.
const OUTAGE: Duration = Duration::from_secs(4);
/// Lines sent in all; the first few go in before the outage starts.
const LINES: usize = 5_000;
const PER_REQUEST: usize = 50;
const BUFFER: u64 = 128 << 10;

/// Options that make a small buffer fill within the outage, and requests that find
/// it full wait briefly and then get 503.
fn start(sink: &str) -> Sidecar {
    let buffer = BUFFER.to_string();
    Sidecar::start(&[
        "--sink",
        sink,
        "--max-batch-messages",
        "500",
        "--max-batch-age",
        "10ms",
        "--max-buffer-bytes",
        &buffer,
        "--block-timeout",
        "200ms",
    ])
}

/// Sends `lines` in NDJSON requests, retrying each 503 (which must be the documented one:
/// `overloaded` with `Retry-After`) until it is accepted; counts the 503s.
fn produce(addr: &str, lines: std::ops::Range<usize>, refused: &AtomicU64) {
    let mut conn = Connection::tcp(addr);
    let mut next = lines.start;
    while next < lines.end {
        let end = (next + PER_REQUEST).min(lines.end);
        let body: String = (next..end).map(|i| line(i) + "\n").collect();
        let answer = conn.request("POST", "/messages", &[("Content-Type", "application/x-ndjson")], body.as_bytes());
        match answer.status {
            202 => next = end,
            503 => {
                assert_eq!(answer.json()["error"], "overloaded", "{}", answer.text());
                let retry_after: u64 = answer.header("Retry-After").expect("Retry-After").parse().unwrap();
                assert!(retry_after >= 1);
                refused.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
            other => panic!("unexpected {other}: {}", answer.text()),
        }
    }
}

/// Sends line 0 and waits for its commit: the sink is up, every start-up log line is out.
fn first_commit(sidecar: &Sidecar) {
    let body = line(0) + "\n";
    let headers = [("Content-Type", "application/x-ndjson")];
    let answer = client::request(&sidecar.addr, "POST", "/messages?wait=commit", &headers, body.as_bytes());
    assert_eq!(answer.status, 200, "{}", answer.text());
}

/// The sink states the log reported, in order, in lines stamped at or after `since`
/// (a timestamp as the log writes them: RFC 3339, UTC, microseconds).
fn logged_states(sidecar: &Sidecar, since: &str) -> Vec<String> {
    let stamped_since = |line: &str| line.split_whitespace().next().is_some_and(|stamp| stamp >= since);
    sidecar
        .log()
        .lines()
        .filter(|l| l.contains("sink::health") && stamped_since(l))
        .map(|l| match l.split("state=\"").nth(1) {
            Some(rest) => rest.split('"').next().unwrap().to_owned(),
            None if l.contains("up again") => "up".to_owned(),
            None => panic!("a health line without a state: {l}"),
        })
        .collect()
}

/// What one outage is expected to look like.
struct Expected {
    /// The states logged from the sink's break to its recovery.
    states: &'static [&'static str],
    /// The `spout_sink_errors_total` kind its retries count under, and at least how
    /// many of them the outage makes.
    error_kind: &'static str,
    min_errors: u64,
}

/// Breaks the sink with `break_it` (which returns once it is broken), keeps
/// producing through the outage, checks what the sidecar shows meanwhile, mends the
/// sink, and checks that it recovered and logged as `expected`. Lines `1..first`
/// must have been sent by `break_it`; the rest of `0..LINES` are sent here.
fn ride_out<Broken, Mended>(
    sidecar: &Sidecar,
    first: usize,
    break_it: impl FnOnce() -> Broken,
    mend_it: impl FnOnce(Broken) -> Mended,
    expected: Expected,
) -> Mended {
    let errors = format!("spout_sink_errors_total{{kind=\"{}\"}}", expected.error_kind);
    // The outage's log lines are those stamped from now on. Where the log stands now
    // would not do: it reaches the test through a pipe and a thread, so a line the
    // sidecar wrote before this point (that the sink is up) may still be arriving.
    let since = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    let errors_before = sidecar.metric(&errors);
    let refused = AtomicU64::new(0);
    let mended = std::thread::scope(|scope| {
        let broken = break_it();
        let broke = Instant::now();
        let producer = scope.spawn(|| produce(&sidecar.addr, first..LINES, &refused));
        let buffer_full = || (refused.load(Ordering::SeqCst) > 0).then_some(());
        eventually(OUTAGE, "a 503 once the buffer is full", buffer_full);
        // A reader gone between archives is reported after a grace period, so the
        // buffer may be full before the sink is said to be down.
        eventually(OUTAGE, "/readyz to name both the sink and the full buffer", || {
            let ready = client::get(&sidecar.addr, "/readyz");
            assert_eq!(ready.status, 503, "{}", ready.text());
            let problems = ready.json()["problems"].to_string();
            (problems.contains("sink") && problems.contains("buffer is full")).then_some(())
        });
        let status = client::get(&sidecar.addr, "/status").json();
        assert!(status["buffer"]["used_bytes"].as_u64().unwrap() <= BUFFER, "{status}");
        std::thread::sleep(OUTAGE.saturating_sub(broke.elapsed()));
        let errors_seen = sidecar.metric(&errors) - errors_before;
        assert!(errors_seen >= expected.min_errors, "only {errors_seen} {errors} in the outage");
        // Capped backoff: a sink retrying without pause would count thousands.
        assert!(errors_seen < 100, "{errors_seen} {errors}: retries without backoff");
        assert!(!producer.is_finished(), "the producer got through an outage: nothing was held back");
        let refusals = refused.load(Ordering::SeqCst);
        eprintln!("{:?} out: {errors_seen} × {errors}, {refusals} requests refused with 503", OUTAGE);
        let mended = mend_it(broken);
        producer.join().unwrap();
        mended
    });
    eventually(Duration::from_secs(10), "/readyz ready again", || {
        (client::get(&sidecar.addr, "/readyz").status == 200).then_some(())
    });
    sidecar.flush();
    // The recovery's line, too, may still be on its way.
    let states = eventually(Duration::from_secs(10), "the recovery in the log", || {
        let states = logged_states(sidecar, &since);
        (states.last().map(String::as_str) == Some("up")).then_some(states)
    });
    assert_eq!(states, expected.states, "one log line per state change");
    mended
}

#[test]
fn pipe_reader_killed_mid_archive_and_gone_for_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = fifo_in(tmp.path());
    let sidecar = start(&format!("fifo:{}", fifo.display()));
    // Line 0's archive is 2 KiB; the reader dies inside the next one, of 200 lines.
    let doomed = PachydermReader::dying_after(&fifo, 64 << 10);
    first_commit(&sidecar);
    let (before, reader) = ride_out(
        &sidecar,
        201,
        || {
            post_lines(&mut Connection::tcp(&sidecar.addr), 1..201);
            doomed.join()
        },
        |before| (before, PachydermReader::start(&fifo, Mode::KeepOpen)),
        Expected { states: &["retrying", "down", "up"], error_kind: "no_reader", min_errors: 3 },
    );
    assert!(sidecar.stop().success());
    assert_exactly_once(before, reader);
}

#[test]
fn pipe_reader_gone_between_archives_for_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = fifo_in(tmp.path());
    let sidecar = start(&format!("fifo:{}", fifo.display()));
    let leaving = PachydermReader::leaving_after(&fifo, 2);
    first_commit(&sidecar);
    let (before, reader) = ride_out(
        &sidecar,
        2,
        || {
            post_lines(&mut Connection::tcp(&sidecar.addr), 1..2);
            leaving.join()
        },
        |before| (before, PachydermReader::start(&fifo, Mode::KeepOpen)),
        // The sink keeps the pipe, and what the reader left in it, for the next
        // reader: it waits, reporting the absence once, rather than retrying.
        Expected { states: &["down", "up"], error_kind: "no_reader", min_errors: 1 },
    );
    assert!(sidecar.stop().success());
    assert_exactly_once(before, reader);
}

fn assert_exactly_once(before: Vec<Commit>, reader: PachydermReader) {
    let mut commits = before;
    commits.extend(reader.stop());
    assert_lines_exactly_once(&commits, LINES);
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path) -> Self {
        std::fs::create_dir(path).unwrap();
        if let Err(error) = mount("tmpfs", path, "tmpfs", MountFlags::empty(), c"size=32m") {
            panic!("mounting a tmpfs at {} needs root (CAP_SYS_ADMIN): {error}", path.display());
        }
        Self { path: path.to_owned() }
    }

    /// Remounts read-only or read-write. Read-only fails with EBUSY while a file is
    /// open for writing (a commit being written), so it is tried again until it takes.
    fn remount(&self, read_only: bool) {
        let flags = if read_only { MountFlags::RDONLY } else { MountFlags::empty() };
        eventually(Duration::from_secs(10), "the remount", || match mount_remount(&self.path, flags, "") {
            Ok(()) => Some(()),
            Err(Errno::BUSY) => None,
            Err(error) => panic!("remount: {error}"),
        });
    }

    /// Fills the file system to its last byte with one file, and returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path.join("filler");
        let mut filler = std::fs::File::create(&path).unwrap();
        for chunk in [64 << 10, 1] {
            while filler.write_all(&vec![b'f'; chunk]).is_ok() {}
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // A lazy unmount cannot fail on a busy file system.
        let _ = unmount(&self.path, UnmountFlags::DETACH);
    }
}

/// Starts a sidecar writing into a fresh tmpfs and commits line 0 through it.
fn dir_sidecar(tmp: &Path) -> (Tmpfs, PathBuf, Sidecar) {
    let fs = Tmpfs::mount(&tmp.join("fs"));
    let root = fs.path.join("out");
    let sidecar = start(&format!("dir:{}", root.display()));
    first_commit(&sidecar);
    (fs, root, sidecar)
}

/// Every line committed under `root` exactly once, and no temp directory left.
fn assert_dir_exactly_once(root: &Path) {
    let names = std::fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap());
    let leftovers: Vec<String> = names.filter(|name| name.starts_with('.')).collect();
    assert!(leftovers.is_empty(), "half-written commits left behind: {leftovers:?}");
    let files: Commit = dir_commits(root).into_iter().map(|(_, name, bytes)| (name, bytes)).collect();
    assert_lines_exactly_once(&[files], LINES);
}

#[test]
fn dir_root_full_then_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let (fs, root, sidecar) = dir_sidecar(tmp.path());
    ride_out(
        &sidecar,
        1,
        || fs.fill(),
        |filler| std::fs::remove_file(filler).unwrap(),
        Expected { states: &["retrying", "up"], error_kind: "no_space", min_errors: 3 },
    );
    assert!(sidecar.stop().success());
    assert_dir_exactly_once(&root);
}

#[test]
fn dir_root_read_only_then_writable() {
    let tmp = tempfile::tempdir().unwrap();
    let (fs, root, sidecar) = dir_sidecar(tmp.path());
    ride_out(
        &sidecar,
        1,
        || fs.remount(true),
        |()| fs.remount(false),
        Expected { states: &["retrying", "up"], error_kind: "read_only", min_errors: 3 },
    );
    assert!(sidecar.stop().success());
    assert_dir_exactly_once(&root);
}
