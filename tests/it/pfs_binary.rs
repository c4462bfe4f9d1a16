//! The real `spout-sidecar` binary committing into the fake pachd
//! (tests/it/pfs/fake_pachd.py): `POST /messages?wait=commit` answers with the PFS
//! commit id, `/readyz` follows pachd's answers, `auto` finds pachd inside a worker.
//! Needs `pip install -r tests/it/pfs/requirements.txt`.

use std::time::Duration;

use crate::pfs::fake::FakePachd;
use crate::support::client::{get, post};
use crate::support::sidecar::{eventually, Sidecar};

fn ready(sidecar: &Sidecar) -> bool {
    get(&sidecar.addr, "/readyz").status == 200
}

#[test]
fn wait_commit_answers_with_the_pfs_commit_and_readyz_follows_the_token() {
    let mut pachd = FakePachd::start(Some("first-token"), None);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "first-token\n").unwrap();
    let uri = pachd.uri("events@master?project=ingest");
    let sidecar = Sidecar::start(&["--sink", &uri, "--pachd-token-file", token_file.to_str().unwrap()]);
    eventually(Duration::from_secs(30), "/readyz once pachd answers", || ready(&sidecar).then_some(()));

    let answer = post(&sidecar.addr, "/messages?wait=commit", "application/x-ndjson", b"{\"a\":1}\n{\"b\":2}\n");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = answer.json();
    let commit = answer["commit"].as_str().expect("the commit id").to_owned();
    let files: Vec<String> =
        answer["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_owned()).collect();
    assert_eq!(files.len(), 2);

    let state = pachd.state();
    let repo = state.repos.iter().find(|r| r.name == "events").expect("the repo was created");
    assert_eq!((repo.project.as_str(), repo.kind.as_str()), ("ingest", "user"));
    let made = state.commits.iter().find(|c| c.id == commit).expect("the answer names a commit pachd has");
    assert!(made.finished && made.error.is_empty());
    let markers = state.markers("events", "master");
    assert_eq!(markers.len(), 1, "one writer's marker: {markers:?}");
    let head = state.files("events", "master");
    assert_eq!(head[&files[0]], b"{\"a\":1}");
    assert_eq!(head[&files[1]], b"{\"b\":2}");

    // pachd now wants another token: not ready, and the log says why.
    pachd.set_token(Some("second-token"));
    eventually(Duration::from_secs(30), "/readyz to say not ready", || (!ready(&sidecar)).then_some(()));
    let problems = get(&sidecar.addr, "/readyz").json()["problems"].to_string();
    assert!(problems.contains("pachd refused the token"), "{problems}");
    // The log reaches the test through a pipe and a thread: the line may be on its way.
    eventually(Duration::from_secs(10), "the log to say pachd refused the token from the token file", || {
        sidecar.log().contains("pachd refused the token from the token file").then_some(())
    });

    let accepted = post(&sidecar.addr, "/messages?file=late.txt", "text/plain", b"sent while refused");
    assert_eq!(accepted.status, 202);
    std::fs::write(&token_file, "second-token\n").unwrap();
    sidecar.flush();
    assert!(ready(&sidecar));
    assert!(sidecar.stop().success());
    let state = pachd.state();
    assert_eq!(state.files("events", "master")["late.txt"], b"sent while refused");
    assert!(state.commits.iter().all(|c| c.finishing), "no open commit left");
}

#[test]
fn auto_commits_to_the_pipeline_repo_inside_a_pachyderm_2_worker() {
    let mut pachd = FakePachd::start(Some("pipeline-token"), None);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let context = serde_json::json!({"v2": {"active_context": "worker", "contexts": {"worker": {
        "pachd_address": format!("grpc://127.0.0.1:{}", pachd.port),
        "session_token": "pipeline-token",
    }}}});
    std::fs::write(&config, context.to_string()).unwrap();
    let sidecar = Sidecar::start_with(&[], |command| {
        command
            .env("PACH_CONFIG", &config)
            .env("PPS_PIPELINE_NAME", "my-spout")
            .env("PPS_PROJECT_NAME", "team")
            .current_dir(dir.path());
    });
    let answer = post(&sidecar.addr, "/messages?wait=commit&file=hello.txt", "text/plain", b"hello");
    assert_eq!(answer.status, 200, "{}\n{}", answer.text(), sidecar.log());
    assert!(sidecar.stop().success());
    let state = pachd.state();
    let repo = state.repos.iter().find(|r| r.name == "my-spout").expect("the pipeline's repo");
    assert_eq!(repo.project, "team");
    assert_eq!(state.files("my-spout", "master")["hello.txt"], b"hello");
}
