//! Getting data out through the sidecar: `wait=downstream` follows a commit's
//! commit set into the pipelines' output repos, and `GET /commits/...` lists a
//! commit's files and streams one, from the sink's repo or a downstream one. The
//! real binary against the fake pachd (tests/it/pfs/fake_pachd.py), whose
//! "pipeline" makes its output commit in each input commit's commit set and
//! finishes it some time after, as pachd's jobs do; and against the `dir:` sink.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::pfs::fake::{put_file_byte, FakePachd};
use crate::support::client::{get, post, request, Connection};
use crate::support::sidecar::Sidecar;

fn start(pachd: &FakePachd, extra: &[&str]) -> Sidecar {
    let uri = pachd.uri("spout");
    let mut args = vec!["--sink", &uri, "--max-batch-messages", "1", "--max-batch-age", "20ms"];
    args.extend_from_slice(extra);
    Sidecar::start(&args)
}

fn commit_of(answer: &Value) -> String {
    answer["commit"].as_str().unwrap_or_else(|| panic!("no commit in {answer}")).to_owned()
}

#[test]
fn a_round_trip_posts_an_input_waits_downstream_and_fetches_the_result() {
    let mut pachd = FakePachd::start(None, None);
    pachd.pipeline("spout", "edges", 0.4, None);
    let sidecar = start(&pachd, &[]);
    let answer = post(&sidecar.addr, "/messages?wait=downstream&file=words.txt", "text/plain", b"hello world");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = answer.json();
    let id = commit_of(&answer);
    assert_eq!(answer["files"], json!(["words.txt"]));
    assert_eq!(answer["downstream"], json!([{"repo": "edges", "commit": id, "finished": true, "error": null}]));
    // Read at once: had the answer come early, the job would still be running.
    let state = pachd.state();
    let output = state.commits_of("edges").into_iter().find(|c| c.id == id).expect("the output commit");
    assert!(output.finished, "answered before the pipeline finished: {output:?}");

    let result = get(&sidecar.addr, &format!("/commits/edges@{id}/files/words.txt"));
    assert_eq!((result.status, result.text()), (200, "HELLO WORLD".into()));
    let input = get(&sidecar.addr, &format!("/commits/{id}/files/words.txt"));
    assert_eq!((input.status, input.text()), (200, "hello world".into()));
    assert_eq!(input.header("content-type"), Some("application/octet-stream"));

    let listing = get(&sidecar.addr, &format!("/commits/{id}"));
    assert_eq!(listing.status, 200, "{}", listing.text());
    let files = listing.json()["files"].as_array().cloned().unwrap_or_default();
    assert!(files.contains(&json!({"name": "words.txt", "size": 11})), "{files:?}");
    assert!(files.iter().any(|f| f["name"].as_str().unwrap().starts_with(".spout-sidecar/")), "{files:?}");
    let listing = get(&sidecar.addr, &format!("/commits/edges@{id}"));
    assert_eq!(listing.json()["files"], json!([{"name": "words.txt", "size": 11}]));
    assert!(sidecar.stop().success());
}

#[test]
fn a_pipeline_that_fails_is_reported_with_pachds_error() {
    let mut pachd = FakePachd::start(None, None);
    pachd.pipeline("spout", "edges", 0.1, Some("user code exited 1"));
    let sidecar = start(&pachd, &[]);
    let answer = post(&sidecar.addr, "/messages?wait=downstream", "text/plain", b"input");
    assert_eq!(answer.status, 200, "the input is committed: {}", answer.text());
    let answer = answer.json();
    let id = commit_of(&answer);
    let downstream = json!([{"repo": "edges", "commit": id, "finished": true, "error": "user code exited 1"}]);
    assert_eq!(answer["downstream"], downstream);
    let again = get(&sidecar.addr, &format!("/commits/{id}?wait=downstream"));
    assert_eq!(again.status, 200, "{}", again.text());
    let again = again.json();
    assert_eq!(
        (&again["repo"], &again["finished"], &again["commit_error"]),
        (&json!("spout"), &json!(true), &Value::Null)
    );
    assert_eq!(again["downstream"], downstream);
    assert!(sidecar.stop().success());
}

