//! The manifests against the running binary: the paths probes and scrapers ask for,
//! and the example producers run under the sidecar as the pipeline specs run them.

use std::path::Path;
use std::time::Duration;

use super::files;
use crate::support::sidecar::{dir_commits, Sidecar};
use crate::support::{client, python};

const TOKEN: &str = "s3cret-for-tests";

/// A sidecar that requires a bearer token, as every manifest here configures it.
fn guarded_sidecar(dir: &Path, extra: &[&str], adjust: impl FnOnce(&mut std::process::Command)) -> Sidecar {
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let sink = format!("dir:{}", dir.join("out").display());
    let mut args = vec!["--sink", &sink, "--auth-token-file", token.to_str().unwrap(), "--max-batch-age", "50ms"];
    args.extend_from_slice(extra);
    Sidecar::start_with(&args, adjust)
}

/// The kubelet probes without a token; Prometheus scrapes with one.
#[test]
fn probe_and_scrape_paths_answer_the_kubelet_and_prometheus() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = guarded_sidecar(tmp.path(), &[], |_| {});
    let probes = super::kubernetes::probe_paths();
    assert!(probes.len() >= 4, "readiness and liveness probes of the Deployment and the pod patch");
    for (file, path) in probes {
        let answer = client::get(&sidecar.addr, &path);
        assert_eq!(answer.status, 200, "{file}: the kubelet's GET {path} without a token: {}", answer.text());
    }
    let scraped = files::values_of_key("prometheus.io/path");
    assert!(!scraped.is_empty());
    let bearer = format!("Bearer {TOKEN}");
    for (file, path) in scraped {
        assert_eq!(client::get(&sidecar.addr, &path).status, 401, "{file}: {path} must not be open without the token");
        let answer = client::request(&sidecar.addr, "GET", &path, &[("Authorization", &bearer)], b"");
        assert_eq!(answer.status, 200, "{file}: Prometheus' GET {path} with the token");
    }
}

/// Runs `spout-sidecar ... -- python3 deploy/pachyderm/SCRIPT` to its end, as
/// transform.cmd does (with the tests' Python); returns the exit status and what was
/// committed.
fn supervise(
    script: &str,
    env: &[(&str, &str)],
    with_token: bool,
) -> (std::process::ExitStatus, Vec<(String, String, Vec<u8>)>) {
    let tmp = tempfile::tempdir().unwrap();
    let producer = files::deploy_dir().join("pachyderm").join(script);
    let token = tmp.path().join("token");
    let python = python::interpreter();
    let command = ["--", python.to_str().unwrap(), producer.to_str().unwrap()];
    let mut sidecar = guarded_sidecar(tmp.path(), &command, |command| {
        command.env("PYTHONDONTWRITEBYTECODE", "1").envs(env.iter().copied());
        if with_token {
            command.env("PRODUCER_TOKEN_FILE", &token);
        }
    });
    let status = sidecar.wait_exit(Duration::from_secs(60));
    (status, dir_commits(&tmp.path().join("out")))
}

#[test]
fn producer_py_commits_one_named_file_per_event() {
    let (status, files) = supervise("producer.py", &[("PRODUCER_COUNT", "3"), ("PRODUCER_INTERVAL", "0")], true);
    assert!(status.success(), "the producer and the sidecar exit 0: {status}");
    let names: Vec<&str> = files.iter().map(|(_, name, _)| name.as_str()).collect();
    assert_eq!(names, ["readings/000000000000.json", "readings/000000000001.json", "readings/000000000002.json"]);
    for (seq, (_, _, body)) in files.iter().enumerate() {
        let reading: serde_json::Value = serde_json::from_slice(body).expect("a JSON reading");
        assert_eq!(reading["seq"], seq);
    }
}

#[test]
fn batch_producer_py_sends_ndjson_batches_and_waits_for_each_commit() {
    let (status, files) = supervise(
        "batch_producer.py",
        &[("PRODUCER_COUNT", "2"), ("PRODUCER_BATCH", "5"), ("PRODUCER_INTERVAL", "0")],
        true,
    );
    assert!(status.success(), "the producer and the sidecar exit 0: {status}");
    assert_eq!(files.len(), 10, "two requests of five events");
    for request in 0..2 {
        let commits: std::collections::BTreeSet<&str> = files
            .iter()
            .filter(|(_, _, body)| serde_json::from_slice::<serde_json::Value>(body).unwrap()["request"] == request)
            .map(|(commit, _, _)| commit.as_str())
            .collect();
        assert_eq!(commits.len(), 1, "request {request}'s events are one commit: {commits:?}");
    }
}

#[test]
fn a_producer_without_the_token_is_refused_and_fails() {
    let (status, files) = supervise("producer.py", &[("PRODUCER_COUNT", "1"), ("PRODUCER_INTERVAL", "0")], false);
    assert!(!status.success(), "the 401 must stop the producer, and the sidecar exits with its code");
    assert!(files.is_empty(), "nothing was accepted");
}
