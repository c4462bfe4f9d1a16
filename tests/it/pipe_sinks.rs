//! The tar-stream sinks through the real binary: `fifo:` with a Pachyderm-like
//! reader on a real named pipe, and `stdout:` read back as a tar stream. Messages go
//! in over HTTP; what the reader commits must hold each of them exactly once.

use std::process::Stdio;
use std::time::Duration;

use crate::support::client::{self, Connection};
use crate::support::ndjson_lines::{assert_lines_exactly_once, post_lines};
use crate::support::pachyderm_reader::{fifo_in, unread_bytes, Mode, PachydermReader};
use crate::support::sidecar::{eventually, Sidecar};

#[test]
fn wait_commit_answers_once_the_reader_has_consumed_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = fifo_in(tmp.path());
    let reader = PachydermReader::start_paused(&fifo, Mode::KeepOpen);
    let sink = format!("fifo:{}", fifo.display());
    let sidecar = Sidecar::start(&["--sink", &sink, "--max-batch-age", "10ms"]);
    let (answered, answer) = std::sync::mpsc::channel();
    let addr = sidecar.addr.clone();
    std::thread::spawn(move || {
        let headers = [("Spout-File", "greeting.txt")];
        answered.send(client::request(&addr, "POST", "/messages?wait=commit", &headers, b"hello")).unwrap();
    });
    // The archive fits in the pipe's buffer, but in there it is not committed yet.
    // The sink writes it in one go and looks at what was consumed right after, so
    // once it is in the pipe a wrong acknowledgement would already have freed its
    // bytes in the buffer.
    eventually(Duration::from_secs(30), "the archive in the pipe", || (unread_bytes(&fifo) > 0).then_some(()));
    let status = client::get(&sidecar.addr, "/status").json();
    let held = spout_sidecar::buffer::charge(b"hello".len() as u64, 1);
    assert_eq!(status["buffer"]["used_bytes"], held, "the unread archive still holds its place: {status}");
    assert!(answer.try_recv().is_err(), "answered before the reader read the archive");
    reader.resume();
    let answer = answer.recv_timeout(Duration::from_secs(30)).expect("an answer once the reader has read");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let commit = answer.json()["commit"].as_str().unwrap().to_owned();
    assert!(commit.len() == 20 && commit.bytes().all(|b| b.is_ascii_digit()), "{commit}");
    assert_eq!(answer.json()["files"], serde_json::json!(["greeting.txt"]));
    assert!(sidecar.stop().success());
    assert_eq!(reader.stop(), vec![vec![("greeting.txt".to_owned(), b"hello".to_vec())]]);
}

#[test]
fn reader_that_reopens_per_archive_gets_every_message_once() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = fifo_in(tmp.path());
    let reader = PachydermReader::start(&fifo, Mode::ReopenEachArchive);
    let sink = format!("fifo:{}", fifo.display());
    let sidecar = Sidecar::start(&["--sink", &sink, "--max-batch-messages", "50", "--max-batch-age", "5ms"]);
    let mut conn = Connection::tcp(&sidecar.addr);
    (0..100).for_each(|i| post_lines(&mut conn, i * 30..(i + 1) * 30));
    assert!(sidecar.stop().success());
    assert_lines_exactly_once(&reader.stop(), 3_000);
}

#[test]
fn reader_killed_mid_archive_while_100k_messages_flow_then_restarted() {
    const MESSAGES: usize = 100_000;
    const PER_REQUEST: usize = 100;
    let started = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let fifo = fifo_in(tmp.path());
    let sink = format!("fifo:{}", fifo.display());
    let sidecar = Sidecar::start(&[
        "--sink",
        &sink,
        "--max-batch-messages",
        "500",
        "--max-batch-age",
        "20ms",
        "--max-buffer-bytes",
        "2MiB",
    ]);
    let doomed = PachydermReader::dying_after(&fifo, 16 << 20);
    let (before, after) = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut conn = Connection::tcp(&sidecar.addr);
            (0..MESSAGES / PER_REQUEST).for_each(|r| post_lines(&mut conn, r * PER_REQUEST..(r + 1) * PER_REQUEST));
        });
        let before = doomed.join();
        // The sink closes the pipe before it reports the reader gone: a reader
        // started after that cannot join the old pipe and start inside an archive.
        eventually(Duration::from_secs(30), "the sidecar to notice the reader died", || {
            let status = client::get(&sidecar.addr, "/status").json();
            (status["sink_state"] != "up").then_some(())
        });
        (before, PachydermReader::start(&fifo, Mode::KeepOpen))
    });
    sidecar.flush();
    assert!(sidecar.metric("spout_sink_retries_total") > 0, "archives were sent again");
    assert!(sidecar.stop().success());
    let mut commits = before;
    commits.extend(after.stop());
    assert_lines_exactly_once(&commits, MESSAGES);
    eprintln!("100,000 messages over HTTP, reader killed mid-archive: {:.2?}", started.elapsed());
}

#[test]
fn stdout_sink_streams_archive_after_archive() {
    let sidecar = Sidecar::start_with(&["--sink", "stdout:", "--max-batch-messages", "40"], |command| {
        command.stdout(Stdio::piped());
    });
    let mut sidecar = sidecar;
    let stdout = sidecar.child.stdout.take().unwrap();
    let reading = std::thread::spawn(move || {
        let mut stream = tar::Archive::new(stdout);
        stream.set_ignore_zeros(true);
        let files: Vec<(String, Vec<u8>)> = stream
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
                (String::from_utf8(entry.path_bytes().into_owned()).unwrap(), data)
            })
            .collect();
        files
    });
    let mut conn = Connection::tcp(&sidecar.addr);
    (0..10).for_each(|i| post_lines(&mut conn, i * 20..(i + 1) * 20));
    assert!(sidecar.stop().success());
    assert_lines_exactly_once(&[reading.join().unwrap()], 200);
}
