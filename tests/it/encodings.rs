//! `Content-Encoding` and framing by name against the real binary: every coding with
//! every framing commits exactly the decoded messages; zip bombs of each coding stop
//! at the limit with 413 while the sidecar's peak memory barely moves; corrupt streams
//! are 400 `bad_encoding` and leave nothing behind; unknown codings are 415; JSON-array
//! bodies keep each element's text as sent.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;

use crate::support::client::{self, Connection, Response};
use crate::support::sidecar::{dir_commits, Sidecar};

fn start(dir: &Path, extra: &[&str]) -> Sidecar {
    let sink = format!("dir:{}", dir.join("out").display());
    Sidecar::start(&[&["--sink", sink.as_str(), "--max-batch-age", "10ms"][..], extra].concat())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Identity,
    Gzip,
    Deflate,
    Zstd,
}

const CODINGS: [Coding; 4] = [Coding::Identity, Coding::Gzip, Coding::Deflate, Coding::Zstd];
const COMPRESSED: [Coding; 3] = [Coding::Gzip, Coding::Deflate, Coding::Zstd];

impl Coding {
    fn header(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Zstd => "zstd",
        }
    }

    /// A streaming encoder into `out`, as senders use: zlib for `deflate` (RFC 9110), and
    /// zstd with its checksum on, as the zstd tool writes it.
    fn encoder<W: Write + Send + 'static>(self, out: W) -> Box<dyn Write + Send> {
        match self {
            Coding::Identity => Box::new(out),
            Coding::Gzip => Box::new(flate2::write::GzEncoder::new(out, flate2::Compression::fast())),
            Coding::Deflate => Box::new(flate2::write::ZlibEncoder::new(out, flate2::Compression::fast())),
            Coding::Zstd => {
                let mut encoder = zstd::Encoder::new(out, 3).unwrap();
                encoder.include_checksum(true).unwrap();
                Box::new(encoder.auto_finish())
            }
        }
    }

    fn encode(self, plain: &[u8]) -> Vec<u8> {
        let coded = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        {
            let mut encoder = self.encoder(Shared(coded.clone()));
            encoder.write_all(plain).unwrap();
        }
        let coded = coded.lock().unwrap().clone();
        coded
    }
}

/// A `Vec` the boxed encoder writes into and the test reads once the encoder is dropped
/// (dropping finishes every one of them).
struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One framing's body and the messages it holds.
struct Framed {
    name: &'static str,
    content_type: String,
    body: Vec<u8>,
    messages: Vec<Vec<u8>>,
}

const BOUNDARY: &str = "spout-7f3a";

/// The same JSON messages in every framing; `raw` holds the first one alone.
fn framings() -> Vec<Framed> {
    let messages: Vec<&str> = vec![r#"{"n": 1, "s": "a ] b, \"c\""}"#, "[1, [2, {\"x\": []}]]", "\"Grüße, 世界 😀\""];
    let bytes: Vec<Vec<u8>> = messages.iter().map(|m| m.as_bytes().to_vec()).collect();
    let frames: Vec<u8> = bytes.iter().flat_map(|m| [&(m.len() as u32).to_be_bytes()[..], m].concat()).collect();
    let multipart: Vec<u8> = bytes
        .iter()
        .enumerate()
        .flat_map(|(i, m)| {
            [format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"m{i}\"\r\n\r\n").as_bytes(), m, b"\r\n"]
                .concat()
        })
        .chain(format!("--{BOUNDARY}--\r\n").into_bytes())
        .collect();
    // A Content-Type that says nothing of the framing: the name alone chooses it.
    let opaque = "text/plain".to_owned();
    vec![
        Framed { name: "raw", content_type: opaque.clone(), body: bytes[0].clone(), messages: vec![bytes[0].clone()] },
        Framed {
            name: "ndjson",
            content_type: opaque.clone(),
            body: (messages.join("\n") + "\n").into_bytes(),
            messages: bytes.clone(),
        },
        Framed { name: "frames", content_type: opaque.clone(), body: frames, messages: bytes.clone() },
        Framed {
            name: "multipart",
            content_type: format!("multipart/form-data; boundary={BOUNDARY}"),
            body: multipart,
            messages: bytes.clone(),
        },
        Framed {
            name: "json-array",
            content_type: "application/json".into(),
            body: format!("[{}]", messages.join(",\n  ")).into_bytes(),
            messages: bytes,
        },
    ]
}

