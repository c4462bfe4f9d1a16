//! Shutdown under load, through the real binary: SIGTERM while clients are in the
//! middle of requests (one of them trickling its body) and batches in the middle of
//! commits. Within `--shutdown-timeout`, everything accepted must be committed and
//! the exit code 0; every request whose messages were committed must have had its
//! answer, and none refused had any committed. Past the timeout, the exit code is
//! non-zero and the log names what was not committed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::client::{self, Connection};
use crate::support::pachyderm_reader::{fifo_in, Mode, PachydermReader};
use crate::support::sidecar::{dir_commits, eventually, Sidecar};

const LINES_PER_REQUEST: usize = 20;

/// One request a client sent and what became of it.
#[derive(Debug)]
struct Sent {
    lines: Vec<String>,
    /// When its last byte was written.
    written: Instant,
    /// The status, or `None` if the connection ended without one.
    status: Option<u16>,
}

/// How a client sends.
#[derive(Debug, Clone, Copy)]
enum Style {
    /// Back to back on one keep-alive connection, with or without `wait=commit`.
    Fast { wait_commit: bool },
    /// The body in ten pieces a few tens of milliseconds apart.
    Trickle,
}

/// Sends requests until the sidecar no longer takes connections.
fn client(addr: &str, name: usize, style: Style) -> Vec<Sent> {
    let mut sent = Vec::new();
    while let Ok(mut conn) = Connection::try_tcp(addr) {
        loop {
            let request = sent.len();
            let lines: Vec<String> =
                (0..LINES_PER_REQUEST).map(|i| format!("client {name} request {request} line {i}")).collect();
            let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let (written, answer) = match style {
                Style::Fast { wait_commit } => {
                    let target = if wait_commit { "/messages?wait=commit" } else { "/messages" };
                    let headers = [("Content-Type", "application/x-ndjson")];
                    let answer = conn.try_request("POST", target, &headers, body.as_bytes());
                    (Instant::now(), answer)
                }
                Style::Trickle => trickle(&mut conn, body.as_bytes()),
            };
            let status = answer.as_ref().ok().map(|a| a.status);
            let closing = answer.as_ref().is_ok_and(|a| a.header("Connection") == Some("close"));
            sent.push(Sent { lines, written, status });
            if status == Some(503) {
                // Draining: the server keeps answering until it exits; do not spin.
                std::thread::sleep(Duration::from_millis(5));
            }
            if status.is_none() || closing {
                break;
            }
        }
    }
    sent
}

/// Writes one NDJSON request with its body in ten pieces; returns when its last
/// byte was written, and the answer.
fn trickle(conn: &mut Connection, body: &[u8]) -> (Instant, std::io::Result<client::Response>) {
    let head = format!(
        "POST /messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut write = || -> std::io::Result<()> {
        conn.write_raw(head.as_bytes())?;
        for piece in body.chunks(body.len().div_ceil(10)) {
            std::thread::sleep(Duration::from_millis(30));
            conn.write_raw(piece)?;
        }
        Ok(())
    };
    // A refusal may come before the body is whole (503 while draining): read it even
    // when the rest of the body could not be written.
    let written = write();
    let answer = conn.try_read_response();
    let answer = match written {
        Ok(()) => answer,
        Err(e) => answer.or(Err(e)),
    };
    (Instant::now(), answer)
}

