//! The RabbitMQ source (`--source amqp://…`): the real `spout-sidecar` binary
//! consuming queues of a real RabbitMQ (`broker`), into `dir:` and into the fake
//! pachd: acknowledged only after commit, killed with SIGKILL while it consumes and
//! restarted (nothing lost, the redeliveries of committed messages recognised and
//! counted), a failed batch given back to the queue, back-pressure that stops at the
//! prefetch, and a queue that does not exist.

mod broker;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use self::broker::broker;
use crate::pfs::fake::FakePachd;
use crate::support::client::post;
use crate::support::sidecar::{dir_commits, eventually, Sidecar};

/// Starts a sidecar reading `source` into `sink`, committing every 20 ms unless
/// `extra` says otherwise.
fn start(source: &str, sink: &str, extra: &[&str]) -> Sidecar {
    let mut args = vec!["--source", source, "--sink", sink, "--source-replica", "r1"];
    if !extra.contains(&"--max-batch-age") {
        args.extend(["--max-batch-age", "20ms"]);
    }
    args.extend_from_slice(extra);
    Sidecar::start(&args)
}

/// `count` messages, each with its own message-id and a body naming it.
fn numbered(range: std::ops::Range<usize>) -> Vec<(Option<String>, Vec<u8>)> {
    range.map(|i| (Some(format!("m{i}")), format!("message {i}").into_bytes())).collect()
}

/// Every message file committed into a `dir:` root (checkpoints left out), by body,
/// with how many times it is there.
fn dir_counts(root: &Path) -> BTreeMap<Vec<u8>, usize> {
    let mut counts = BTreeMap::new();
    for (_, name, body) in dir_commits(root) {
        if !name.starts_with(".spout/") {
            *counts.entry(body).or_insert(0) += 1;
        }
    }
    counts
}

fn series(name: &str, queue: &str, outcome: Option<&str>) -> String {
    match outcome {
        Some(outcome) => format!("{name}{{outcome=\"{outcome}\",source=\"amqp.{queue}\"}}"),
        None => format!("{name}{{source=\"amqp.{queue}\"}}"),
    }
}

/// The body of each of `expected` messages is there exactly once; the doubles are
/// counted separately, for the caller to judge.
fn doubles_of(counts: &BTreeMap<Vec<u8>, usize>, expected: usize) -> usize {
    for i in 0..expected {
        let body = format!("message {i}").into_bytes();
        assert!(counts.contains_key(&body), "message {i} was lost");
    }
    assert_eq!(counts.len(), expected, "only the messages published are committed");
    counts.values().map(|n| n - 1).sum()
}

