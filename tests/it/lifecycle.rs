//! Start, back-pressure, drain and the supervisor form, with the real binary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{mkfifoat, Mode, OFlags, CWD};
use rustix::process::Signal;

use crate::support::client::{self, Connection};
use crate::support::python;
use crate::support::sidecar::{dir_commits, eventually, Sidecar, BIN};

#[test]
fn sigterm_commits_everything_accepted_and_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", tmp.path().join("out").display());
    let sidecar = Sidecar::start(&["--sink", &sink, "--max-batch-age", "1h", "--max-batch-messages", "300"]);
    let mut conn = Connection::tcp(&sidecar.addr);
    for i in 0..1000 {
        let r = conn.request("POST", "/messages", &[("Content-Type", "text/plain")], format!("message {i}").as_bytes());
        assert_eq!(r.status, 202);
    }
    let status = sidecar.stop();
    assert!(status.success(), "exit status {status:?}");
    let mut bodies: Vec<String> =
        dir_commits(&tmp.path().join("out")).into_iter().map(|(_, _, b)| String::from_utf8(b).unwrap()).collect();
    bodies.sort_by_key(|b| b[8..].parse::<u32>().unwrap());
    assert_eq!(bodies, (0..1000).map(|i| format!("message {i}")).collect::<Vec<_>>());
}

#[test]
fn draining_sidecar_answers_503() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("pipe");
    mkfifoat(CWD, &fifo, Mode::from_raw_mode(0o600)).unwrap();
    // Nobody reads the pipe, so the drain cannot finish and the window stays open.
    let sink = format!("fifo:{}", fifo.display());
    let sidecar = Sidecar::start(&["--sink", &sink, "--shutdown-timeout", "2s"]);
    assert_eq!(client::post(&sidecar.addr, "/messages", "text/plain", b"stuck").status, 202);
    sidecar.signal(Signal::TERM);
    let response = eventually(Duration::from_secs(5), "a 503 while draining", || {
        let r = client::post(&sidecar.addr, "/messages", "text/plain", b"late");
        (r.status == 503).then_some(r)
    });
    assert!(response.header("Retry-After").is_some());
    assert_eq!(client::get(&sidecar.addr, "/readyz").status, 503);
    let mut sidecar = sidecar;
    let status = sidecar.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "a drain that could not commit must not exit 0");
    assert!(sidecar.log().contains("not committed"), "{}", sidecar.log());
}

#[test]
fn supervisor_runs_the_producer_and_exits_with_its_code() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let producer = r#"
import os, urllib.request
req = urllib.request.Request(os.environ["SPOUT_URL"] + "/messages", data=b"from the child", method="POST")
print(urllib.request.urlopen(req).status)
raise SystemExit(7)
"#;
    let status = std::process::Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--sink"])
        .arg(format!("dir:{}", out.display()))
        .args(["--max-batch-age", "1h", "--"])
        .arg(python::interpreter())
        .args(["-c", producer])
        .status()
        .expect("run the supervisor form");
    assert_eq!(status.code(), Some(7));
    let files = dir_commits(&out);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].2, b"from the child");
}

#[test]
fn supervisor_forwards_sigterm_to_the_producer() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", tmp.path().join("out").display());
    // Once ready, the sidecar has its signal handlers; it starts the producer right
    // after, and forwards a signal that came first as soon as the producer runs.
    let mut sidecar = Sidecar::start(&["--sink", &sink, "--", "sleep", "60"]);
    sidecar.signal(Signal::TERM);
    let status = sidecar.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(128 + Signal::TERM.as_raw()), "exit code of a child killed by SIGTERM");
}

#[test]
fn full_buffer_rejects_with_retry_after_and_recovers() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("pipe");
    mkfifoat(CWD, &fifo, Mode::from_raw_mode(0o600)).unwrap();
    // A reader that holds the pipe open but does not read: a stalled Pachyderm.
    let mut reader = open_reader_nonblocking(&fifo);
    let sink = format!("fifo:{}", fifo.display());
    let sidecar = Sidecar::start(&[
        "--sink",
        &sink,
        "--max-buffer-bytes",
        "4MiB",
        "--when-full",
        "reject",
        "--max-batch-age",
        "10ms",
    ]);
    let mut conn = Connection::tcp(&sidecar.addr);
    let payload = vec![b'p'; 64 * 1024];
    let mut accepted = 0;
    let rejected = loop {
        let r = conn.request("POST", "/messages", &[], &payload);
        match r.status {
            202 => accepted += 1,
            503 => break r,
            other => panic!("unexpected {other}: {}", r.text()),
        }
        assert!(accepted < 1000, "the buffer never filled");
    };
    assert_eq!(rejected.json()["error"], "overloaded");
    assert!(rejected.header("Retry-After").is_some());
    assert!(accepted * payload.len() <= 4 << 20);
    assert_eq!(client::get(&sidecar.addr, "/readyz").status, 503);
    let rss_kib = rss_kib(sidecar.child.id());
    assert!(rss_kib < 64 * 1024, "RSS {rss_kib} KiB with a 4 MiB budget");
    // The reader wakes up and keeps reading (archives carry headers, so it cannot
    // know in advance how many bytes the last one has): the buffer drains and
    // requests are accepted again.
    let reading = Arc::new(AtomicBool::new(true));
    let drained = {
        let reading = reading.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0; 1 << 16];
            let mut total = 0;
            while reading.load(Ordering::Relaxed) {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    Ok(n) => total += n,
                }
            }
            total
        })
    };
    // The request refused above, again: a smaller one could fit in what the full
    // buffer had left, and be accepted before the reader has read anything.
    eventually(Duration::from_secs(10), "room in the buffer", || {
        (conn.request("POST", "/messages", &[], &payload).status == 202).then_some(())
    });
    reading.store(false, Ordering::Relaxed);
    assert!(drained.join().unwrap() > 0, "the reader read the archives that made room");
}

fn rss_kib(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Opens a FIFO for reading without waiting for a writer.
fn open_reader_nonblocking(path: &std::path::Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(OFlags::NONBLOCK.bits() as i32).open(path).unwrap()
}