#[test]
fn a_wait_past_its_timeout_answers_504_with_what_finished_so_far() {
    let mut pachd = FakePachd::start(None, None);
    pachd.pipeline("spout", "edges", 1.5, None);
    let sidecar = start(&pachd, &[]);
    let started = Instant::now();
    let answer = post(&sidecar.addr, "/messages?wait=downstream&timeout=200ms&file=a.txt", "text/plain", b"a");
    assert_eq!(answer.status, 504, "{}", answer.text());
    assert!(started.elapsed() < Duration::from_millis(1400), "the timeout bounds the wait");
    let answer = answer.json();
    let id = commit_of(&answer);
    assert_eq!(answer["error"], "timeout");
    assert_eq!(answer["files"], json!(["a.txt"]), "the messages are committed all the same");
    assert_eq!(answer["downstream"], json!([{"repo": "edges", "commit": id, "finished": false, "error": null}]));

    let early = get(&sidecar.addr, &format!("/commits/{id}?wait=downstream&timeout=50ms"));
    assert_eq!(early.status, 504, "{}", early.text());
    assert_eq!(early.json()["finished"], true, "the input commit itself is finished");
    // An earlier commit, followed later: answered once the job is done.
    let later = get(&sidecar.addr, &format!("/commits/{id}?wait=downstream"));
    assert_eq!(later.status, 200, "{}", later.text());
    assert_eq!(later.json()["downstream"][0]["finished"], true);
    let result = get(&sidecar.addr, &format!("/commits/edges@{id}/files/a.txt"));
    assert_eq!(result.text(), "A");
    assert!(sidecar.stop().success());
}

/// The peak resident set of a process, from /proc.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn a_large_file_streams_through_with_bounded_memory() {
    const SIZE: u64 = 64 << 20;
    let mut pachd = FakePachd::start(None, None);
    let id = pachd.put_file("big", "blob.bin", SIZE);
    let sidecar = start(&pachd, &[]);
    // A first read warms the connection to pachd, so the peak after it is the baseline.
    assert_eq!(get(&sidecar.addr, &format!("/commits/big@{id}")).status, 200);
    let before = peak_rss(sidecar.child.id());
    let mut connection = Connection::tcp(&sidecar.addr);
    let target = format!("GET /commits/big@{id}/files/blob.bin HTTP/1.1\r\nHost: test\r\n\r\n");
    connection.write_raw(target.as_bytes()).unwrap();
    let (mut read, mut wrong) = (0u64, None);
    let (status, _) = connection
        .try_read_streamed(|piece| {
            for (i, &byte) in piece.iter().enumerate() {
                if wrong.is_none() && byte != put_file_byte(read + i as u64) {
                    wrong = Some(read + i as u64);
                }
            }
            read += piece.len() as u64;
        })
        .expect("the whole file");
    assert_eq!((status, read, wrong), (200, SIZE, None), "every byte, in order");
    let grown = peak_rss(sidecar.child.id()).saturating_sub(before);
    assert!(grown < 32 << 20, "the sidecar's peak memory grew by {grown} bytes for a {SIZE}-byte file");
    assert!(sidecar.stop().success());
}