#[test]
fn consumes_into_dir_acknowledging_each_message_after_its_commit() {
    let broker = broker();
    let queue = broker.queue("basic");
    broker.publish(&queue, numbered(0..300));
    // Without a message-id, a message is known by a hash of its body.
    broker.publish(&queue, (0..20).map(|i| (None, format!("message {}", 300 + i).into_bytes())));
    let root = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", root.path().display());
    let sidecar = start(&broker.uri(&queue, ""), &sink, &[]);
    eventually(Duration::from_secs(60), "320 messages committed", || {
        (dir_counts(root.path()).len() == 320).then_some(())
    });
    broker.wait_empty(&queue, Duration::from_secs(30));
    assert_eq!(sidecar.metric(&series("spout_source_acks_total", &queue, Some("ack"))), 320);
    assert_eq!(sidecar.metric(&series("spout_source_messages_total", &queue, None)), 320);
    assert_eq!(sidecar.metric(&series("spout_source_up", &queue, None)), 1);
    assert_eq!(sidecar.metric("spout_messages_received_total{transport=\"amqp\"}"), 320);
    assert_eq!(doubles_of(&dir_counts(root.path()), 320), 0);

    let checkpoint_name = format!(".spout/checkpoints/amqp.{queue}.r1.json");
    let last = dir_commits(root.path()).into_iter().rfind(|(_, name, _)| *name == checkpoint_name);
    let checkpoint: serde_json::Value = serde_json::from_slice(&last.expect("a checkpoint committed").2).unwrap();
    let ids = checkpoint["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 320, "every id recalled: {checkpoint}");
    assert!(ids.contains(&json!("m299")) && ids.iter().any(|id| id.as_str().unwrap().starts_with("sha256:")));
    assert_eq!(checkpoint["source"], format!("amqp://127.0.0.1:{}/%2f?queue={queue}", broker.port));
    assert!(sidecar.stop().success());
}

/// Kills a sidecar consuming `queue` with SIGKILL 5 times at random moments (each
/// once it has committed something), then lets a last one finish; the messages
/// recognised as redeliveries over all the runs.
fn kill_nine_five_times(queue: &str, start_one: impl Fn() -> Sidecar, committed: impl Fn() -> usize) -> u64 {
    let broker = broker();
    let mut recognised = 0;
    for _ in 0..5 {
        let sidecar = start_one();
        let before = committed();
        eventually(Duration::from_secs(60), "a commit after the restart", || (committed() > before).then_some(()));
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..300)));
        recognised += sidecar.metric(&series("spout_source_acks_total", queue, Some("duplicate")));
        drop(sidecar); // SIGKILL
        let (ready, _) = broker.depth(queue);
        assert!(ready > 0, "killed once everything was consumed: the test should publish more");
    }
    let sidecar = start_one();
    broker.wait_empty(queue, Duration::from_secs(120));
    recognised += sidecar.metric(&series("spout_source_acks_total", queue, Some("duplicate")));
    assert!(sidecar.stop().success());
    recognised
}

#[test]
fn kill_9_five_times_into_dir_loses_nothing_and_commits_nothing_twice() {
    // Enough that five runs of up to 300 ms past their first commit leave some: 6,000
    // were all consumed before the fifth kill on a quiet CI machine.
    const COUNT: usize = 20_000;
    let broker = broker();
    let queue = broker.queue("kill-dir");
    broker.publish(&queue, numbered(0..COUNT));
    let root = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", root.path().display());
    let source = broker.uri(&queue, "&prefetch=300");
    let recognised = kill_nine_five_times(
        &queue,
        || start(&source, &sink, &["--max-batch-messages", "100"]),
        || dir_counts(root.path()).len(),
    );
    let doubles = doubles_of(&dir_counts(root.path()), COUNT);
    eprintln!("dir: {COUNT} messages, 5 kills: {recognised} redeliveries recognised, {doubles} doubles");
    assert_eq!(doubles, 0, "the window (10,000) is larger than the prefetch (300)");
}