/// The files of `commit`, in the order of their names (default names follow sequence numbers).
fn committed(dir: &Path, commit: &str) -> Vec<Vec<u8>> {
    dir_commits(&dir.join("out")).into_iter().filter(|(id, _, _)| id == commit).map(|(_, _, bytes)| bytes).collect()
}

fn all_committed(dir: &Path) -> Vec<Vec<u8>> {
    dir_commits(&dir.join("out")).into_iter().map(|(_, _, bytes)| bytes).collect()
}

fn post_coded(addr: &str, target: &str, content_type: &str, coding: Coding, body: &[u8]) -> Response {
    let headers = [("Content-Type", content_type), ("Content-Encoding", coding.header())];
    client::request(addr, "POST", target, &headers, body)
}

#[test]
fn every_coding_with_every_framing_commits_the_decoded_messages_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &[]);
    for coding in CODINGS {
        for framed in framings() {
            let coded = coding.encode(&framed.body);
            let target = format!("/messages?wait=commit&framing={}", framed.name);
            let answer = post_coded(&sidecar.addr, &target, &framed.content_type, coding, &coded);
            assert_eq!(answer.status, 200, "{coding:?} {}: {}", framed.name, answer.text());
            let answer = answer.json();
            assert_eq!(answer["accepted"], framed.messages.len(), "{coding:?} {}", framed.name);
            let commit = answer["commit"].as_str().unwrap();
            assert_eq!(committed(tmp.path(), commit), framed.messages, "{coding:?} {}", framed.name);
        }
    }
}

#[test]
fn framing_by_header_and_the_query_winning_over_it() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &[]);
    let by_header =
        client::request(&sidecar.addr, "POST", "/messages?wait=commit", &[("Spout-Framing", "ndjson")], b"one\ntwo\n");
    assert_eq!(by_header.json()["accepted"], 2, "{}", by_header.text());
    let query_wins = client::request(
        &sidecar.addr,
        "POST",
        "/messages?wait=commit&framing=raw",
        &[("Spout-Framing", "ndjson"), ("Content-Type", "application/x-ndjson")],
        b"three\nfour\n",
    );
    assert_eq!(query_wins.json()["accepted"], 1, "{}", query_wins.text());
    let unknown = client::request(&sidecar.addr, "POST", "/messages?framing=lines", &[], b"x");
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.json()["error"], "bad_request");
    let no_boundary = client::request(&sidecar.addr, "POST", "/messages?framing=multipart", &[], b"x");
    assert_eq!(no_boundary.status, 400);
    assert_eq!(no_boundary.json()["error"], "bad_framing");
    let mut all = all_committed(tmp.path());
    all.sort();
    assert_eq!(all, [&b"one"[..], b"three\nfour\n", b"two"]);
}

/// Writes each `write` as one chunk of a chunked HTTP/1.1 body.
struct Chunked(TcpStream);

impl Write for Chunked {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !buf.is_empty() {
            self.0.write_all(&[format!("{:x}\r\n", buf.len()).as_bytes(), buf, b"\r\n"].concat())?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

const GIB: u64 = 1 << 30;

/// Sends a body that decodes to 10 GiB of zeros, compressing it on the fly until the
/// server stops reading; returns the answer and how many decoded bytes went in.
fn send_bomb(addr: &str, coding: Coding, framing: &str) -> (Response, u64) {
    let stream = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /messages?framing={framing} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
         Content-Encoding: {}\r\n\r\n",
        coding.header()
    );
    let mut out = stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        out.write_all(head.as_bytes()).unwrap();
        let mut encoder = coding.encoder(Chunked(out));
        let zeros = vec![0u8; 1 << 20];
        let mut sent = 0u64;
        while sent < 10 * GIB && encoder.write_all(&zeros).is_ok() {
            sent += zeros.len() as u64;
        }
        // Dropping the encoder tries to finish into the closed connection, and fails quietly.
        drop(encoder);
        sent
    });
    let answer = Connection::over_tcp(stream).unwrap().read_response();
    (answer, writer.join().unwrap())
}

