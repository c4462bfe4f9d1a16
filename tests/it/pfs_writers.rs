//! Scaled out: three real `spout-sidecar` processes writing one branch of the fake
//! pachd (tests/pfs/fake_pachd.py) through unavailable calls, cut streams and lost
//! answers. Every accepted message lands exactly once, each batch is one commit of
//! its own (never absorbed into another writer's), and no commit is left open.
//! Needs `pip install -r tests/pfs/requirements.txt`.

use std::collections::{HashMap, HashSet};
use std::thread;
use std::time::Duration;

use crate::pfs::fake::{is_marker, FakePachd};
use crate::support::client::post;
use crate::support::sidecar::{eventually, Sidecar};
use serde_json::json;

const WRITERS: usize = 3;
const CLIENTS_PER_WRITER: usize = 2;
const REQUESTS_PER_CLIENT: usize = 10;
const LINES_PER_REQUEST: usize = 500;

/// A committed request: its commit and the files its messages became.
struct Receipt {
    commit: String,
    files: Vec<String>,
}

fn line(writer: usize, client: usize, request: usize, k: usize) -> String {
    format!("{{\"writer\":{writer},\"client\":{client},\"request\":{request},\"k\":{k}}}")
}

#[test]
fn three_sidecars_on_one_branch_commit_every_message_exactly_once() {
    let mut pachd = FakePachd::start(None, None);
    pachd.faults(json!({
        "fail": [
            {"method": "ModifyFile", "every": 4, "when": "after"},
            {"method": "ModifyFile", "every": 7, "when": "before"},
            {"method": "GetFile", "every": 9},
            {"method": "InspectCommit", "every": 8},
        ],
        "cut_modify_file": {"every": 5, "after": 30},
        "finish_delay": 0.02,
    }));
    let sidecars: Vec<Sidecar> = (0..WRITERS)
        .map(|w| {
            let uri = pachd.uri(&format!("events@master?writer=w{w}"));
            Sidecar::start(&["--sink", &uri, "--max-batch-age", "20ms"])
        })
        .collect();
    let clients: Vec<_> = sidecars
        .iter()
        .enumerate()
        .flat_map(|(w, sidecar)| (0..CLIENTS_PER_WRITER).map(move |c| (w, c, sidecar.addr.clone())))
        .map(|(w, c, addr)| {
            thread::spawn(move || {
                (0..REQUESTS_PER_CLIENT)
                    .map(|r| {
                        let body: String = (0..LINES_PER_REQUEST).map(|k| line(w, c, r, k) + "\n").collect();
                        let answer = post(&addr, "/messages?wait=commit", "application/x-ndjson", body.as_bytes());
                        assert_eq!(answer.status, 200, "writer {w}: {}", answer.text());
                        let answer = answer.json();
                        let files = answer["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().into());
                        let receipt =
                            Receipt { commit: answer["commit"].as_str().unwrap().into(), files: files.collect() };
                        (body, receipt)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let joined: Vec<_> = clients.into_iter().map(|client| client.join()).collect();
    if joined.iter().any(Result::is_err) {
        let logs: Vec<String> = sidecars.iter().map(Sidecar::log).collect();
        panic!("a client failed (above); the sidecars' logs:\n{}", logs.join("\n---\n"));
    }
    let answered: Vec<(String, Receipt)> = joined.into_iter().flat_map(Result::unwrap).collect();
    for sidecar in sidecars {
        let log = sidecar.log();
        assert!(sidecar.stop().success(), "a sidecar failed to drain:\n{log}");
    }

    eventually(Duration::from_secs(30), "every commit finished", || {
        pachd.state().commits.iter().all(|c| c.finished).then_some(())
    });
    let state = pachd.state();
    let files = state.files("events", "master");
    let expected: HashMap<String, Vec<u8>> = answered
        .iter()
        .flat_map(|(body, receipt)| receipt.files.iter().cloned().zip(body.lines().map(|l| l.as_bytes().to_vec())))
        .collect();
    assert_eq!(expected.len(), WRITERS * CLIENTS_PER_WRITER * REQUESTS_PER_CLIENT * LINES_PER_REQUEST);
    assert_eq!(files.len(), expected.len(), "every message once, no file from a batch sent twice");
    assert!(files == expected, "every message's bytes, each once, at the branch head");

    let mut batches: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (_, receipt) in &answered {
        batches.entry(&receipt.commit).or_default().extend(receipt.files.iter().map(String::as_str));
    }
    let commits = state.commits_of("events");
    assert_eq!(commits.len(), batches.len(), "one commit per batch, none extra");
    for commit in &commits {
        assert!(commit.finishing && commit.error.is_empty(), "{commit:?}");
        let written: Vec<&str> = commit.changed.iter().map(String::as_str).filter(|p| !is_marker(p)).collect();
        let batch = batches.get(commit.id.as_str()).unwrap_or_else(|| panic!("commit {} is no batch's", commit.id));
        assert_eq!(written.len(), batch.len(), "commit {} holds its batch once, nothing else", commit.id);
        assert!(written.iter().all(|p| batch.contains(p)), "commit {} holds another batch's files", commit.id);
        let markers = commit.changed.iter().filter(|p| is_marker(p)).collect::<HashSet<_>>();
        assert_eq!(markers.len(), 1, "one writer per commit: {markers:?}");
    }
    assert_eq!(state.markers("events", "master").len(), WRITERS);
    for method in ["GetFile", "InspectCommit", "ModifyFile"] {
        assert!(state.calls(method) > 0);
    }
}
