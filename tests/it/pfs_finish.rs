//! A Pachyderm 2.x commit is committed when pachd has *finished* it, not when
//! FinishCommit returns: the real `spout-sidecar` binary against the fake pachd
//! (tests/pfs/fake_pachd.py), whose master validates a commit some time after
//! FinishCommit and may finish it with an error, as pachd's does.
//! Needs `pip install -r tests/pfs/requirements.txt`.

use std::thread;
use std::time::Duration;

use crate::pfs::fake::FakePachd;
use crate::support::client::post;
use crate::support::sidecar::{eventually, Sidecar};
use serde_json::json;

fn start(pachd: &FakePachd, repo: &str) -> Sidecar {
    let uri = pachd.uri(repo);
    Sidecar::start(&["--sink", &uri, "--max-batch-messages", "1", "--max-batch-age", "20ms"])
}

#[test]
fn wait_commit_answers_once_pachd_has_finished_the_commit() {
    let mut pachd = FakePachd::start(None, None);
    pachd.faults(json!({"finish_delay": 0.4}));
    let sidecar = start(&pachd, "slow");
    let answer = post(&sidecar.addr, "/messages?wait=commit&file=a.txt", "text/plain", b"a");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let id = answer.json()["commit"].as_str().expect("the commit id").to_owned();
    // Read at once: had the answer come when FinishCommit returned, the commit
    // would still be finishing here, for another 400 ms.
    let state = pachd.state();
    let commit = state.commits.iter().find(|c| c.id == id).expect("the answer names pachd's commit");
    assert!(commit.finished && commit.error.is_empty(), "answered before pachd finished it: {commit:?}");
    assert!(sidecar.stop().success());
}

#[test]
fn a_commit_pachd_finishes_with_an_error_fails_its_batch_and_the_next_still_goes_out() {
    let mut pachd = FakePachd::start(None, None);
    pachd.faults(json!({"finish_delay": 0.1}));
    let sidecar = start(&pachd, "paths");
    let first = post(&sidecar.addr, "/messages?wait=commit&file=x", "text/plain", b"a file");
    assert_eq!(first.status, 200, "{}", first.text());

    // "x/y" makes x both a file and a directory: pachd's validation fails the commit.
    let clash = post(&sidecar.addr, "/messages?wait=commit&file=x/y", "text/plain", b"under a file");
    assert_eq!(clash.status, 502, "{}", clash.text());
    let answer = clash.json();
    assert_eq!(answer["error"], "commit_failed");
    let error = answer["message"].as_str().unwrap_or_default().to_owned();
    let state = pachd.state();
    let errored = state.commits_of("paths").into_iter().find(|c| !c.error.is_empty()).expect("an errored commit");
    assert_eq!(errored.error, "file / directory path collision (/x/y)");
    assert!(error.contains(&errored.id) && error.contains(&errored.error), "names the commit and why: {error}");
    // The 502 is sent as the batch fails, the log line a moment later.
    eventually(Duration::from_secs(5), "the log to name the commit", || {
        sidecar.log().contains(&errored.id).then_some(())
    });
    assert_eq!(sidecar.metric("spout_batches_failed_total"), 1);

    let after = post(&sidecar.addr, "/messages?wait=commit&file=z", "text/plain", b"after");
    assert_eq!(after.status, 200, "{}", after.text());
    assert!(sidecar.stop().success());
    let state = pachd.state();
    let files = state.files("paths", "master");
    let mut names: Vec<&str> = files.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["x", "z"], "the errored commit's file is left out of its descendants");
    let commits = state.commits_of("paths");
    assert_eq!(commits.len(), 3, "one commit per batch, the errored one not retried");
    assert!(commits.iter().all(|c| c.finished), "no commit left unfinished: {commits:?}");
}

#[test]
fn the_next_batch_streams_while_the_previous_commit_is_finishing() {
    const REQUESTS: usize = 6;
    let mut pachd = FakePachd::start(None, None);
    pachd.faults(json!({"finish_delay": 0.3}));
    let sidecar = start(&pachd, "overlap");
    let answers: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let addr = sidecar.addr.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(30 * i as u64));
                post(&addr, &format!("/messages?wait=commit&file={i}.txt"), "text/plain", b"x")
            })
        })
        .collect();
    let ids: Vec<String> = answers
        .into_iter()
        .map(|answer| {
            let answer = answer.join().unwrap();
            assert_eq!(answer.status, 200, "{}", answer.text());
            answer.json()["commit"].as_str().unwrap().to_owned()
        })
        .collect();
    let state = pachd.state();
    let commits = state.commits_of("overlap");
    assert_eq!(commits.len(), REQUESTS, "one commit per message");
    for id in &ids {
        let commit = commits.iter().find(|c| &c.id == id).expect("each answer names a commit pachd has");
        assert!(commit.finished && commit.error.is_empty(), "answered before pachd finished it: {commit:?}");
    }
    let overlapped = commits.iter().filter(|c| c.parent_at_start.as_deref() == Some("finishing")).count();
    assert!(overlapped > 0, "some commit started while its parent was still finishing: {commits:?}");
    eventually(Duration::from_secs(10), "every commit finished", || {
        pachd.state().commits.iter().all(|c| c.finished).then_some(())
    });
    assert!(sidecar.stop().success());
}
