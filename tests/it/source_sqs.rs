//! The `sqs://` source against a real `moto_server` (SQS and S3 on one port, from
//! tests/requirements.txt), each test with its own server: messages committed then
//! deleted, five SIGKILLs with nothing lost and nothing doubled, visibility kept
//! while the sink stalls, no receive while the buffer is full, S3 event notifications (moto delivers them itself) as
//! files named by their keys, and a queue that does not exist.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::object::servers::{s3_env, Moto, Proxy};
use crate::pfs::fake::FakePachd;
use crate::support::client;
use crate::support::sidecar::{dir_commits, eventually, Sidecar};

const ACCOUNT: &str = "123456789012";
/// Any signature goes until moto is told to check them; the scope names the region.
const AUTH: &str =
    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0";

/// A queue in moto, driven as another SQS client would.
struct Queue<'m> {
    moto: &'m Moto,
    name: String,
}

impl<'m> Queue<'m> {
    fn create(moto: &'m Moto, name: &str, visibility_secs: u64) -> Self {
        let queue = Self { moto, name: name.to_owned() };
        let attributes = json!({ "VisibilityTimeout": visibility_secs.to_string() });
        queue.call("CreateQueue", json!({ "QueueName": name, "Attributes": attributes }));
        queue
    }

    fn url(&self) -> String {
        format!("http://{}/{ACCOUNT}/{}", self.moto.endpoint(), self.name)
    }

    /// The `--source` URI, as it names the queue in AWS, sent to moto.
    fn source(&self, options: &str) -> String {
        let endpoint = self.moto.endpoint();
        format!("sqs://sqs.us-east-1.amazonaws.com/{ACCOUNT}/{}?endpoint=http://{endpoint}&wait=1s{options}", self.name)
    }

    fn call(&self, action: &str, body: Value) -> Value {
        let headers = [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("X-Amz-Target", &format!("AmazonSQS.{action}")),
            ("Authorization", AUTH),
        ];
        let answer = client::request(&self.moto.endpoint(), "POST", "/", &headers, body.to_string().as_bytes());
        assert_eq!(answer.status, 200, "{action}: {}", answer.text());
        answer.json()
    }

    fn send(&self, bodies: &[String]) {
        for chunk in bodies.chunks(10) {
            let entries: Vec<Value> =
                chunk.iter().enumerate().map(|(i, body)| json!({ "Id": i.to_string(), "MessageBody": body })).collect();
            let answer = self.call("SendMessageBatch", json!({ "QueueUrl": self.url(), "Entries": entries }));
            assert_eq!(answer["Successful"].as_array().map(Vec::len), Some(chunk.len()), "{answer}");
        }
    }

    /// Messages in the queue: (visible, in flight).
    fn counts(&self) -> (u64, u64) {
        let names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"];
        let answer = self.call("GetQueueAttributes", json!({ "QueueUrl": self.url(), "AttributeNames": names }));
        let count = |name: &str| answer["Attributes"][name].as_str().unwrap().parse().unwrap();
        (count(names[0]), count(names[1]))
    }

    /// What a competing consumer receives now, waiting up to `wait_secs`.
    fn receive(&self, wait_secs: u64) -> Vec<Value> {
        let body = json!({ "QueueUrl": self.url(), "MaxNumberOfMessages": 10, "WaitTimeSeconds": wait_secs });
        self.call("ReceiveMessage", body)["Messages"].as_array().cloned().unwrap_or_default()
    }
}

fn bodies(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("message-{i:05}")).collect()
}

/// How often each payload of a `dir:` sink's commits was committed, checkpoints left out.
fn committed(root: &std::path::Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, name, body) in dir_commits(root) {
        if !name.starts_with(".spout/") {
            *counts.entry(String::from_utf8(body).unwrap()).or_default() += 1;
        }
    }
    counts
}

/// The payloads of the files at a branch head of the fake pachd, checkpoints left out, sorted.
fn pfs_payloads(files: &std::collections::HashMap<String, Vec<u8>>) -> Vec<String> {
    let mut payloads: Vec<String> = files
        .iter()
        .filter(|(name, _)| !name.contains(".spout/"))
        .map(|(_, body)| String::from_utf8(body.clone()).unwrap())
        .collect();
    payloads.sort();
    payloads
}

