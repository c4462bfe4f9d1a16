//! A sidecar killed inside an archive, against a reader that follows Pachyderm's:
//! where a writer's bytes stop decides what Pachyderm commits (a prefix of the batch
//! at a clean EOF), and the pipe holder makes sure they never stop there.
//!
//! First the reader itself, fed by hand-cut archives, so the rules the other tests
//! lean on are checked against Go's `archive/tar` behaviour as documented in
//! `support::pachyderm_reader`. Then the real binary killed with SIGKILL while it
//! writes archives of 10,000 files: without the holder the reader commits part of a
//! batch now and then; with it, never, and with a spool nothing 202'd is lost.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use spout_sidecar::encode::{self, CommitFile};

use crate::support::client::{self, Connection};
use crate::support::ndjson_lines::line;
use crate::support::pachyderm_reader::{at_writer_eof, fifo_in, Commit, Mode, Next, PachydermReader};
use crate::support::sidecar::{eventually, Sidecar};

const BLOCK: usize = 512;

/// Three files of 700 bytes (two blocks each, the second partly padding).
fn archive() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for n in 0..3 {
        let mut header = tar::Header::new_gnu();
        header.set_size(700);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, format!("f{n}"), &[b'a' + n; 700][..]).unwrap();
    }
    builder.into_inner().unwrap()
}

/// Where each entry starts: three blocks per file.
fn entry(n: usize) -> usize {
    3 * BLOCK * n
}

/// Writes `bytes` into a fresh FIFO and closes it; returns what the reader committed
/// and how many archives failed.
fn feed(bytes: &[u8]) -> (Vec<Commit>, u64, u64) {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = fifo_in(tmp.path());
    let reader = PachydermReader::start(&fifo, Mode::KeepOpen);
    let mut writer = OpenOptions::new().write(true).open(&fifo).unwrap();
    writer.write_all(bytes).unwrap();
    drop(writer);
    eventually(Duration::from_secs(10), "the reader to read it all", || {
        (reader.bytes_read() >= bytes.len() as u64).then_some(())
    });
    // Then it decides, commits or fails at once; a moment is plenty.
    std::thread::sleep(Duration::from_millis(200));
    let (failures, prefixes) = (reader.failures(), reader.prefixes());
    (reader.stop(), failures, prefixes)
}

fn names(commits: &[Commit]) -> Vec<Vec<&str>> {
    commits.iter().map(|c| c.iter().map(|(name, _)| name.as_str()).collect()).collect()
}

#[test]
fn the_reader_commits_what_gos_tar_reader_would() {
    let whole = archive();
    // (cut at, files committed, failures, prefixes)
    let cases: [(usize, &[&str], u64, u64); 8] = [
        (whole.len(), &["f0", "f1", "f2"], 0, 0),
        (entry(1), &["f0"], 0, 1),                     // at an entry boundary: a clean EOF
        (entry(1) - 100, &["f0"], 0, 1),               // inside the padding: a clean EOF too
        (entry(1) - 400, &[], 1, 0),                   // inside the data: ErrUnexpectedEOF
        (entry(1) + 100, &[], 1, 0),                   // inside a header: ErrUnexpectedEOF
        (entry(3) + BLOCK, &["f0", "f1", "f2"], 0, 1), // after one end block
        (entry(3) + BLOCK + 10, &[], 1, 0),            // inside the second end block
        (100, &[], 0, 0),                              // inside the first header: no archive yet
    ];
    for (cut, files, failures, prefixes) in cases {
        let (commits, failed, cut_short) = feed(&whole[..cut]);
        let expected: Vec<Vec<&str>> = if files.is_empty() { vec![] } else { vec![files.to_vec()] };
        assert_eq!(names(&commits), expected, "cut at {cut}");
        assert_eq!((failed, cut_short), (failures, prefixes), "cut at {cut}: (failures, prefixes)");
    }
    // A header of 0xFF bytes fails its checksum wherever the archive broke off; a
    // zero block there would have ended the archive and committed f0.
    let mut spoiled = whole[..entry(1)].to_vec();
    spoiled.extend_from_slice(&[0xFF; BLOCK]);
    let (commits, failed, cut_short) = feed(&spoiled);
    assert_eq!((names(&commits).len(), failed, cut_short), (0, 1, 0));
}

