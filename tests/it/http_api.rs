//! The HTTP API end to end: the real binary, real sockets, a `dir:` sink read back.

use std::path::Path;
use std::time::Duration;

use crate::support::client::{self, Connection};
use crate::support::sidecar::{dir_commits, eventually, Sidecar};

fn start(dir: &Path, extra: &[&str]) -> Sidecar {
    let sink = format!("dir:{}", dir.join("out").display());
    let mut args = vec!["--sink", &sink];
    args.extend_from_slice(extra);
    Sidecar::start(&args)
}

fn contents(dir: &Path) -> Vec<Vec<u8>> {
    dir_commits(&dir.join("out")).into_iter().map(|(_, _, bytes)| bytes).collect()
}

fn frames(messages: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for m in messages {
        body.extend_from_slice(&(m.len() as u32).to_be_bytes());
        body.extend_from_slice(m);
    }
    body
}

#[test]
fn raw_body_is_one_message_and_wait_commit_names_its_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &[]);
    let response = client::request(
        &sidecar.addr,
        "POST",
        "/messages?wait=commit",
        &[("Content-Type", "application/octet-stream"), ("Spout-File", "logs/a.bin")],
        b"hello\nworld",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let answer = response.json();
    assert_eq!(answer["accepted"], 1);
    assert_eq!(answer["files"], serde_json::json!(["logs/a.bin"]));
    let commit = answer["commit"].as_str().unwrap().to_owned();
    let files = dir_commits(&tmp.path().join("out"));
    assert_eq!(files, vec![(commit, "logs/a.bin".to_string(), b"hello\nworld".to_vec())]);
}

#[test]
fn each_framing_cuts_messages_as_documented() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &[]);
    let ndjson =
        client::post(&sidecar.addr, "/messages?wait=commit", "application/x-ndjson", b"{\"a\":1}\n{\"b\":2}\nlast");
    assert_eq!(ndjson.status, 200, "{}", ndjson.text());
    assert_eq!(ndjson.json()["accepted"], 3);
    let body = frames(&[b"one", b"", b"three\n"]);
    let framed = client::post(&sidecar.addr, "/messages?wait=commit", "application/vnd.spout.frames", &body);
    assert_eq!(framed.json()["accepted"], 3, "{}", framed.text());
    let multipart = b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"part-one.txt\"\r\n\r\nfirst part\r\n--XyZ\r\nContent-Disposition: form-data; name=\"g\"; filename=\"dir/part-two.txt\"\r\n\r\nsecond\r\n--XyZ--\r\n";
    let parts = client::post(&sidecar.addr, "/messages?wait=commit", "multipart/form-data; boundary=XyZ", multipart);
    assert_eq!(parts.status, 200, "{}", parts.text());
    assert_eq!(parts.json()["files"], serde_json::json!(["part-one.txt", "dir/part-two.txt"]));
    let files = dir_commits(&tmp.path().join("out"));
    let got: Vec<(&str, &[u8])> = files.iter().map(|(_, n, b)| (n.as_str(), b.as_slice())).collect();
    // Default names sort in arrival order, so the message files come out as sent.
    let defaults: Vec<&[u8]> = got.iter().filter(|(n, _)| n.starts_with("msg-")).map(|(_, b)| *b).collect();
    assert_eq!(defaults, vec![&b"{\"a\":1}"[..], b"{\"b\":2}", b"last", b"one", b"", b"three\n"]);
    assert!(got.contains(&("part-one.txt", b"first part")));
    assert!(got.contains(&("dir/part-two.txt", b"second")));
}

#[test]
fn batch_layout_joins_lines_into_one_file() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &["--layout", "batch"]);
    let response = client::post(&sidecar.addr, "/messages?wait=commit", "application/x-ndjson", b"a\nb\nc");
    assert_eq!(response.status, 200, "{}", response.text());
    let files = dir_commits(&tmp.path().join("out"));
    assert_eq!(files.len(), 1);
    assert_eq!(response.json()["files"], serde_json::json!([files[0].1]));
    assert_eq!(files[0].2, b"a\nb\nc\n");
}