#[test]
fn sigterm_mid_request_and_mid_commit_commits_all_accepted_and_answers_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("out");
    let sink = format!("dir:{}", root.display());
    // Batches of many files: each commit is a directory synced with syncfs, slow
    // enough that SIGTERM finds one under way. The buffer bounds what is left to
    // commit at SIGTERM, as it would in production.
    let sidecar = Sidecar::start(&[
        "--sink",
        &sink,
        "--max-batch-messages",
        "400",
        "--max-batch-age",
        "20ms",
        "--max-buffer-bytes",
        "128KiB",
        "--shutdown-timeout",
        "20s",
    ]);
    let styles = [
        Style::Fast { wait_commit: true },
        Style::Fast { wait_commit: true },
        Style::Fast { wait_commit: false },
        Style::Fast { wait_commit: false },
        Style::Trickle,
    ];
    let clients: Vec<_> = styles
        .into_iter()
        .enumerate()
        .map(|(name, style)| {
            let addr = sidecar.addr.clone();
            std::thread::spawn(move || client(&addr, name, style))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300 + fastrand::u64(..700)));
    let mut sidecar = sidecar;
    let term = Instant::now();
    sidecar.signal(Signal::TERM);
    let status = sidecar.wait_exit(Duration::from_secs(25));
    let took = term.elapsed();
    let sent: Vec<Sent> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    assert!(status.success(), "exit {status:?} after SIGTERM; log:\n{}", sidecar.log());
    assert!(sidecar.log().contains("drained: everything accepted is committed"), "{}", sidecar.log());

    let mut committed: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, bytes) in dir_commits(&root) {
        *committed.entry(String::from_utf8(bytes).unwrap()).or_default() += 1;
    }
    let doubled: Vec<_> = committed.iter().filter(|(_, &n)| n > 1).collect();
    assert!(doubled.is_empty(), "committed twice: {doubled:?}");
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for request in &sent {
        let found = request.lines.iter().filter(|l| committed.contains_key(*l)).count();
        let outcome = request.status.map_or("no answer".to_owned(), |s| s.to_string());
        *tally.entry(outcome.clone()).or_default() += 1;
        match request.status {
            Some(200 | 202) => assert_eq!(found, LINES_PER_REQUEST, "{outcome}, yet not all committed"),
            _ => assert_eq!(found, 0, "{outcome}, yet {found} of its lines committed: an answer was lost"),
        }
        if request.status.is_none() {
            assert!(request.written > term, "a request sent whole before SIGTERM got no answer");
        }
    }
    eprintln!("SIGTERM to exit 0: {took:.2?}; requests by outcome: {tally:?}");
    assert!(tally.contains_key("503"), "no request met the draining sidecar: {tally:?}");
}

#[test]
fn past_the_shutdown_timeout_exits_non_zero_naming_what_was_left() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = fifo_in(tmp.path());
    // The reader holds the pipe open and never reads: nothing can be committed.
    let reader = PachydermReader::start_paused(&fifo, Mode::KeepOpen);
    let sink = format!("fifo:{}", fifo.display());
    let mut sidecar = Sidecar::start(&["--sink", &sink, "--shutdown-timeout", "1s", "--max-batch-messages", "10"]);
    let waiting = {
        let addr = sidecar.addr.clone();
        std::thread::spawn(move || client::post(&addr, "/messages?wait=commit", "text/plain", b"never read"))
    };
    let mut conn = Connection::tcp(&sidecar.addr);
    let mut bytes = b"never read".len();
    let mut seqs = Vec::new();
    for i in 0..25 {
        let message = format!("message {i}");
        bytes += message.len();
        let answer = conn.request("POST", "/messages", &[], message.as_bytes());
        assert_eq!(answer.status, 202, "{}", answer.text());
        seqs.push(answer.json()["first_seq"].as_u64().unwrap());
    }
    eventually(Duration::from_secs(10), "the waiting request to be taken in", || {
        let status = client::get(&sidecar.addr, "/status").json();
        let charged = spout_sidecar::buffer::charge(bytes as u64, 26);
        (status["buffer"]["used_bytes"].as_u64() == Some(charged)).then_some(())
    });
    let term = Instant::now();
    sidecar.signal(Signal::TERM);
    let status = sidecar.wait_exit(Duration::from_secs(20));
    let took = term.elapsed();
    let log = sidecar.log();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(took < Duration::from_secs(1) + Duration::from_secs(6), "exit {took:?} after SIGTERM");
    let answer = waiting.join().unwrap();
    assert_eq!(answer.status, 502, "the waiting request learns its messages were not committed");
    assert_eq!(answer.json()["error"], "commit_failed");

    let report = log.lines().find(|l| l.contains("shutdown timeout")).unwrap_or_else(|| panic!("{log}"));
    eprintln!("past the timeout, exit 3 after {took:.2?}: {report}");
    let totals = format!("not committed: 26 messages ({bytes} bytes) in 3 batches: batch 1 (seq ");
    assert!(report.contains(&totals), "{report}");
    let named: Vec<(u64, u64)> = report
        .split("(seq ")
        .skip(1)
        .map(|range| {
            let (first, last) = range.split_once("..=").unwrap();
            (first.parse().unwrap(), last.split(')').next().unwrap().parse().unwrap())
        })
        .collect();
    for seq in seqs {
        let named_it = named.iter().any(|&(first, last)| (first..=last).contains(&seq));
        assert!(named_it, "seq {seq} not named: {report}");
    }
    let failed = log.lines().filter(|l| l.contains("commit failed") && l.contains("first_seq=")).count();
    assert_eq!(failed, 3, "one line per batch given up on: {log}");
    drop(reader);
}