/// The reader's rules against Go's own `archive/tar`, at every byte a writer could
/// stop at, in archives as the sidecar writes them: long names (a GNU long-name
/// entry), an empty file, a payload that fills its blocks exactly.
#[test]
fn the_readers_rules_are_gos_at_every_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let long = format!("dir/{}", "n".repeat(150));
    let files = [("a", &b"x"[..]), (long.as_str(), &[b'l'; 700][..]), ("empty", &b""[..]), ("full", &[b'f'; 512][..])];
    let files: Vec<CommitFile> = files
        .iter()
        .map(|(name, data)| CommitFile { name: (*name).into(), data: Bytes::copy_from_slice(data).into() })
        .collect();
    let archive: Vec<u8> = encode::tar::encode(&files, 0).chunks.concat();
    let path = tmp.path().join("archive.tar");
    std::fs::write(&path, &archive).unwrap();
    let go = Command::new("go")
        .arg("run")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/go_spout_reader.go"))
        .arg(&path)
        .env("GOCACHE", tmp.path().join("gocache"))
        .output()
        .expect("run go (golang-go; `cargo xtask test` installs it)");
    assert!(go.status.success(), "{}", String::from_utf8_lossy(&go.stderr));
    let go = String::from_utf8(go.stdout).unwrap();
    let mut prefixes = 0;
    for (cut, line) in go.lines().enumerate() {
        let ours = match at_writer_eof(&mut &archive[..cut]) {
            Next::Commit(commit) => {
                prefixes += usize::from(commit.len() < files.len());
                format!("commit:{}", commit.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(","))
            }
            Next::End => "eof".into(),
            Next::Truncated => "fail".into(),
        };
        assert_eq!(line, format!("{cut} {ours}"), "Go's reader and ours differ on the archive cut at byte {cut}");
    }
    assert_eq!(go.lines().count(), archive.len() + 1);
    assert!(prefixes > 0, "no cut commits a prefix: the rules checked nothing");
}

/// Batches of `batch` messages, as many as a request holds: archives of a few MiB.
fn sidecar_args<'a>(sink: &'a str, batch: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let batching = ["--max-batch-messages", batch, "--max-batch-age", "60s", "--max-batch-bytes", "64MiB"];
    [&["--sink", sink][..], &batching, &["--max-buffer-bytes", "256MiB"], extra].concat()
}

/// What the reader made of a run of kills.
struct Outcome {
    commits: Vec<Commit>,
    /// Archives cut short where Go's reader sees a clean EOF: a prefix committed.
    prefixes: u64,
    /// Archives the reader rejected (the spout restarted on a new FIFO).
    failures: u64,
    /// The lines that got a 202.
    accepted: Vec<usize>,
}