/// How many commits a `dir:` sink holds.
fn commit_count(root: &std::path::Path) -> usize {
    let entries = std::fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name());
    entries.filter(|name| !name.to_string_lossy().starts_with('.')).count()
}

fn start(moto: &Moto, args: &[&str]) -> Sidecar {
    let port = moto.port;
    Sidecar::start_with(args, |command: &mut Command| {
        s3_env(command);
        command.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")).env("SPOUT_SOURCE_REPLICA", "r1");
    })
}

#[test]
fn messages_are_committed_then_deleted_and_counted() {
    let moto = Moto::start();
    let queue = Queue::create(&moto, "orders", 30);
    queue.send(&bodies(45));
    let out = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", out.path().display());
    let source = queue.source("");
    let sidecar = start(&moto, &["--sink", &sink, "--source", &source, "--max-batch-age", "200ms"]);

    eventually(Duration::from_secs(30), "45 messages committed", || (committed(out.path()).len() == 45).then_some(()));
    eventually(Duration::from_secs(10), "the queue emptied", || (queue.counts() == (0, 0)).then_some(()));
    assert!(committed(out.path()).values().all(|&n| n == 1));
    // The queue empties as moto takes the deletes, a moment before their answers come.
    let acks = r#"spout_source_acks_total{outcome="ack",source="sqs.orders"}"#;
    eventually(Duration::from_secs(10), "45 acks counted", || (sidecar.metric(acks) == 45).then_some(()));
    assert_eq!(sidecar.metric(r#"spout_source_messages_total{source="sqs.orders"}"#), 45);
    assert_eq!(sidecar.metric(r#"spout_source_up{source="sqs.orders"}"#), 1);
    assert_eq!(sidecar.metric(r#"spout_messages_received_total{transport="sqs"}"#), 45);
    let checkpoints: Vec<Vec<u8>> = dir_commits(out.path())
        .into_iter()
        .filter(|(_, name, _)| name == ".spout/checkpoints/sqs.orders.r1.json")
        .map(|(_, _, body)| body)
        .collect();
    let last: Value = serde_json::from_slice(checkpoints.last().expect("a checkpoint")).unwrap();
    assert_eq!(last["ids"].as_array().unwrap().len(), 45, "{last}");
    assert_eq!(last["source"], source.as_str());
    assert!(sidecar.stop().success());
}

#[test]
fn five_kills_lose_nothing_and_commit_nothing_twice() {
    const COUNT: usize = 300;
    let moto = Moto::start();
    let queue = Queue::create(&moto, "kills", 30);
    let all = bodies(COUNT);
    std::thread::scope(|scope| {
        for part in all.chunks(COUNT / 5) {
            let queue = &queue;
            scope.spawn(move || queue.send(part));
        }
    });
    let out = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", out.path().display());
    // A short visibility: what a killed sidecar held comes back 2 s later.
    let source = queue.source("&visibility=2s");
    let args = ["--sink", &sink, "--source", &source, "--max-batch-age", "50ms", "--max-batch-messages", "30"];
    let mut before = 0;
    for round in 0..5 {
        let mut sidecar = start(&moto, &args);
        // Killed while consuming: once it has committed some, at a random moment after.
        before = eventually(Duration::from_secs(60), "some messages committed", || {
            let now = committed(out.path()).len();
            (now >= before + 15).then_some(now)
        });
        if round % 2 == 0 {
            // Right after a commit lands: before its messages are deleted, if it can.
            let commits = commit_count(out.path());
            while commit_count(out.path()) == commits {
                std::thread::yield_now();
            }
        } else {
            std::thread::sleep(Duration::from_millis(fastrand::u64(0..200)));
        }
        sidecar.child.kill().unwrap();
        sidecar.child.wait().unwrap();
        eprintln!("kill {round}: {} committed so far", committed(out.path()).len());
    }
    assert!(committed(out.path()).len() < COUNT, "the last kill came while it was still consuming");
    let sidecar = start(&moto, &args);
    eventually(Duration::from_secs(120), "every message committed", || {
        (committed(out.path()).len() == COUNT).then_some(())
    });
    eventually(Duration::from_secs(20), "the queue emptied", || (queue.counts() == (0, 0)).then_some(()));
    let counts = committed(out.path());
    let doubles: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
    let recognised = sidecar.metric(r#"spout_source_acks_total{outcome="duplicate",source="sqs.kills"}"#);
    eprintln!("doubles: {}, redeliveries recognised by the last run: {recognised}", doubles.len());
    assert_eq!(counts.keys().cloned().collect::<Vec<_>>(), bodies(COUNT), "every message, nothing else");
    assert!(doubles.is_empty(), "with a window of 10000 > {COUNT}, no message is committed twice: {doubles:?}");
    assert!(sidecar.stop().success());
}

#[test]
fn a_redelivery_committed_by_another_replica_is_deleted_not_committed() {
    let moto = Moto::start();
    let queue = Queue::create(&moto, "dups", 30);
    queue.send(&["committed elsewhere".into(), "redelivered".into(), "new".into()]);
    // Another consumer receives two of them first, and lets them go at once: the
    // sidecar's receive is their second (ApproximateReceiveCount 2).
    let mut first = Vec::new();
    while first.len() < 2 {
        let body = json!({ "QueueUrl": queue.url(), "MaxNumberOfMessages": 2 - first.len(), "VisibilityTimeout": 0 });
        let got = queue.call("ReceiveMessage", body)["Messages"].as_array().cloned().unwrap_or_default();
        first.extend(got.into_iter().filter(|m| m["Body"] != "new"));
    }
    let elsewhere = first.iter().find(|m| m["Body"] == "committed elsewhere").expect("received")["MessageId"].clone();
    // Replica `other` committed it, with its checkpoint, before it could delete it.
    let out = tempfile::tempdir().unwrap();
    let checkpoints = out.path().join("00000000000000000001/.spout/checkpoints");
    std::fs::create_dir_all(&checkpoints).unwrap();
    let checkpoint = json!({ "source": "sqs://elsewhere", "ids": [elsewhere] });
    std::fs::write(checkpoints.join("sqs.dups.other.json"), checkpoint.to_string()).unwrap();

    let sink = format!("dir:{}", out.path().display());
    let source = queue.source("");
    let sidecar = start(&moto, &["--sink", &sink, "--source", &source, "--max-batch-age", "100ms"]);
    eventually(Duration::from_secs(30), "the queue emptied", || (queue.counts() == (0, 0)).then_some(()));
    let expected = BTreeMap::from([("new".to_owned(), 1), ("redelivered".to_owned(), 1)]);
    assert_eq!(committed(out.path()), expected);
    assert_eq!(sidecar.metric(r#"spout_source_acks_total{outcome="duplicate",source="sqs.dups"}"#), 1);
    assert_eq!(sidecar.metric(r#"spout_source_acks_total{outcome="ack",source="sqs.dups"}"#), 2);
    assert!(sidecar.stop().success());
}

#[test]
fn visibility_is_kept_while_the_sink_stalls_past_it() {
    let moto = Moto::start();
    let queue = Queue::create(&moto, "slow", 30);
    queue.send(&bodies(20));
    let mut pachd = FakePachd::start(None, None);
    // pachd finishes each commit 12 s after it was made, and the sink waits for
    // that: four times the visibility timeout.
    pachd.faults(json!({ "finish_delay": 12.0 }));
    let sink = pachd.uri("spout@master");
    let source = queue.source("&visibility=3s");
    let sidecar = start(&moto, &["--sink", &sink, "--source", &source, "--max-batch-age", "100ms"]);

    eventually(Duration::from_secs(20), "20 messages received", || {
        (sidecar.metric(r#"spout_source_messages_total{source="sqs.slow"}"#) == 20).then_some(())
    });
    // Another consumer polls the queue through the stall: nothing may come back.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        let stolen = queue.receive(1);
        assert!(stolen.is_empty(), "a held message became visible: {stolen:?}");
    }
    assert_eq!(queue.counts(), (0, 20), "held, not deleted before the commit");
    eventually(Duration::from_secs(30), "the queue emptied", || (queue.counts() == (0, 0)).then_some(()));
    let files = pachd.state().files("spout", "master");
    let payloads = pfs_payloads(&files);
    assert_eq!(payloads, bodies(20));
    assert!(files.keys().any(|name| name.ends_with(".spout/checkpoints/sqs.slow.r1.json")), "{:?}", files.keys());
    assert_eq!(sidecar.metric(r#"spout_source_messages_total{source="sqs.slow"}"#), 20, "each received once");
    assert!(sidecar.stop().success());
}

#[test]
fn a_full_buffer_stops_the_receives() {
    let moto = Moto::start();
    let queue = Queue::create(&moto, "pressed", 30);
    queue.send(&bodies(100));
    let mut pachd = FakePachd::start(None, None);
    // Commits finish 3 s late; 16 KiB of budget holds 30 messages (512 bytes of
    // overhead each), so the fourth receive's ten wait for room.
    pachd.faults(json!({ "finish_delay": 3.0 }));
    let sink = pachd.uri("spout@master");
    let args =
        ["--sink", &sink, "--source", &queue.source(""), "--max-batch-age", "100ms", "--max-buffer-bytes", "16KiB"];
    let sidecar = start(&moto, &args);
    let received = r#"spout_source_messages_total{source="sqs.pressed"}"#;
    eventually(Duration::from_secs(20), "the first messages received", || (sidecar.metric(received) > 0).then_some(()));
    std::thread::sleep(Duration::from_secs(2));
    assert!(sidecar.metric(received) <= 40, "received {} with room for 30", sidecar.metric(received));
    assert!(queue.counts().0 >= 60, "left in the queue: {:?}", queue.counts());
    eventually(Duration::from_secs(60), "the queue emptied", || (queue.counts() == (0, 0)).then_some(()));
    let payloads = pfs_payloads(&pachd.state().files("spout", "master"));
    assert_eq!(payloads, bodies(100));
    assert!(sidecar.stop().success());
}

#[test]
fn s3_event_notifications_become_files_named_by_their_keys() {
    let moto = Moto::start();
    let queue = Queue::create(&moto, "events", 30);
    moto.create_bucket("uploads");
    let arn = format!("arn:aws:sqs:us-east-1:{ACCOUNT}:events");
    let config = format!(
        "<NotificationConfiguration><QueueConfiguration><Queue>{arn}</Queue>\
         <Event>s3:ObjectCreated:*</Event></QueueConfiguration></NotificationConfiguration>"
    );
    s3(&moto, "PUT", "/uploads?notification", config.as_bytes());
    let objects = [("in/a-1.json", "{\"a\":1}"), ("in/b_2.txt", "bee"), ("top.csv", "x,y\n1,2\n")];
    for (key, body) in objects {
        s3(&moto, "PUT", &format!("/uploads/{key}"), body.as_bytes());
    }
    // Gone before the sidecar reads it: skipped. A key with a space is no file name: left.
    s3(&moto, "PUT", "/uploads/gone.txt", b"gone");
    s3(&moto, "DELETE", "/uploads/gone.txt", b"");
    s3(&moto, "PUT", "/uploads/has%20space.txt", b"space");

    let out = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", out.path().display());
    let source = format!("sqs://sqs.us-east-1.amazonaws.com/{ACCOUNT}/events?mode=s3-events&wait=1s&visibility=30s");
    let sidecar = start(&moto, &["--sink", &sink, "--source", &source, "--max-batch-age", "100ms"]);

    let stem = r#"source="sqs.events""#;
    eventually(Duration::from_secs(30), "the test event, the gone object and the bad key settled", || {
        let skipped = sidecar.metric(&format!(r#"spout_source_acks_total{{outcome="skipped",{stem}}}"#));
        let refused = sidecar.metric(&format!(r#"spout_source_acks_total{{outcome="refused",{stem}}}"#));
        (skipped == 2 && refused == 1).then_some(())
    });
    eventually(Duration::from_secs(30), "the three objects committed", || {
        let files: BTreeMap<String, Vec<u8>> = dir_commits(out.path())
            .into_iter()
            .filter(|(_, name, _)| !name.starts_with(".spout/"))
            .map(|(_, name, body)| (name, body))
            .collect();
        (files.len() == 3).then_some(files)
    })
    .into_iter()
    .zip(objects)
    .for_each(|((name, body), (key, expected))| {
        assert_eq!((name.as_str(), body.as_slice()), (key, expected.as_bytes()))
    });
    eventually(Duration::from_secs(10), "only the refused notification left, in flight", || {
        (queue.counts() == (0, 1)).then_some(())
    });
    let (status, log) = sidecar.stop_with_log();
    assert!(log.contains("has space.txt"), "{log}");
    assert!(status.success(), "{log}");
}

#[test]
fn an_sqs_that_goes_away_is_retried_and_read_again_when_back() {
    let moto = Moto::start();
    let queue = Queue::create(&moto, "flaky", 30);
    let mut proxy = Proxy::start(moto.port);
    let out = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", out.path().display());
    let port = proxy.port;
    let source = format!("sqs://sqs.us-east-1.amazonaws.com/{ACCOUNT}/flaky?endpoint=http://127.0.0.1:{port}&wait=1s");
    let sidecar = start(&moto, &["--sink", &sink, "--source", &source, "--max-batch-age", "100ms"]);
    let up = r#"spout_source_up{source="sqs.flaky"}"#;
    let all = bodies(20);
    queue.send(&all[..10]);
    eventually(Duration::from_secs(30), "the first ten committed", || {
        (committed(out.path()).len() == 10).then_some(())
    });
    eventually(Duration::from_secs(10), "the queue emptied", || (queue.counts() == (0, 0)).then_some(()));

    proxy.kill();
    eventually(Duration::from_secs(10), "the source down", || (sidecar.metric(up) == 0).then_some(()));
    // Sent once the long poll cut with the connection is over: moto would hand
    // messages to it, and they would come back only after their visibility timeout.
    std::thread::sleep(Duration::from_millis(1500));
    queue.send(&all[10..]);
    proxy.restart();
    eventually(Duration::from_secs(30), "the other ten committed", || {
        (committed(out.path()).len() == 20).then_some(())
    });
    assert_eq!(sidecar.metric(up), 1);
    assert_eq!(committed(out.path()).into_keys().collect::<Vec<_>>(), all);
    let (status, log) = sidecar.stop_with_log();
    assert_eq!(log.matches("; retrying").count(), 1, "one line when it went away:\n{log}");
    assert!(log.contains("cannot reach SQS at http://127.0.0.1:"), "{log}");
    assert!(status.success(), "{log}");
}

#[test]
fn a_queue_that_does_not_exist_exits_1() {
    let moto = Moto::start();
    let out = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", out.path().display());
    let source = format!("sqs://sqs.us-east-1.amazonaws.com/{ACCOUNT}/missing?endpoint=http://{}", moto.endpoint());
    let mut sidecar = start(&moto, &["--sink", &sink, "--source", &source]);
    let status = sidecar.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", sidecar.log());
    let said = format!("the queue https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/missing does not exist");
    assert!(sidecar.log().contains(&said), "{}", sidecar.log());
}

#[test]
fn credentials_sqs_refuses_exit_1() {
    let moto = Moto::start();
    let queue = Queue::create(&moto, "locked", 30);
    // From now on moto checks signatures against the keys its IAM knows: none.
    moto.check_credentials_after(0);
    let out = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", out.path().display());
    let mut sidecar = start(&moto, &["--sink", &sink, "--source", &queue.source("")]);
    let status = sidecar.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", sidecar.log());
    assert!(sidecar.log().contains("SQS refused the credentials: "), "{}", sidecar.log());
}

/// One request to moto's S3, as another client would make it.
fn s3(moto: &Moto, method: &str, target: &str, body: &[u8]) {
    let auth = AUTH.replace("/sqs/", "/s3/");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/octet-stream")];
    let answer = client::request(&moto.endpoint(), method, target, &headers, body);
    assert!(answer.status / 100 == 2, "{method} {target}: {} {}", answer.status, answer.text());
}
