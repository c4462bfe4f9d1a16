//! HTTP/2 on the TCP port, as `curl --http2-prior-knowledge` speaks it (h2c, no
//! upgrade): every route answers as over HTTP/1.1, and the limits hold per stream,
//! so a refused stream leaves the others on its connection alone.

use std::convert::Infallible;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::client;
use crate::support::curl::{self, Transfer};
use crate::support::sidecar::{dir_payloads, Sidecar};

fn start(dir: &Path, extra: &[&str]) -> Sidecar {
    let sink = format!("dir:{}", dir.join("out").display());
    let mut args = vec!["--sink", &sink, "--max-batch-age", "50ms"];
    args.extend_from_slice(extra);
    Sidecar::start(&args)
}

fn h2(sidecar: &Sidecar, method: &str, path: &str, extra: &[&str]) -> Transfer {
    let url = format!("http://{}{path}", sidecar.addr);
    let mut args = vec!["--http2-prior-knowledge", "-X", method, &url];
    args.extend_from_slice(extra);
    let transfer = curl::one(&args);
    assert_eq!(transfer.version, "2", "{method} {path} over HTTP/2: {transfer:?}");
    transfer
}

#[test]
fn every_route_answers_over_h2c_with_prior_knowledge() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &[]);
    let frames = tmp.path().join("frames");
    let mut framed = Vec::new();
    for message in [&b"frame one"[..], b"frame\0two"] {
        framed.extend((message.len() as u32).to_be_bytes());
        framed.extend(message);
    }
    std::fs::write(&frames, framed).unwrap();
    let frames_body = format!("@{}", frames.display());

    let posts: [(&str, &[&str]); 4] = [
        ("raw", &["-H", "Content-Type: text/plain", "--data-binary", "a whole body"]),
        ("ndjson", &["-H", "Content-Type: application/x-ndjson", "--data-binary", "{\"n\":1}\n{\"n\":2}\n"]),
        ("frames", &["-H", "Content-Type: application/vnd.spout.frames", "--data-binary", &frames_body]),
        ("multipart", &["-F", "first=part one", "-F", "second=part two"]),
    ];
    let mut accepted = 0;
    for (framing, args) in posts {
        let answer = h2(&sidecar, "POST", "/messages", args);
        assert_eq!(answer.status, 202, "{framing}: {}", answer.body);
        accepted += serde_json::from_str::<serde_json::Value>(&answer.body).unwrap()["accepted"].as_u64().unwrap();
    }
    assert_eq!(accepted, 7, "1 + 2 + 2 + 2 messages");
    let waited = h2(&sidecar, "POST", "/messages?wait=commit", &["--data-binary", "waited for"]);
    assert_eq!(waited.status, 200, "{}", waited.body);
    let waited: serde_json::Value = serde_json::from_str(&waited.body).unwrap();
    assert!(waited["commit"].is_string(), "{waited}");
    let flushed = h2(&sidecar, "POST", "/flush?wait=commit", &[]);
    assert_eq!(flushed.status, 200, "{}", flushed.body);

    for (path, status, says) in [
        ("/healthz", 200, "\"status\""),
        ("/readyz", 200, "\"status\""),
        ("/status", 200, "\"sink\""),
        ("/metrics", 200, "spout_requests_total{code=\"202\"} 4"),
        ("/no-such-route", 404, "not_found"),
    ] {
        let answer = h2(&sidecar, "GET", path, &[]);
        assert_eq!(answer.status, status, "GET {path}: {}", answer.body);
        assert!(answer.body.contains(says), "GET {path} says {says}: {}", answer.body);
    }
    let head = h2(&sidecar, "HEAD", "/healthz", &["--head"]);
    assert_eq!(head.status, 200);
    let wrong_method = h2(&sidecar, "GET", "/messages", &[]);
    assert_eq!(wrong_method.status, 405, "{}", wrong_method.body);

    let mut expected: Vec<Vec<u8>> = [
        &b"a whole body"[..],
        b"{\"n\":1}",
        b"{\"n\":2}",
        b"frame one",
        b"frame\0two",
        b"part one",
        b"part two",
        b"waited for",
    ]
    .map(<[u8]>::to_vec)
    .into();
    expected.sort();
    assert_eq!(dir_payloads(&tmp.path().join("out")), expected, "every accepted message, byte for byte");
}