/// Kills a sidecar with SIGKILL at a random moment while one client posts requests
/// of `batch` lines (a batch each), `rounds` times; then lets one finish.
fn kill_while_writing(fifo: &Path, rounds: usize, batch: usize, extra: &[&str]) -> Outcome {
    let sink = format!("fifo:{}", fifo.display());
    let batch_arg = batch.to_string();
    let batch_arg = batch_arg.as_str();
    let reader = PachydermReader::start(fifo, Mode::KeepOpen);
    let mut accepted = Vec::new();
    let mut next = 0;
    for _ in 0..rounds {
        let mut sidecar = Sidecar::start(&sidecar_args(&sink, batch_arg, extra));
        let addr = sidecar.addr.clone();
        let first = next;
        let client = std::thread::spawn(move || {
            let mut sent = Vec::new();
            let Ok(mut conn) = Connection::try_tcp(&addr) else { return sent };
            for r in 0.. {
                let range = first + r * batch..first + (r + 1) * batch;
                let body: String = range.clone().map(|i| line(i) + "\n").collect();
                let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    conn.request("POST", "/messages", &[("Content-Type", "application/x-ndjson")], body.as_bytes())
                }));
                match answer {
                    Ok(answer) if answer.status == 202 => sent.push(range),
                    _ => return sent,
                }
            }
            sent
        });
        std::thread::sleep(Duration::from_millis(fastrand::u64(300..900)));
        sidecar.child.kill().unwrap();
        sidecar.child.wait().unwrap();
        let sent = client.join().unwrap();
        next = sent.last().map_or(next, |r| r.end) + batch;
        accepted.extend(sent.into_iter().flatten());
    }
    // Whatever the last sidecar's spool holds is committed by one that is let finish.
    let last = Sidecar::start(&sidecar_args(&sink, batch_arg, extra));
    // A long backlog may be waiting: the spool says when all of it is committed.
    eventually(Duration::from_secs(300), "the backlog committed", || {
        let status = client::get(&last.addr, "/status").json();
        let spool = &status["spool"];
        let done = spool.is_null() || spool["committed_seq"] == spool["written_seq"];
        (done && status["open_batch"]["messages"] == 0).then_some(())
    });
    last.flush();
    assert!(last.stop().success());
    // The last holder waits for the reader to read everything; so does the test.
    std::thread::sleep(Duration::from_millis(300));
    let (prefixes, failures) = (reader.prefixes(), reader.failures());
    Outcome { commits: reader.stop(), prefixes, failures, accepted }
}

#[test]
fn without_the_holder_a_kill_inside_an_archive_commits_part_of_a_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = fifo_in(tmp.path());
    const BATCH: usize = 10_000;
    // Where a kill leaves the pipe depends on how the last writes were cut: with the
    // sink's 1 MiB pipe about one kill in eight ends on an entry's boundary. Rounds
    // of eight kills go on until one does, so the hazard shows whatever the odds.
    for round in 1..=5 {
        let run = kill_while_writing(&fifo, 8, BATCH, &["--no-fifo-holder"]);
        let partial = run.commits.iter().filter(|c| !c.is_empty() && c.len() < BATCH).count();
        eprintln!(
            "round {round}: {} prefixes committed in 8 kills; {partial} commits of part of a batch",
            run.prefixes
        );
        if run.prefixes > 0 && partial > 0 {
            return;
        }
    }
    panic!("no kill in 40 left a clean EOF inside an archive: the test shows nothing");
}

#[test]
fn kill_9_at_20_random_moments_with_a_spool_never_commits_part_of_a_batch_nor_loses_a_202() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = fifo_in(tmp.path());
    let spool = tmp.path().join("spool");
    let spool = spool.to_str().unwrap();
    let Outcome { commits, prefixes, failures, accepted } =
        kill_while_writing(&fifo, 20, 2_000, &["--spool-dir", spool]);
    assert_eq!(prefixes, 0, "a commit holds part of a batch");
    assert!(
        failures >= 3,
        "only {failures} kills landed inside an archive (spoiled by the holder): too few to mean anything"
    );
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for (_, data) in commits.iter().flatten() {
        *seen.entry(String::from_utf8(data.clone()).unwrap()).or_default() += 1;
    }
    let lost: Vec<usize> = accepted.iter().copied().filter(|&i| !seen.contains_key(&line(i))).collect();
    assert!(accepted.len() >= 10 * 2_000, "too few 202s ({}) to mean anything", accepted.len());
    assert!(lost.is_empty(), "{} lines answered 202 and never committed, first {:?}", lost.len(), lost.first());
    let doubled = seen.values().filter(|&&n| n > 1).count();
    eprintln!("{} lines 202'd, {} commits, {doubled} lines committed twice", accepted.len(), commits.len());
    assert_eq!(doubled, 0, "lines committed twice");
}
