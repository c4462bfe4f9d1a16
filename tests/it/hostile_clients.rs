//! Slow and hostile clients against the real binary: headers that never end
//! (slowloris), a body that trickles past `--body-timeout`, a 10 GiB body (declared,
//! or chunked without a length), oversized headers, more connections than
//! `--max-connections`; and the HTTP/1.1 a well-behaved client relies on: several
//! requests written back to back on one connection answered in order, keep-alive,
//! `Connection: close`. The sidecar must refuse what it must, keep its memory small
//! while doing so, and go on serving everyone else.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use crate::support::client::{self, Connection};
use crate::support::sidecar::{dir_commits, Sidecar};

fn start(dir: &Path, extra: &[&str]) -> Sidecar {
    let sink = format!("dir:{}", dir.join("out").display());
    Sidecar::start(&[&["--sink", sink.as_str()][..], extra].concat())
}

/// Writes `bytes` one at a time, `gap` apart, for up to 300 bytes, until the server
/// closes the connection; says whether it did.
fn trickle_until_closed(stream: &mut TcpStream, bytes: &[u8], gap: Duration) -> bool {
    stream.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    for byte in bytes.iter().cycle().take(300) {
        if stream.write_all(std::slice::from_ref(byte)).is_err() {
            return true;
        }
        match stream.read(&mut [0; 1024]) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            _ => return true,
        }
        std::thread::sleep(gap);
    }
    false
}

/// Writes into a clone of `stream` on its own thread, until told to stop or the
/// server closes the connection; returns how many bytes went out.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Writer {
    /// Writes `head`, then `piece` over and over, `gap` apart, at most `limit` bytes of it.
    fn start(stream: &TcpStream, head: Vec<u8>, piece: Vec<u8>, gap: Duration, limit: u64) -> Self {
        let mut out = stream.try_clone().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut sent = 0;
            if out.write_all(&head).is_err() {
                return sent;
            }
            while sent < limit && !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                if out.write_all(&piece).is_err() {
                    break;
                }
                sent += piece.len() as u64;
                std::thread::sleep(gap);
            }
            sent
        });
        Self { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

fn committed(dir: &Path) -> Vec<Vec<u8>> {
    dir_commits(&dir.join("out")).into_iter().map(|(_, _, bytes)| bytes).collect()
}

#[test]
fn slowloris_headers_are_cut_off_and_others_are_served_meanwhile() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &["--header-timeout", "1s", "--max-connections", "8"]);
    // Six connections trickle a header that never ends, and one says nothing at all.
    let slow: Vec<_> = (0..6)
        .map(|_| {
            let addr = sidecar.addr.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(&addr).unwrap();
                stream.write_all(b"POST /messages HTTP/1.1\r\nHost: x\r\n").unwrap();
                trickle_until_closed(&mut stream, b"X-Slow: still coming\r\n", Duration::from_millis(50))
            })
        })
        .collect();
    let mut silent = TcpStream::connect(&sidecar.addr).unwrap();
    // The one slot left serves an ordinary client while they hold theirs.
    let served = client::post(&sidecar.addr, "/messages?wait=commit", "text/plain", b"not starved");
    assert_eq!(served.status, 200, "{}", served.text());
    for slow in slow {
        assert!(slow.join().unwrap(), "the server never closed a slowloris connection");
    }
    silent.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(silent.read(&mut [0; 16]).unwrap(), 0, "a silent connection is closed too");
    assert_eq!(committed(tmp.path()), vec![b"not starved".to_vec()]);
}

/// Between requests, an HTTP/1.1 connection is held to --header-timeout as well,
/// counted from its last answer; a request that takes longer to answer is not cut.
#[test]
fn keep_alive_connections_are_closed_once_idle_for_the_header_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &["--header-timeout", "1s", "--max-batch-age", "2s"]);
    let waited = client::time_until_closed(&sidecar.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(waited >= Duration::from_millis(900), "closed after {waited:?}, before --header-timeout");
    let slow = client::post(&sidecar.addr, "/messages?wait=commit", "text/plain", b"two seconds");
    assert_eq!(slow.status, 200, "{}", slow.text());
}