#[test]
fn zip_bombs_of_every_coding_are_413_and_cost_a_few_mib() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &["--max-request-bytes", "1MiB", "--max-message-bytes", "512KiB"]);
    // A compressed request first, so that what any first request sets up is in the baseline.
    let warm_up = post_coded(
        &sidecar.addr,
        "/messages?wait=commit",
        "text/plain",
        Coding::Zstd,
        &Coding::Zstd.encode(b"warm-up"),
    );
    assert_eq!(warm_up.status, 200, "{}", warm_up.text());
    let before = sidecar.peak_rss_kib();
    for coding in COMPRESSED {
        for framing in ["raw", "ndjson"] {
            let (answer, sent) = send_bomb(&sidecar.addr, coding, framing);
            assert_eq!(answer.status, 413, "{coding:?} {framing}: {}", answer.text());
            assert_eq!(answer.json()["error"], "too_large");
            assert!(sent < GIB, "{coding:?} {framing}: the sidecar read on until {sent} bytes had been compressed");
            eprintln!("{coding:?} {framing}: 413 ({}) after {} MiB decoded were sent", answer.text(), sent >> 20);
        }
    }
    let grown = sidecar.peak_rss_kib().saturating_sub(before);
    eprintln!("peak RSS {before} KiB before the bombs, grew by {grown} KiB");
    assert!(grown < 8 << 10, "peak RSS grew by {grown} KiB: a bomb was decoded past the limit");
    let ok = client::post(&sidecar.addr, "/messages?wait=commit", "text/plain", b"still serving");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(all_committed(tmp.path()), [&b"warm-up"[..], b"still serving"]);
}

#[test]
fn corrupt_streams_are_400_bad_encoding_and_nothing_is_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &[]);
    let plain = b"{\"n\": 1}\n".repeat(2000);
    for coding in COMPRESSED {
        let coded = coding.encode(&plain);
        let mut flipped = coded.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0xff;
        let cases: [(&str, Vec<u8>); 4] = [
            ("truncated", coded[..coded.len() - 4].to_vec()),
            ("flipped", flipped),
            ("not compressed", plain.clone()),
            ("trailing bytes", [&coded[..], b"{\"n\": 2}\n"].concat()),
        ];
        for (what, body) in cases {
            let answer = post_coded(&sidecar.addr, "/messages?wait=commit", "application/x-ndjson", coding, &body);
            assert_eq!(answer.status, 400, "{coding:?} {what}: {}", answer.text());
            assert_eq!(answer.json()["error"], "bad_encoding", "{coding:?} {what}");
            eprintln!("{coding:?} {what}: {}", answer.json()["message"]);
        }
    }
    assert_eq!(sidecar.metric("spout_messages_rejected_total{reason=\"bad_encoding\"}"), 12);
    let ok = client::post(&sidecar.addr, "/messages?wait=commit", "text/plain", b"control");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(all_committed(tmp.path()), [b"control"], "nothing of a corrupt body was kept");
}

#[test]
fn unknown_or_stacked_codings_are_415_naming_the_supported_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &[]);
    for coding in ["br", "snappy", "gzip, zstd", "compress"] {
        let answer = client::request(&sidecar.addr, "POST", "/messages", &[("Content-Encoding", coding)], b"x");
        assert_eq!(answer.status, 415, "{coding}: {}", answer.text());
        assert_eq!(answer.json()["error"], "unsupported_encoding");
        assert_eq!(answer.header("Accept-Encoding"), Some("gzip, deflate, zstd, identity"));
    }
    assert_eq!(sidecar.metric("spout_messages_rejected_total{reason=\"unsupported_encoding\"}"), 4);
    assert!(all_committed(tmp.path()).is_empty());
}

