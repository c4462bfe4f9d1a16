//! The tar-stream sinks through the real binary: `fifo:` with a Pachyderm-like
//! reader on a real named pipe, and `stdout:` read back as a tar stream. Messages go
//! in over HTTP; what the reader commits must hold each of them exactly once.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
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

/// Runs the sidecar under a seccomp filter that fails `vmsplice` with `EPERM`, as a
/// container runtime's profile may: the `fifo:` sink then copies what it would lend.
fn refuse_vmsplice(command: &mut Command) {
    use libc::{sock_filter, sock_fprog, BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let op = |code: u32, jt: u8, jf: u8, k: u32| sock_filter { code: code as u16, jt, jf, k };
    // `seccomp_data.nr` is at offset 0; the syscall numbers are this target's, which
    // the sidecar is built for.
    let filter = Box::new([
        op(BPF_LD | BPF_W | BPF_ABS, 0, 0, 0),
        op(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, libc::SYS_vmsplice as u32),
        op(BPF_RET | BPF_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        op(BPF_RET | BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]);
    // SAFETY: between fork and exec the closure makes two system calls and allocates
    // nothing; the filter it points to lives in the closure.
    unsafe {
        command.pre_exec(move || {
            let program = sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program as *const sock_fprog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn where_vmsplice_is_refused_payloads_are_copied_and_every_message_arrives() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = fifo_in(tmp.path());
    let reader = PachydermReader::start(&fifo, Mode::KeepOpen);
    let sink = format!("fifo:{}", fifo.display());
    let sidecar = Sidecar::start_with(&["--sink", &sink, "--max-batch-age", "5ms"], refuse_vmsplice);
    let mut conn = Connection::tcp(&sidecar.addr);
    // Lines 999, 1999, ... are 70-130 KB: payloads the sink would lend.
    (0..4).for_each(|i| post_lines(&mut conn, i * 1_000..(i + 1) * 1_000));
    let (status, log) = sidecar.stop_with_log();
    assert!(status.success(), "{log}");
    assert!(log.contains("vmsplice is refused here"), "the sink never tried to lend: {log}");
    assert_lines_exactly_once(&reader.stop(), 4_000);
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