/// The files at the head of the fake pachd's branch, by body.
fn pfs_counts(pachd: &mut FakePachd, repo: &str) -> BTreeMap<Vec<u8>, usize> {
    let state = pachd.state();
    let mut counts = BTreeMap::new();
    if state.repos.iter().any(|r| r.name == repo && r.branches.contains_key("master")) {
        for (name, body) in state.files(repo, "master") {
            if !name.starts_with(".spout/") && !name.starts_with("/.spout/") {
                *counts.entry(body).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// Publishes 3,000 messages and kills a sidecar consuming them into the fake pachd 5
/// times; (redeliveries recognised, doubles committed).
fn kill_9_five_times_into_pfs(name: &str, options: &str) -> (u64, usize) {
    const COUNT: usize = 3000;
    let broker = broker();
    let queue = broker.queue(name);
    broker.publish(&queue, numbered(0..COUNT));
    let pachd = std::sync::Mutex::new(FakePachd::start(None, None));
    // pachd finishes each commit 0.2 s after FinishCommit: the batch is in the branch
    // that long before its verdict, so a kill often lands between the commit and the
    // acknowledgement, and the next run is given those messages again.
    pachd.lock().unwrap().faults(json!({"finish_delay": 0.2}));
    let sink = pachd.lock().unwrap().uri("events@master");
    let source = broker.uri(&queue, &format!("&prefetch=200{options}"));
    let recognised = kill_nine_five_times(
        &queue,
        || start(&source, &sink, &["--max-batch-messages", "50"]),
        || pfs_counts(&mut pachd.lock().unwrap(), "events").len(),
    );
    let doubles = doubles_of(&pfs_counts(&mut pachd.lock().unwrap(), "events"), COUNT);
    eprintln!("pfs:// {options}: {COUNT} messages, 5 kills: {recognised} redeliveries recognised, {doubles} doubles");
    (recognised, doubles)
}

#[test]
fn kill_9_five_times_into_pfs_recognises_the_redeliveries_of_committed_messages() {
    let (recognised, doubles) = kill_9_five_times_into_pfs("kill-pfs", "");
    assert_eq!(doubles, 0, "the window (10,000) is larger than the prefetch (200)");
    assert!(recognised > 0, "no kill landed between a commit and its acknowledgement");
}

#[test]
fn with_a_window_smaller_than_the_prefetch_redeliveries_are_committed_twice() {
    // The same kills with a window of 1: the redeliveries that the window no longer
    // recalls are the doubles, at most one prefetch per kill.
    let (_, doubles) = kill_9_five_times_into_pfs("kill-pfs-window", "&window=1");
    assert!(doubles > 0, "a window of 1 recalled every redelivery");
    assert!(doubles <= 5 * 200, "{doubles} doubles: more than 5 kills' prefetch");
}

#[test]
fn a_failed_batch_is_given_back_to_the_queue_and_committed_after() {
    let broker = broker();
    let queue = broker.queue("requeue");
    let mut pachd = FakePachd::start(None, None);
    let sink = pachd.uri("requeue@master");
    let sidecar = start(&broker.uri(&queue, ""), &sink, &["--max-batch-messages", "2", "--max-batch-age", "1h"]);
    let first = post(&sidecar.addr, "/messages?file=x", "text/plain", b"a file");
    assert_eq!(first.status, 202, "{}", first.text());
    sidecar.flush();
    // "x/y" makes x both a file and a directory: pachd fails the commit of the batch
    // that holds it, and the message from the queue with it.
    let clash = post(&sidecar.addr, "/messages?file=x/y", "text/plain", b"under a file");
    assert_eq!(clash.status, 202, "{}", clash.text());
    broker.publish(&queue, numbered(0..1));
    eventually(Duration::from_secs(30), "the batch to fail and its message to be given back", || {
        (sidecar.metric(&series("spout_source_acks_total", &queue, Some("requeue"))) == 1).then_some(())
    });
    // Given back, delivered again and alone in the open batch: the next message
    // seals it.
    eventually(Duration::from_secs(30), "the redelivery to be admitted", || {
        (sidecar.metric(&series("spout_source_messages_total", &queue, None)) == 2).then_some(())
    });
    let after = post(&sidecar.addr, "/messages?file=z", "text/plain", b"after");
    assert_eq!(after.status, 202, "{}", after.text());
    broker.wait_empty(&queue, Duration::from_secs(30));
    assert_eq!(sidecar.metric(&series("spout_source_acks_total", &queue, Some("ack"))), 1);
    assert!(sidecar.stop().success());
    let counts = pfs_counts(&mut pachd, "requeue");
    assert_eq!(counts.get(&b"message 0"[..]), Some(&1), "committed once, after the failure: {counts:?}");
}

#[test]
fn a_stalled_sink_stops_deliveries_at_the_prefetch_the_budget_allows() {
    let broker = broker();
    let queue = broker.queue("stall");
    let root = tempfile::tempdir().unwrap();
    let sink_root = root.path().join("commits");
    std::fs::create_dir(&sink_root).unwrap();
    let sink = format!("dir:{}", sink_root.display());
    // 256 KiB of budget: a prefetch of 4 deliveries of up to 64 KiB.
    let sidecar = start(&broker.uri(&queue, ""), &sink, &["--max-buffer-bytes", "256KiB"]);
    eventually(Duration::from_secs(10), "the source to consume with a prefetch of 4", || {
        sidecar.log().contains("consuming (prefetch 4)").then_some(())
    });
    // The sink's root turned into a file: every commit fails and is retried.
    std::fs::remove_dir(&sink_root).unwrap();
    std::fs::write(&sink_root, b"in the way").unwrap();
    let body = vec![b'x'; 1024];
    broker.publish(&queue, (0..100).map(|i| (Some(format!("s{i}")), [format!("{i:03}").as_bytes(), &body].concat())));
    eventually(Duration::from_secs(30), "4 deliveries taken", || {
        (sidecar.metric(&series("spout_source_messages_total", &queue, None)) == 4).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(broker.depth(&queue), (96, 4), "the broker holds back all but the prefetch");
    assert_eq!(sidecar.metric(&series("spout_source_messages_total", &queue, None)), 4);
    assert!(sidecar.metric("spout_buffer_bytes") <= 256 * 1024);

    std::fs::remove_file(&sink_root).unwrap();
    std::fs::create_dir(&sink_root).unwrap();
    broker.wait_empty(&queue, Duration::from_secs(60));
    assert!(sidecar.stop().success());
    let counts = dir_counts(&sink_root);
    assert_eq!(counts.len(), 100);
    assert!(counts.values().all(|&n| n == 1));
}

#[test]
fn a_queue_that_does_not_exist_exits_1_saying_so() {
    let broker = broker();
    let root = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", root.path().display());
    let mut sidecar = start(&broker.uri("no-such-queue", ""), &sink, &[]);
    let status = sidecar.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", sidecar.log());
    let log = sidecar.log();
    assert!(log.contains("NOT_FOUND") && log.contains("no-such-queue"), "{log}");
}

#[test]
fn a_dropped_connection_is_opened_again_and_nothing_is_lost_or_doubled() {
    const COUNT: usize = 4000;
    let broker = broker();
    let queue = broker.queue("dropped");
    broker.publish(&queue, numbered(0..COUNT));
    let root = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", root.path().display());
    let source = broker.uri(&queue, "&prefetch=200");
    let sidecar = start(&source, &sink, &["--max-batch-messages", "50"]);
    eventually(Duration::from_secs(30), "a first commit", || (!dir_counts(root.path()).is_empty()).then_some(()));
    broker.close_connections_of(&format!("spout-sidecar amqp.{queue}"));
    eventually(Duration::from_secs(30), "a second connection", || {
        (sidecar.log().matches("consuming (prefetch 200)").count() == 2).then_some(())
    });
    broker.wait_empty(&queue, Duration::from_secs(60));
    assert_eq!(sidecar.metric(&series("spout_source_up", &queue, None)), 1);
    let log = sidecar.log();
    assert_eq!(log.matches("broker unreachable, retrying").count(), 1, "{log}");
    assert!(sidecar.stop().success());
    assert_eq!(doubles_of(&dir_counts(root.path()), COUNT), 0);
}

#[test]
fn credentials_refused_exit_1_saying_so() {
    let broker = broker();
    let queue = broker.queue("refused");
    let root = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", root.path().display());
    let uri = broker.uri(&queue, "").replace("guest:guest@", "guest:wrong@");
    let mut sidecar = start(&uri, &sink, &[]);
    let status = sidecar.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", sidecar.log());
    let log = sidecar.log();
    let refused = log.lines().find(|l| l.contains("the broker refused")).unwrap_or_else(|| panic!("{log}"));
    assert!(refused.contains("ACCESS_REFUSED") && refused.contains("draining and exiting"), "{refused}");
    assert!(!log.contains("wrong"), "the password is not logged: {log}");
    assert_eq!(log.matches(" ERROR ").count(), 1, "one line says why: {log}");
}