#[test]
fn count_bytes_age_and_flush_each_seal_a_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar =
        start(tmp.path(), &["--max-batch-messages", "3", "--max-batch-bytes", "100", "--max-batch-age", "1h"]);
    let mut conn = Connection::tcp(&sidecar.addr);
    for i in 0..7 {
        let r = conn.request("POST", "/messages", &[], format!("m{i}").as_bytes());
        assert_eq!(r.status, 202);
    }
    let status = eventually(Duration::from_secs(10), "two count-sealed commits", || {
        let files = dir_commits(&tmp.path().join("out"));
        (files.len() == 6).then_some(files)
    });
    let commits: std::collections::BTreeSet<_> = status.iter().map(|(c, _, _)| c.clone()).collect();
    assert_eq!(commits.len(), 2, "3 + 3 messages, one still open");
    // Bytes: one 150-byte message is past the 100-byte limit on its own.
    conn.request("POST", "/messages", &[], &[b'x'; 150]);
    let flushed = conn.request("POST", "/flush?wait=commit", &[], b"");
    assert_eq!(flushed.status, 200, "{}", flushed.text());
    let metrics = client::get(&sidecar.addr, "/metrics").text();
    for reason in ["messages", "bytes"] {
        assert!(
            metrics.contains(&format!("spout_batches_committed_total{{reason=\"{reason}\"}}")),
            "{reason}: {metrics}"
        );
    }
    assert_eq!(contents(tmp.path()).len(), 8);
    drop(sidecar);

    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &["--max-batch-age", "200ms"]);
    client::post(&sidecar.addr, "/messages", "text/plain", b"aged");
    eventually(Duration::from_secs(10), "the age trigger", || {
        (contents(tmp.path()) == vec![b"aged".to_vec()]).then_some(())
    });
    // The directory appears just before the sink reports the commit.
    eventually(Duration::from_secs(5), "the age-sealed commit counted", || {
        client::get(&sidecar.addr, "/metrics")
            .text()
            .contains("spout_batches_committed_total{reason=\"age\"} 1")
            .then_some(())
    });
}

#[test]
fn bad_input_gets_a_json_4xx_and_nothing_is_enqueued() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar =
        start(tmp.path(), &["--max-message-bytes", "1KiB", "--max-request-bytes", "4KiB", "--max-batch-age", "1h"]);
    let addr = sidecar.addr.as_str();
    let mut truncated = frames(&[b"fine", b"also fine"]);
    truncated.extend_from_slice(&[0, 0, 0, 9, b'x']);
    let cases: Vec<(u16, &str, client::Response)> = vec![
        (400, "bad_framing", client::post(addr, "/messages", "application/vnd.spout.frames", &truncated)),
        (400, "bad_framing", client::post(addr, "/messages", "multipart/form-data", b"no boundary")),
        (413, "too_large", client::post(addr, "/messages", "text/plain", &[b'x'; 2000])),
        (413, "too_large", client::post(addr, "/messages", "application/x-ndjson", &b"12345678\n".repeat(600))),
        (422, "bad_file_name", client::post(addr, "/messages?file=../x", "text/plain", b"x")),
        (422, "bad_file_name", client::post(addr, "/messages?file=%2Fetc%2Fpasswd", "text/plain", b"x")),
        (422, "bad_file_name", client::post(addr, "/messages?file=a%2F%2Fb", "text/plain", b"x")),
        (422, "bad_file_name", client::post(addr, "/messages?file=a%00b", "text/plain", b"x")),
        (422, "bad_file_name", client::post(addr, &format!("/messages?file={}", "n".repeat(300)), "text/plain", b"x")),
        (404, "not_found", client::get(addr, "/nowhere")),
        (405, "method_not_allowed", client::get(addr, "/messages")),
        (405, "method_not_allowed", client::request(addr, "DELETE", "/flush", &[], b"")),
    ];
    for (status, kind, response) in &cases {
        assert_eq!(response.status, *status, "{kind}: {}", response.text());
        assert_eq!(response.json()["error"], *kind);
        assert!(!response.json()["message"].as_str().unwrap().is_empty());
    }
    let status = client::get(addr, "/status").json();
    assert_eq!(status["open_batch"]["messages"], 0, "a rejected request enqueues nothing: {status}");
    // A malformed request line gets hyper's 400; the server keeps serving.
    let garbage = Connection::tcp(addr).raw(b"NOT HTTP AT ALL\r\n\r\n");
    assert_eq!(garbage.status, 400);
    let ok = client::post(addr, "/messages", "text/plain", b"still serving");
    assert_eq!(ok.status, 202, "{}", ok.text());
}

