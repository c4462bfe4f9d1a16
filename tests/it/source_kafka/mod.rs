//! `--source kafka://`: the real sidecar reading a real Kafka-protocol broker
//! (tansu, see `broker`), into `dir:` and the fake pachd. Killed with SIGKILL at
//! random moments while it reads, it still commits every record exactly once and in
//! partition order; it starts where told without a checkpoint, exits 1 for a topic
//! that is not there, and stops fetching while its sink is stalled.

mod broker;
mod marker;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};

use self::broker::Broker;
use crate::pfs::fake::FakePachd;
use crate::support::sidecar::{dir_commits, eventually, Sidecar};

const PARTITIONS: i32 = 3;
const PER_PARTITION: usize = 10_000;
const ROUNDS: usize = 40;

fn value(partition: i32, index: usize) -> Vec<u8> {
    format!("p{partition}-{index:05}").into_bytes()
}

/// Produces `PER_PARTITION` records to each partition, in rounds a little apart, so
/// that the sidecar is killed while records still arrive as well as while it catches up.
fn produce_slowly(broker: &Broker, topic: &str) {
    let per_round = PER_PARTITION / ROUNDS;
    for round in 0..ROUNDS {
        for partition in 0..PARTITIONS {
            let values = (round * per_round..(round + 1) * per_round).map(|i| value(partition, i)).collect();
            broker.produce(topic, partition, values);
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}

/// Checks that `payloads`, in commit order, hold every record exactly once, each
/// partition's in offset order.
fn assert_exactly_once_in_order(payloads: &[Vec<u8>], per_partition: usize) {
    let mut seen: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for payload in payloads {
        let text = std::str::from_utf8(payload).unwrap();
        let (partition, index) = text.strip_prefix('p').and_then(|t| t.split_once('-')).expect("a produced record");
        seen.entry(partition.parse().unwrap()).or_default().push(index.parse().unwrap());
    }
    assert_eq!(seen.len(), PARTITIONS as usize);
    for (partition, indexes) in seen {
        let doubles = indexes.len() as i64 - per_partition as i64;
        let in_order = indexes.iter().copied().eq(0..per_partition);
        assert!(
            in_order,
            "partition {partition}: {} records ({doubles:+} against each once), not 0.. in order",
            indexes.len()
        );
    }
}

/// The sidecar reads `topic` into `sink`, killed 5 times at random moments while
/// the records arrive; `committed` reads the messages back in commit order. Returns
/// how many were committed at each kill.
fn kill_while_reading(broker: &Broker, topic: &str, sink: &str, committed: &mut dyn FnMut() -> Vec<Vec<u8>>) {
    let uri = broker.uri(topic, "");
    let args = [
        "--source",
        uri.as_str(),
        "--sink",
        sink,
        "--source-replica",
        "r1",
        "--max-batch-messages",
        "300",
        "--max-batch-age",
        "50ms",
    ];
    let mut at_kills = Vec::new();
    std::thread::scope(|scope| {
        scope.spawn(|| produce_slowly(broker, topic));
        for _ in 0..5 {
            let sidecar = Sidecar::start(&args);
            std::thread::sleep(Duration::from_millis(fastrand::u64(300..900)));
            sidecar.signal(Signal::KILL);
            drop(sidecar);
            at_kills.push(committed().len());
        }
    });
    let total = PER_PARTITION * PARTITIONS as usize;
    let started = std::time::Instant::now();
    let sidecar = Sidecar::start(&args);
    let payloads = eventually(Duration::from_secs(120), "every record committed", || {
        std::thread::sleep(Duration::from_millis(250)); // reading everything back is not free
        let payloads = committed();
        (payloads.len() >= total).then_some(payloads)
    });
    eprintln!("committed at the kills: {at_kills:?}, the rest in {:?}", started.elapsed());
    assert!(sidecar.stop().success());
    // Every kill came before the last record was committed, and commits landed between them.
    assert!(at_kills.iter().all(|&n| n < total), "a kill after the reading: {at_kills:?}");
    assert!(at_kills.iter().any(|&n| n > 0), "nothing committed between the kills: {at_kills:?}");
    assert_exactly_once_in_order(&payloads, PER_PARTITION);
    assert_eq!(committed().len(), total, "nothing more after the stop");
}

fn is_checkpoint(name: &str) -> bool {
    name.starts_with(".spout/")
}

fn dir_messages(root: &Path) -> Vec<Vec<u8>> {
    dir_commits(root).into_iter().filter(|(_, name, _)| !is_checkpoint(name)).map(|(_, _, body)| body).collect()
}

#[test]
fn killed_five_times_into_dir_every_record_is_committed_once_in_partition_order() {
    let broker = Broker::start();
    broker.create_topic("orders", PARTITIONS);
    // In memory: the test is about the kills, and a disk shared with builds makes
    // dir:'s fsyncs take seconds.
    let out = tempfile::tempdir_in("/dev/shm").unwrap();
    let sink = format!("dir:{}", out.path().display());
    kill_while_reading(&broker, "orders", &sink, &mut || dir_messages(out.path()));
    let checkpoint = dir_commits(out.path()).into_iter().rev().find(|(_, name, _)| is_checkpoint(name)).unwrap();
    assert_eq!(checkpoint.1, ".spout/checkpoints/kafka.orders.r1.json");
    let checkpoint: serde_json::Value = serde_json::from_slice(&checkpoint.2).unwrap();
    assert_eq!(checkpoint["offsets"], serde_json::json!({"0": 10000, "1": 10000, "2": 10000}));
}

#[test]
fn killed_five_times_into_pfs_every_record_is_committed_once_in_partition_order() {
    let broker = Broker::start();
    broker.create_topic("orders", PARTITIONS);
    let mut pachd = FakePachd::start(None, None);
    let sink = pachd.uri("orders@master");
    kill_while_reading(&broker, "orders", &sink, &mut || pfs_messages(&mut pachd, "orders"));
    let head = pachd.state().files("orders", "master");
    let checkpoint: serde_json::Value =
        serde_json::from_slice(&head[".spout/checkpoints/kafka.orders.r1.json"]).unwrap();
    assert_eq!(checkpoint["offsets"], serde_json::json!({"0": 10000, "1": 10000, "2": 10000}));
}

/// The messages at the head of `repo@master`, in the order they were admitted.
fn pfs_messages(pachd: &mut FakePachd, repo: &str) -> Vec<Vec<u8>> {
    let state = pachd.state();
    if !state.repos.iter().any(|r| r.name == repo && r.branches.contains_key("master")) {
        return Vec::new(); // the sidecar makes it when it first commits
    }
    let mut files: Vec<(String, Vec<u8>)> =
        state.files(repo, "master").into_iter().filter(|(name, _)| !is_checkpoint(name)).collect();
    // msg-<seq>: the sequence starts at the clock, so the names sort in admission order
    // across sidecars and restarts.
    files.sort();
    files.into_iter().map(|(_, body)| body).collect()
}

#[test]
fn a_partition_moved_to_another_replica_resumes_where_the_first_one_committed() {
    const EACH: usize = 1_000;
    let broker = Broker::start();
    broker.create_topic("moved", PARTITIONS);
    let produce = |indexes: std::ops::Range<usize>| {
        for partition in 0..PARTITIONS {
            broker.produce("moved", partition, indexes.clone().map(|i| value(partition, i)).collect());
        }
    };
    let mut pachd = FakePachd::start(None, None);
    let sink = pachd.uri("moved@master");
    let replica = |name: &str, partitions: &str| {
        let uri = broker.uri("moved", &format!("?partitions={partitions}"));
        Sidecar::start(&["--source", &uri, "--sink", &sink, "--source-replica", name, "--max-batch-messages", "100"])
    };
    let mut committed = |at_least: usize| {
        eventually(Duration::from_secs(60), &format!("{at_least} records committed"), || {
            std::thread::sleep(Duration::from_millis(250));
            let payloads = pfs_messages(&mut pachd, "moved");
            (payloads.len() >= at_least).then_some(payloads)
        })
    };
    // r1 reads 0 and 1, r2 reads 2, until they are killed.
    produce(0..EACH / 2);
    let (r1, r2) = (replica("r1", "0,1"), replica("r2", "2"));
    committed(EACH / 2 * PARTITIONS as usize);
    r1.signal(Signal::KILL);
    r2.signal(Signal::KILL);
    drop((r1, r2));
    // Partition 1 moves to r2, which never read it: it resumes at r1's offset, the
    // highest of the replicas' checkpoints, so its second half comes once.
    produce(EACH / 2..EACH);
    let (r1, r2) = (replica("r1", "0"), replica("r2", "1,2"));
    let payloads = committed(EACH * PARTITIONS as usize);
    assert!(r1.stop().success() && r2.stop().success());
    assert_exactly_once_in_order(&payloads, EACH);
}

/// `security.protocol=SSL`: every connection to the broker is TLS, trusting the CA
/// of `ssl.ca.location`; without it, the system's CAs do not know the broker's
/// certificate, and the source keeps retrying, down, saying why.
#[test]
fn brokers_behind_tls_are_read_with_the_ca_given_and_refused_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::tls::Pki::new(dir.path());
    let (cert, key) = pki.install("kafka");
    let broker = Broker::behind_tls(Path::new(&cert), Path::new(&key), Path::new(&pki.ca_file()));
    broker.create_topic("secret", 1);
    broker.produce("secret", 0, (0..100).map(|i| format!("tls-{i}").into_bytes()).collect());

    let untrusted = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", untrusted.path().display());
    let sidecar = Sidecar::start(&["--source", &broker.uri("secret", "?security.protocol=SSL"), "--sink", &sink]);
    eventually(Duration::from_secs(20), "a certificate error in the log", || {
        sidecar.log().contains("certificate").then_some(())
    });
    assert_eq!(sidecar.metric(r#"spout_source_up{source="kafka.secret"}"#), 0);
    assert!(dir_messages(untrusted.path()).is_empty());
    assert!(sidecar.stop().success());

    let out = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", out.path().display());
    let options = format!("?security.protocol=SSL&ssl.ca.location={}", pki.ca_file());
    let sidecar = Sidecar::start(&["--source", &broker.uri("secret", &options), "--sink", &sink]);
    eventually(Duration::from_secs(30), "the 100 records", || (dir_messages(out.path()).len() == 100).then_some(()));
    assert_eq!(sidecar.metric(r#"spout_source_up{source="kafka.secret"}"#), 1);
    assert!(sidecar.stop().success());
    let expected: Vec<Vec<u8>> = (0..100).map(|i| format!("tls-{i}").into_bytes()).collect();
    assert_eq!(dir_messages(out.path()), expected);
}

#[test]
fn without_a_checkpoint_start_latest_reads_only_what_comes_after() {
    let broker = Broker::start();
    broker.create_topic("late", 2);
    broker.produce("late", 0, vec![b"before".to_vec()]);
    let out = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", out.path().display());
    let sidecar = Sidecar::start(&["--source", &broker.uri("late", "?start=latest"), "--sink", &sink]);
    // The lag of a partition shows once its reader knows where it starts.
    eventually(Duration::from_secs(20), "both partitions' start", || {
        let metrics = crate::support::client::get(&sidecar.addr, "/metrics").text();
        let lags = metrics.lines().filter(|l| l.starts_with("spout_source_lag_messages{")).count();
        (lags == 2).then_some(())
    });
    broker.produce("late", 0, vec![b"after-0".to_vec()]);
    broker.produce("late", 1, vec![b"after-1".to_vec()]);
    eventually(Duration::from_secs(20), "the records produced after the start", || {
        (dir_messages(out.path()).len() == 2).then_some(())
    });
    assert_eq!(sidecar.metric(r#"spout_source_up{source="kafka.late"}"#), 1);
    assert!(sidecar.stop().success());
    let mut payloads = dir_messages(out.path());
    payloads.sort();
    assert_eq!(payloads, [b"after-0".to_vec(), b"after-1".to_vec()]);
}

#[test]
fn a_topic_or_partition_that_does_not_exist_exits_1_and_says_so() {
    let broker = Broker::start();
    let out = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", out.path().display());
    let mut sidecar = Sidecar::start(&["--source", &broker.uri("missing", ""), "--sink", &sink]);
    let status = sidecar.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", sidecar.log());
    let log = sidecar.log();
    assert!(log.contains("source kafka://127.0.0.1:"), "{log}");
    assert!(log.contains("/missing: topic `missing` does not exist"), "{log}");

    broker.create_topic("one", 1);
    let mut sidecar = Sidecar::start(&["--source", &broker.uri("one", "?partitions=0,5"), "--sink", &sink]);
    let status = sidecar.wait_exit(Duration::from_secs(30));
    let log = sidecar.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("topic `one` has no partition 5 (it has 0)"), "{log}");
}

#[test]
fn brokers_that_cannot_be_reached_are_retried_with_up_at_0_and_one_log_line() {
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", out.path().display());
    let uri = format!("kafka://127.0.0.1:{nobody}/orders");
    let sidecar = Sidecar::start(&["--source", &uri, "--sink", &sink]);
    eventually(Duration::from_secs(30), "the source to say it cannot reach the brokers", || {
        sidecar.log().contains("cannot reach the brokers, retrying").then_some(())
    });
    // Attempts go on (rskafka gives up on one after 5 s, the source tries again), and
    // the log says it once.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(sidecar.metric(r#"spout_source_up{source="kafka.orders"}"#), 0);
    let log = sidecar.log();
    assert_eq!(log.matches("cannot reach the brokers").count(), 1, "{log}");
    assert!(log.matches("Establishing new connection").count() > 2, "rskafka's attempts, logged by it: {log}");
    assert!(sidecar.stop().success(), "a source that is retrying stops with the sidecar");
}

#[test]
fn credentials_the_brokers_refuse_exit_1_and_say_so() {
    // tansu with authentication and no user: every SASL handshake fails.
    let broker = Broker::start_with(&["--authentication"]);
    let out = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", out.path().display());
    let uri = broker.uri("orders", "?security.protocol=SASL_PLAINTEXT&sasl.mechanism=SCRAM-SHA-256");
    let mut sidecar = Sidecar::start_with(&["--source", &uri, "--sink", &sink], |command| {
        command.env("SPOUT_KAFKA_USERNAME", "bob").env("SPOUT_KAFKA_PASSWORD", "wrong");
    });
    let status = sidecar.wait_exit(Duration::from_secs(60));
    let log = sidecar.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("the brokers refused the credentials"), "{log}");
    assert!(!log.contains("wrong"), "the password is not logged: {log}");
}

#[test]
fn a_stalled_sink_stops_the_fetching_and_memory_stays_bounded() {
    const RECORD: usize = 16 << 10;
    const RECORDS: usize = 6_000; // 94 MiB in the topic
    let broker = Broker::start();
    broker.create_topic("big", 1);
    let pachd = FakePachd::start(None, None);
    let sidecar = Sidecar::start(&[
        "--source",
        &broker.uri("big", ""),
        "--sink",
        &pachd.uri("big@master"),
        "--max-buffer-bytes",
        "4MiB",
        "--max-batch-bytes",
        "1MiB",
    ]);
    let baseline = sidecar.peak_rss_kib();
    // pachd stops answering: nothing commits, nothing frees the buffer.
    let pachd_pid = Pid::from_raw(pachd.pid() as i32).unwrap();
    kill_process(pachd_pid, Signal::STOP).unwrap();
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(64) {
        broker.produce("big", 0, chunk.iter().map(|i| vec![(i % 251) as u8; RECORD]).collect());
    }
    let read = r#"spout_source_bytes_total{source="kafka.big"}"#;
    let stalled = eventually(Duration::from_secs(30), "the source to stop reading", || {
        let before = sidecar.metric(read);
        std::thread::sleep(Duration::from_secs(1));
        (before > 0 && sidecar.metric(read) == before).then_some(before)
    });
    let peak = sidecar.peak_rss_kib();
    eprintln!("stalled after {stalled} bytes read; peak RSS {peak} KiB, {baseline} KiB at start");
    // The buffer's 4 MiB, a fetch and the batch at the sink: far from the topic's 94 MiB.
    assert!(stalled < 8 << 20, "read {stalled} bytes while the sink was stalled");
    assert!(peak - baseline < 48 << 10, "the peak RSS grew by {} KiB", peak - baseline);
    // The end offset is asked for while the reader waits, so the lag shows what waits in the topic.
    let lag = r#"spout_source_lag_messages{partition="0",source="kafka.big"}"#;
    eventually(Duration::from_secs(20), "the lag to show the records waiting", || {
        (sidecar.metric(lag) > 5_000).then_some(())
    });
    kill_process(pachd_pid, Signal::CONT).unwrap();
    eventually(Duration::from_secs(60), "reading to go on once pachd answers", || {
        (sidecar.metric(read) > 2 * stalled).then_some(())
    });
    assert!(sidecar.stop().success());
}