/// Streams of one h2c connection, side by side, each refused or accepted on its own:
/// a body over --max-request-bytes (413) and one slower than --body-timeout (408)
/// beside small ones that go through, and the connection still serves afterwards.
#[test]
fn a_refused_stream_leaves_the_other_streams_of_its_connection_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &["--max-request-bytes", "1KiB", "--body-timeout", "1s"]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let small: Vec<String> = (0..4).map(|n| format!("small {n}")).collect();
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&sidecar.addr).await.unwrap();
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2c");
        tokio::spawn(connection);
        let post = |body: BoxBody<Bytes, Infallible>| {
            let request = Request::post(format!("http://{}/messages", sidecar.addr)).body(body).unwrap();
            let mut sender = sender.clone();
            async move {
                let response = sender.send_request(request).await.expect("an answer on the stream");
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        // 100 bytes, then nothing for 3 s: past the 1 s --body-timeout.
        let trickle = futures_util::stream::unfold(0, |sent| async move {
            match sent {
                0 => Some((Ok(Frame::data(Bytes::from(vec![b's'; 100]))), 1)),
                _ => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    None
                }
            }
        });
        let mut streams = vec![
            post(Full::new(Bytes::from(vec![b'x'; 4096])).boxed()),
            post(BodyExt::boxed(StreamBody::new(trickle))),
        ];
        streams.extend(small.iter().map(|body| post(Full::new(Bytes::from(body.clone())).boxed())));
        let answers = futures_util::future::join_all(streams).await;
        assert_eq!(answers[0].0, 413, "{:?}", answers[0]);
        assert!(answers[0].1.contains("too_large"), "{:?}", answers[0]);
        assert_eq!(answers[1].0, 408, "{:?}", answers[1]);
        for answer in &answers[2..] {
            assert_eq!(answer.0, 202, "{answer:?}");
        }
        let after = post(Full::new(Bytes::from_static(b"after")).boxed()).await;
        assert_eq!(after.0, 202, "the connection still serves: {after:?}");
    });
    let flush_url = format!("http://{}/flush?wait=commit", sidecar.addr);
    let flushed = curl::one(&["--http2-prior-knowledge", "-X", "POST", &flush_url]);
    assert_eq!(flushed.status, 200, "{}", flushed.body);
    let mut expected: Vec<Vec<u8>> = small.iter().map(|s| s.as_bytes().to_vec()).collect();
    expected.push(b"after".to_vec());
    expected.sort();
    assert_eq!(
        dir_payloads(&tmp.path().join("out")),
        expected,
        "the small streams' messages and nothing of the refused ones"
    );
}

/// A connection that sends no request within --header-timeout is closed, whatever it
/// does meanwhile: nothing, or the HTTP/2 preface and settings without a stream.
#[test]
fn a_connection_without_a_request_is_closed_after_the_header_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &["--header-timeout", "1s"]);
    // The client preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    let preface = [&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], &[0, 0, 0, 4, 0, 0, 0, 0, 0]].concat();
    for (what, opening) in [("a silent client", &[][..]), ("an h2c connection without a stream", &preface)] {
        let waited = client::time_until_closed(&sidecar.addr, opening);
        assert!(waited >= Duration::from_millis(900), "{what}: closed after {waited:?}, before --header-timeout");
    }
    let answer = curl::one(&["--http2-prior-knowledge", &format!("http://{}/healthz", sidecar.addr)]);
    assert_eq!(answer.status, 200, "the sidecar serves on: {answer:?}");
}