/// A JSON value for element `i`, every few of them built to trip a careless splitter:
/// nesting, strings holding brackets, commas and escaped quotes, unicode and escapes.
fn tricky_element(i: usize) -> String {
    match i % 5 {
        0 => format!(r#"{{"i": {i}, "nested": [[{i}], {{"a": [[], {{}}]}}]}}"#),
        1 => format!(r#""string {i} holding ] and }} and , and \"quotes\" and \\""#),
        2 => format!(r#"{{"msg": "unicode {i}: Grüße 世界 😀 \u00e9 \ud83d\ude00", "ok": true}}"#),
        3 => format!("[{i}, -1.5e-3, null, false, \"]]]\"]"),
        _ => format!("{i}"),
    }
}

#[test]
fn a_json_array_of_10000_tricky_elements_commits_each_element_as_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &[]);
    let elements: Vec<String> = (0..10_000).map(tricky_element).collect();
    let body = format!("[\n  {}\n]\n", elements.join(",\n  "));
    for coding in [Coding::Identity, Coding::Gzip] {
        let headers = [
            ("Content-Type", "application/json"),
            ("Content-Encoding", coding.header()),
            ("Spout-File", "events.ndjson"),
        ];
        let coded = coding.encode(body.as_bytes());
        let answer =
            client::request(&sidecar.addr, "POST", "/messages?wait=commit&framing=json-array", &headers, &coded);
        assert_eq!(answer.status, 200, "{coding:?}: {}", answer.text());
        assert_eq!(answer.json()["accepted"], 10_000);
        // Appended to one file, elements become NDJSON, each exactly as sent.
        let file = committed(tmp.path(), answer.json()["commit"].as_str().unwrap());
        assert_eq!(String::from_utf8(file.concat()).unwrap(), elements.join("\n") + "\n", "{coding:?}");
    }
    // In files of their own, elements are stored without a line end.
    let answer = client::request(
        &sidecar.addr,
        "POST",
        "/messages?wait=commit",
        &[("Spout-Framing", "json-array")],
        format!("[{}]", elements[..5].join(",")).as_bytes(),
    );
    let commit = answer.json()["commit"].as_str().unwrap().to_owned();
    let files: Vec<String> =
        committed(tmp.path(), &commit).into_iter().map(|f| String::from_utf8(f).unwrap()).collect();
    assert_eq!(files, elements[..5]);
}

#[test]
fn a_malformed_json_array_is_400_with_the_byte_offset_and_nothing_is_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &[]);
    let elements: Vec<String> = (0..1000).map(tricky_element).collect();
    let good = format!("[{}]", elements.join(","));
    let cases = [
        (
            "cut short",
            good[..good.len() - 1].to_owned(),
            "malformed at byte {}: the body ends inside the array",
            good.len() - 1,
        ),
        (
            "trailing comma",
            format!("[{},]", elements.join(",")),
            "malformed at byte {}: a comma before `]`",
            good.len(),
        ),
        ("two values", format!("{good} []"), "malformed at byte {}: `[` after the array's closing `]`", good.len() + 1),
        ("not an array", elements[0].clone(), "malformed at byte {}: expected `[`", 0),
        (
            "a bad element",
            format!("[{},{{\"a\": nul}}]", elements.join(",")),
            "element 1001 (starting at byte {}) is not valid JSON",
            good.len(),
        ),
    ];
    for (what, body, expected, offset) in cases {
        let answer = client::request(
            &sidecar.addr,
            "POST",
            "/messages?wait=commit&framing=json-array",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(answer.status, 400, "{what}: {}", answer.text());
        assert_eq!(answer.json()["error"], "bad_framing");
        let message = answer.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains(&expected.replace("{}", &offset.to_string())), "{what}: {message}");
    }
    assert!(all_committed(tmp.path()).is_empty(), "nothing of a malformed array was kept");
}
