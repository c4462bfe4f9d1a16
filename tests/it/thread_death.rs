//! A sink thread that dies is seen from outside: the real binary, made to panic on
//! purpose (`SPOUT_TEST_PANIC`), reports the sink down on `/readyz` and `/healthz`,
//! counts the panic, logs it once, fails the batch it held to its `wait=commit`
//! caller, refuses new messages rather than lose them, and exits 3 at SIGTERM.
//! Needs the fake pachd's Python packages for the pfs-commit thread.

use std::time::Duration;

use crate::pfs::fake::FakePachd;
use crate::support::client::{get, post};
use crate::support::sidecar::{dir_commits, eventually, Sidecar};

fn start_panicking(thread: &str, sink: &str) -> Sidecar {
    let fault = format!("{thread}:2");
    Sidecar::start_with(&["--sink", sink, "--max-batch-messages", "1", "--shutdown-timeout", "5s"], |command| {
        command.env("SPOUT_TEST_PANIC", &fault);
    })
}

/// What every dead thread must look like, `thread` naming it.
fn check_dead(sidecar: Sidecar, thread: &str) {
    let first = post(&sidecar.addr, "/messages?wait=commit", "text/plain", b"first");
    assert_eq!(first.status, 200, "{}", first.text());

    let second = post(&sidecar.addr, "/messages?wait=commit", "text/plain", b"second");
    assert_eq!(second.status, 502, "{}", second.text());
    assert_eq!(second.json()["error"], "commit_failed", "{}", second.text());

    let series = format!("spout_thread_panics_total{{thread=\"{thread}\"}}");
    eventually(Duration::from_secs(10), "the panic counted", || (sidecar.metric(&series) == 1).then_some(()));
    assert_eq!(sidecar.metric("spout_sink_state{state=\"down\"}"), 1);

    let ready = get(&sidecar.addr, "/readyz");
    assert_eq!(ready.status, 503, "{}", ready.text());
    let problems = ready.json()["problems"].to_string();
    assert!(problems.contains(&format!("the {thread} thread died")), "{problems}");
    let alive = get(&sidecar.addr, "/healthz");
    assert_eq!(alive.status, 503, "a dead thread must get the pod restarted: {}", alive.text());

    let refused = post(&sidecar.addr, "/messages", "text/plain", b"third");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"], "sink_down", "{}", refused.text());
    assert_eq!(sidecar.metric("spout_messages_rejected_total{reason=\"sink_down\"}"), 1);

    let log = sidecar.log();
    let reported = format!("the {thread} thread panicked");
    assert_eq!(log.matches(&reported).count(), 1, "one error line for the death:\n{log}");

    let status = sidecar.stop();
    assert_eq!(status.code(), Some(3), "a sidecar whose sink died exits 3");
}

#[test]
fn a_dead_sink_thread_is_reported_and_nothing_more_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", dir.path().display());
    check_dead(start_panicking("sink", &sink), "sink");
    let committed = dir_commits(dir.path());
    let bodies: Vec<&[u8]> = committed.iter().map(|(_, _, data)| data.as_slice()).collect();
    assert_eq!(bodies, [b"first"], "only the batch before the panic was committed");
}

#[test]
fn a_dead_pfs_committer_thread_is_reported_and_nothing_more_is_accepted() {
    let pachd = FakePachd::start(None, None);
    let uri = pachd.uri("events@master");
    check_dead(start_panicking("pfs-commit", &uri), "pfs-commit");
}