#[test]
fn unix_socket_http_and_raw_socket_ingest() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let http_path = tmp.path().join("http.sock");
    let raw_path = tmp.path().join("raw.sock");
    let (http_arg, raw_arg) = (http_path.display().to_string(), raw_path.display().to_string());
    let sidecar = start(tmp.path(), &["--socket", &http_arg, "--raw-socket", &raw_arg, "--max-batch-age", "100ms"]);
    let mode = std::fs::metadata(&http_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let response =
        Connection::unix(&http_path).request("POST", "/messages?wait=commit&file=via-unix.txt", &[], b"over unix");
    assert_eq!(response.status, 200, "{}", response.text());
    let mut raw = std::os::unix::net::UnixStream::connect(&raw_path).unwrap();
    raw.write_all(b"line one\nline two\nno newline at end").unwrap();
    drop(raw);
    let files = eventually(Duration::from_secs(10), "raw lines committed", || {
        let files = contents(tmp.path());
        (files.len() == 4).then_some(files)
    });
    for expected in [&b"over unix"[..], b"line one", b"line two", b"no newline at end"] {
        assert!(files.iter().any(|f| f == expected), "{expected:?} missing from {files:?}");
    }
    let metrics = client::get(&sidecar.addr, "/metrics").text();
    assert!(metrics.contains("spout_messages_received_total{transport=\"raw\"} 3"), "{metrics}");
    assert!(metrics.contains("spout_messages_received_total{transport=\"unix\"} 1"), "{metrics}");
}

#[test]
fn bearer_token_guards_everything_but_health() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let token_arg = token.display().to_string();
    let sidecar = start(tmp.path(), &["--auth-token-file", &token_arg]);
    let addr = sidecar.addr.as_str();
    assert_eq!(client::get(addr, "/healthz").status, 200);
    assert_eq!(client::get(addr, "/readyz").status, 200);
    for (path, method) in [("/messages", "POST"), ("/status", "GET"), ("/metrics", "GET"), ("/flush", "POST")] {
        let response = client::request(addr, method, path, &[], b"x");
        assert_eq!(response.status, 401, "{path}");
        assert_eq!(response.json()["error"], "unauthorized");
        let wrong = client::request(addr, method, path, &[("Authorization", "Bearer nope")], b"x");
        assert_eq!(wrong.status, 401, "{path}");
    }
    let ok = client::request(addr, "POST", "/messages", &[("Authorization", "Bearer s3cret")], b"x");
    assert_eq!(ok.status, 202, "{}", ok.text());
}

#[test]
fn idempotency_key_retries_are_not_enqueued_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &["--max-batch-age", "300ms"]);
    let send = |body: &[u8], target: &str| {
        client::request(&sidecar.addr, "POST", target, &[("Idempotency-Key", "order-17")], body)
    };
    let first = send(b"once", "/messages");
    assert_eq!(first.status, 202, "{}", first.text());
    let retry = send(b"once", "/messages");
    assert_eq!(retry.status, 202);
    assert_eq!(retry.json()["first_seq"], first.json()["first_seq"], "the retry replays the first answer");
    let waited = send(b"once", "/messages?wait=commit");
    assert_eq!(waited.status, 200, "{}", waited.text());
    assert_eq!(waited.json()["first_seq"], first.json()["first_seq"]);
    assert!(waited.json()["commit"].is_string());
    let conflict = send(b"something else", "/messages");
    assert_eq!(conflict.status, 422);
    assert_eq!(conflict.json()["error"], "idempotency_key_reused");
    assert_eq!(contents(tmp.path()), vec![b"once".to_vec()]);
    let metrics = client::get(&sidecar.addr, "/metrics").text();
    assert!(metrics.contains("spout_idempotency_hits_total 3"), "{metrics}");
}

#[test]
fn refuses_an_exposed_listener_without_a_token() {
    let output = std::process::Command::new(crate::support::sidecar::BIN)
        .args(["--listen", "0.0.0.0:0", "--sink", "stdout:"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--auth-token-file") && stderr.contains("--allow-unauthenticated"), "{stderr}");
}

#[test]
fn lines_sent_under_one_name_append_as_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = start(tmp.path(), &[]);
    let response = client::request(
        &sidecar.addr,
        "POST",
        "/messages?wait=commit&file=events.log",
        &[("Content-Type", "application/x-ndjson")],
        b"first\nsecond",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["files"], serde_json::json!(["events.log"]));
    assert_eq!(contents(tmp.path()), vec![b"first\nsecond\n".to_vec()]);
}