#[test]
fn a_trickling_body_gets_408_once_body_timeout_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &["--body-timeout", "1s", "--max-batch-age", "10ms"]);
    let stream = TcpStream::connect(&sidecar.addr).unwrap();
    // A byte every 20 ms: never idle for long, yet the whole body would take half an hour.
    let head = b"POST /messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".to_vec();
    let writer = Writer::start(&stream, head, b"b".to_vec(), Duration::from_millis(20), 100_000);
    let answer = Connection::over_tcp(stream).unwrap().read_response();
    writer.stop();
    assert_eq!(answer.status, 408, "{}", answer.text());
    assert_eq!(answer.json()["error"], "timeout");
    let ok = client::post(&sidecar.addr, "/messages?wait=commit", "text/plain", b"next");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(committed(tmp.path()), vec![b"next".to_vec()], "nothing of the timed-out body was enqueued");
}

const GIB: u64 = 1 << 30;
const MIB: usize = 1 << 20;

/// Streams a "10 GiB" body after `head`, in 1 MiB `pieces`, and reads the answer
/// while it does; returns the answer and how much of the body went out.
fn stream_huge_body(sidecar: &Sidecar, head: String, piece: Vec<u8>) -> (client::Response, u64) {
    let stream = TcpStream::connect(&sidecar.addr).unwrap();
    let writer = Writer::start(&stream, head.into_bytes(), piece, Duration::ZERO, 10 * GIB);
    let answer = Connection::over_tcp(stream).unwrap().read_response();
    (answer, writer.stop())
}

#[test]
fn a_10_gib_body_is_refused_with_413_without_being_buffered() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &["--max-request-bytes", "4MiB"]);
    let before = sidecar.peak_rss_kib();

    // Declared: refused from the headers, before a byte of the body is read.
    let head = format!("POST /messages HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", 10 * GIB);
    let (answer, sent) = stream_huge_body(&sidecar, head, vec![b'd'; MIB]);
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert_eq!(answer.json()["error"], "too_large");
    assert_eq!(answer.header("Connection"), Some("close"), "the client learns the connection ends");
    eprintln!("declared 10 GiB: 413 after {} MiB sent", sent >> 20);

    // Chunked, with no length to go by: refused once past the limit, while streaming.
    let head = "POST /messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned();
    let chunk = [format!("{MIB:x}\r\n").into_bytes(), vec![b'c'; MIB], b"\r\n".to_vec()].concat();
    let (answer, sent) = stream_huge_body(&sidecar, head, chunk);
    assert_eq!(answer.status, 413, "{}", answer.text());
    eprintln!("chunked 10 GiB: 413 after {} MiB sent", sent >> 20);

    // What is read of a body within the limit is held until the request is whole,
    // so the peak may grow by the limit (4 MiB), never by what was sent.
    let grown = sidecar.peak_rss_kib().saturating_sub(before);
    eprintln!("peak RSS {before} KiB before, grew by {grown} KiB");
    assert!(grown < 32 << 10, "peak RSS grew by {grown} KiB: the body was buffered");
    let ok = client::post(&sidecar.addr, "/messages?wait=commit", "text/plain", b"still serving");
    assert_eq!(ok.status, 200, "{}", ok.text());
}

#[test]
fn a_megabyte_of_headers_gets_431_and_the_connection_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &[]);
    let stream = TcpStream::connect(&sidecar.addr).unwrap();
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    let writer = Writer::start(&stream, head, vec![b'a'; 64 << 10], Duration::ZERO, 1 << 20);
    let answer = Connection::over_tcp(stream).unwrap().read_response();
    writer.stop();
    assert_eq!(answer.status, 431);
    assert_eq!(client::get(&sidecar.addr, "/healthz").status, 200);
}

#[test]
fn max_connections_leaves_further_clients_waiting_until_a_slot_frees() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &["--max-connections", "3"]);
    let mut held: Vec<Connection> = (0..3).map(|_| Connection::tcp(&sidecar.addr)).collect();
    for conn in &mut held {
        assert_eq!(conn.request("GET", "/healthz", &[], b"").status, 200);
    }
    // The kernel's backlog takes the fourth connection; the sidecar does not serve it.
    let mut fourth = TcpStream::connect(&sidecar.addr).unwrap();
    fourth.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    fourth.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let early = fourth.read(&mut [0; 64]);
    assert!(
        early.as_ref().is_err_and(|e| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "served a fourth connection at once: {early:?}"
    );
    drop(held.pop());
    let answer = Connection::over_tcp(fourth).unwrap().read_response();
    assert_eq!(answer.status, 200, "{}", answer.text());
}