#[test]
fn reads_refuse_what_names_nothing_with_a_reason() {
    let pachd = FakePachd::start(None, None);
    let sidecar = start(&pachd, &[]);
    let id = commit_of(&post(&sidecar.addr, "/messages?wait=commit&file=a.txt", "text/plain", b"a").json());
    let refused = |target: &str, status: u16, kind: &str, says: &str| {
        let answer = get(&sidecar.addr, target);
        assert_eq!(answer.status, status, "{target}: {}", answer.text());
        let answer = answer.json();
        assert_eq!(answer["error"], kind, "{target}: {answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(says), "{target}: {message}");
    };
    refused("/commits/0123abcd", 404, "not_found", "commit 0123abcd not found in repo default/spout");
    refused(&format!("/commits/{id}/files/b.txt"), 404, "not_found", "file b.txt not found");
    refused("/commits/nope@0123abcd/files/a.txt", 404, "not_found", "commit 0123abcd not found in repo default/nope");
    refused(&format!("/commits/{id}/files/..%2Fa.txt"), 400, "bad_request", "`.` and `..` are not allowed");
    refused(&format!("/commits/{id}/files//etc/passwd"), 400, "bad_request", "it is absolute");
    refused(&format!("/commits/{id}/other"), 404, "not_found", "expected /commits/{id}");
    refused(&format!("/commits/{id}?wait=commit"), 400, "bad_request", "wait=commit to none of /commits/");
    refused(&format!("/commits/edges@{id}?wait=downstream"), 400, "bad_request", "wait=downstream applies");
    refused("/commits/0123abcd?wait=downstream", 404, "not_found", "commit 0123abcd not found");
    refused(&format!("/commits/{id}?wait=downstream&timeout=soon"), 400, "bad_request", "timeout must be");
    let post_to = request(&sidecar.addr, "POST", &format!("/commits/{id}"), &[], b"");
    assert_eq!((post_to.status, post_to.header("allow")), (405, Some("GET, HEAD")));
    assert!(sidecar.stop().success());
}

#[test]
fn reads_need_the_bearer_token_like_every_other_route() {
    let pachd = FakePachd::start(None, None);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let sidecar = start(&pachd, &["--auth-token-file", token.to_str().unwrap()]);
    let bearer = [("Authorization", "Bearer s3cret"), ("Content-Type", "text/plain")];
    let answer = request(&sidecar.addr, "POST", "/messages?wait=commit&file=a.txt", &bearer, b"a");
    let id = commit_of(&answer.json());
    for target in [format!("/commits/{id}"), format!("/commits/{id}/files/a.txt")] {
        assert_eq!(get(&sidecar.addr, &target).status, 401, "{target}");
        let allowed = request(&sidecar.addr, "GET", &target, &bearer[..1], b"");
        assert_eq!(allowed.status, 200, "{target}: {}", allowed.text());
    }
    assert!(sidecar.stop().success());
}

#[test]
fn the_dir_sink_answers_the_same_routes_from_its_directories() {
    let root = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", root.path().display());
    let sidecar = Sidecar::start(&["--sink", &sink, "--max-batch-age", "20ms"]);
    let answer = post(&sidecar.addr, "/messages?wait=commit&file=users/42.json", "application/json", b"{\"user\":42}");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let id = commit_of(&answer.json());
    let listing = get(&sidecar.addr, &format!("/commits/{id}"));
    assert_eq!(listing.json(), json!({"commit": id, "files": [{"name": "users/42.json", "size": 11}]}));
    let file = get(&sidecar.addr, &format!("/commits/{id}/files/users%2F42.json"));
    assert_eq!((file.status, file.text()), (200, "{\"user\":42}".into()));

    std::fs::write(root.path().join("secret"), b"outside every commit").unwrap();
    for traversal in ["..%2Fsecret", "users/..%2F..%2Fsecret", "%2Fetc%2Fpasswd"] {
        let answer = get(&sidecar.addr, &format!("/commits/{id}/files/{traversal}"));
        assert_eq!(answer.status, 400, "{traversal}: {}", answer.text());
    }
    assert_eq!(get(&sidecar.addr, "/commits/..").status, 400);
    assert_eq!(get(&sidecar.addr, "/commits/.tmp-1").status, 400, "a commit being written is not read");
    let other = get(&sidecar.addr, &format!("/commits/edges@{id}/files/users/42.json"));
    assert_eq!(other.status, 404, "{}", other.text());
    assert!(other.json()["message"].as_str().unwrap().contains("holds one repo"));
    assert_eq!(get(&sidecar.addr, &format!("/commits/{id}/files/users/7.json")).status, 404);
    assert_eq!(get(&sidecar.addr, "/commits/00000000000000000001").status, 404);

    let downstream = post(&sidecar.addr, "/messages?wait=downstream", "text/plain", b"x");
    assert_eq!(downstream.status, 400, "{}", downstream.text());
    assert!(downstream.json()["message"].as_str().unwrap().contains("only a pfs:// sink has"));
    assert_eq!(get(&sidecar.addr, &format!("/commits/{id}?wait=downstream")).status, 400);
    assert!(sidecar.stop().success());
}

#[test]
fn sinks_that_keep_nothing_readable_answer_404_with_a_reason() {
    let sidecar = Sidecar::start_with(&["--sink", "stdout:"], |command| {
        command.stdout(Stdio::null());
    });
    let answer = get(&sidecar.addr, "/commits/1/files/a.txt");
    assert_eq!(answer.status, 404, "{}", answer.text());
    let message = answer.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("stdout: sink keeps nothing it could read back"), "{message}");
    assert!(sidecar.stop().success());
}