/// More clients than the kernel's default listen backlog (128), all arriving while
/// the one --max-connections slot is taken: each is queued by the kernel, none has its
/// SYN (TCP) or its connect (Unix) refused, which would cost a TCP client a second
/// or more before it tries again.
#[test]
fn a_burst_of_clients_past_the_default_backlog_is_queued_not_dropped() {
    const BURST: usize = 400;
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("http.sock");
    let sidecar = start(tmp.path(), &["--max-connections", "1", "--socket", socket.to_str().unwrap()]);
    let mut held = Connection::tcp(&sidecar.addr);
    assert_eq!(held.request("GET", "/healthz", &[], b"").status, 200);
    let mut held_unix = Connection::unix(&socket);
    assert_eq!(held_unix.request("GET", "/healthz", &[], b"").status, 200);

    let addr: std::net::SocketAddr = sidecar.addr.parse().unwrap();
    let tcp: Vec<socket2::Socket> = (0..BURST)
        .map(|_| {
            let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            client.set_nonblocking(true).unwrap();
            match client.connect(&addr.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => panic!("connecting: {e}"),
            }
            client
        })
        .collect();
    // On loopback a queued handshake completes at once; a dropped SYN stays unanswered
    // for as long as the queue stays full.
    crate::support::sidecar::eventually(Duration::from_secs(10), "every TCP handshake to complete", || {
        tcp.iter().all(|client| client.peer_addr().is_ok()).then_some(())
    });

    let refused: Vec<std::io::Error> = (0..BURST)
        .filter_map(|_| {
            let client = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
            client.set_nonblocking(true).unwrap();
            client.connect(&socket2::SockAddr::unix(&socket).unwrap()).err()
        })
        .collect();
    assert!(refused.is_empty(), "{} of {BURST} Unix connects refused, the first: {}", refused.len(), refused[0]);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &["--max-batch-age", "1h"]);
    let request = |line: &str, headers: &str, body: &[u8]| {
        let head = format!("{line} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\n\r\n", body.len());
        [head.as_bytes(), body].concat()
    };
    let frames = "Content-Type: application/vnd.spout.frames\r\n";
    let all = [
        request("POST /messages?file=one.txt", "", b"1"),
        request("GET /healthz", "", b""),
        request("POST /messages", frames, &[0, 0, 0, 9, b'x']),
        request("POST /messages?file=two.txt", "", b"2"),
        request("POST /flush?wait=commit", "", b""),
        request("GET /status", "", b""),
    ]
    .concat();
    let mut conn = Connection::tcp(&sidecar.addr);
    // All six in one write: the sidecar reads them back to back from one buffer.
    conn.write_raw(&all).unwrap();
    let answers: Vec<client::Response> = (0..6).map(|_| conn.read_response()).collect();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [202, 200, 400, 202, 200, 200]);
    assert_eq!(answers[1].json()["status"], "ok");
    assert_eq!(answers[2].json()["error"], "bad_framing");
    let (one, two) = (answers[0].json()["first_seq"].as_u64(), answers[3].json()["first_seq"].as_u64());
    assert!(one < two, "sequence numbers in request order: {one:?} {two:?}");
    let commit = answers[4].json()["commit"].as_str().unwrap().to_owned();
    assert_eq!(answers[5].json()["open_batch"]["messages"], 0, "the flush came before the status");
    let files = dir_commits(&tmp.path().join("out"));
    let expected = [("one.txt", b"1"), ("two.txt", b"2")].map(|(n, b)| (commit.clone(), n.to_owned(), b.to_vec()));
    assert_eq!(files, expected);
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection_and_close_ends_it() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &["--max-batch-age", "10ms"]);
    let mut conn = Connection::tcp(&sidecar.addr);
    for i in 0..300 {
        let answer = conn.request("POST", "/messages", &[], format!("{i}").as_bytes());
        assert_eq!(answer.status, 202, "request {i} on the same connection: {}", answer.text());
    }
    // `Connection: close` is answered, then the connection ends.
    let last = conn.request("POST", "/flush?wait=commit", &[("Connection", "close")], b"");
    assert_eq!(last.status, 200, "{}", last.text());
    assert!(conn.try_read_response().is_err(), "the connection is closed after `Connection: close`");
    // HTTP/1.0 without keep-alive: one answer, then the end.
    let mut old = Connection::tcp(&sidecar.addr);
    let answer = old.raw(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(answer.status, 200);
    assert!(old.try_read_response().is_err(), "an HTTP/1.0 connection is closed after its answer");
    assert_eq!(dir_commits(&tmp.path().join("out")).len(), 300);
}
