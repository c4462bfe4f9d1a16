//! The disk spool (`--spool-dir`) with the real binary: a 202 survives `kill -9`
//! (replayed at restart, exactly once into `dir:`, `pfs://` and `s3://`), damaged
//! spools are salvaged, a second sidecar is kept out, and a full disk answers 503 and
//! recovers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use spout_sidecar::spool::record::{claimed_len, HEADER_LEN};

use crate::object::servers::{read_commits, s3_env, Moto};
use crate::pfs::fake::FakePachd;
use crate::support::client::{self, Connection};
use crate::support::crash::kill_9_while_sending;
use crate::support::sidecar::{dir_commits, eventually, wait_exit, Sidecar, BIN};

/// Ids from here on are big messages (16 KB), to fill a small disk.
const BIG: u64 = 1 << 20;

/// Message `id`: unique, of a length that varies with it.
fn message(id: u64) -> String {
    let pad = if id >= BIG { 16_000 } else { (id % 97) as usize };
    format!("{{\"id\":{id},\"pad\":\"{}\"}}", "p".repeat(pad))
}

/// Sends NDJSON requests of 1 to 5 messages without waiting for commits, recording
/// the ids of every message answered 202, until the sidecar dies.
fn send_until_killed(addr: String, next_id: Arc<AtomicU64>, acked: Arc<Mutex<BTreeSet<u64>>>) {
    let Ok(mut conn) = std::net::TcpStream::connect(&addr).and_then(Connection::over_tcp) else { return };
    loop {
        let count = 1 + fastrand::u64(0..5);
        let first = next_id.fetch_add(count, Ordering::Relaxed);
        let body: String = (first..first + count).map(|id| message(id) + "\n").collect();
        match conn.try_request("POST", "/messages", &[("Content-Type", "application/x-ndjson")], body.as_bytes()) {
            Ok(answer) if answer.status == 202 => acked.lock().unwrap().extend(first..first + count),
            Ok(answer) if answer.status == 503 => std::thread::sleep(Duration::from_millis(5)),
            Ok(answer) => panic!("unexpected {}: {}", answer.status, answer.text()),
            // The connection died with the sidecar: this client's round is over.
            Err(_) => return,
        }
    }
}

/// Every message in the `dir:` commits under `root`, by id, with how often it is there.
fn committed_ids(root: &Path) -> BTreeMap<u64, usize> {
    let mut ids = BTreeMap::new();
    for (_, _, bytes) in dir_commits(root) {
        count(&mut ids, std::str::from_utf8(&bytes).unwrap());
    }
    ids
}

fn spool_args<'a>(sink: &'a str, spool: &'a str) -> Vec<&'a str> {
    vec!["--sink", sink, "--spool-dir", spool]
}

/// Commits whatever the spool held (replayed batches, then the open one) and stops;
/// returns the log.
fn drain(sidecar: Sidecar) -> String {
    // A backlog of thousands of objects into moto can take longer than the client's
    // 60 s read timeout on a loaded machine: then flush again, which waits for the rest.
    let flushed = (0..5)
        .find_map(|_| {
            let mut conn = Connection::tcp(&sidecar.addr);
            conn.try_request("POST", "/flush?wait=commit", &[("Content-Type", "text/plain")], b"").ok()
        })
        .expect("the backlog committed within 5 minutes");
    assert_eq!(flushed.status, 200, "{}", flushed.text());
    let (status, log) = sidecar.stop_with_log();
    assert!(status.success(), "{log}");
    log
}

/// Counts `message`, as committed, into `committed` (checking its bytes).
fn count(committed: &mut BTreeMap<u64, usize>, text: &str) {
    let value: serde_json::Value = serde_json::from_str(text).unwrap();
    let id = value["id"].as_u64().unwrap();
    assert_eq!(text, message(id), "bytes unchanged");
    *committed.entry(id).or_insert(0) += 1;
}

/// `ROUNDS` times: starts the sidecar on `sink` and `spool` (its command adjusted by
/// `env`), has 4 clients send without waiting for commits, and kills it with SIGKILL
/// 50 to 350 ms in. Then starts it once more and commits what is left. Returns the ids
/// answered 202, and how many messages the restarts replayed from the spool.
fn crash_rounds(sink: &str, spool: &str, env: fn(&mut Command)) -> (BTreeSet<u64>, u64) {
    const ROUNDS: usize = 20;
    const CLIENTS: usize = 4;
    let next_id = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut replayed = 0;
    for _ in 0..ROUNDS {
        let mut args = spool_args(sink, spool);
        args.extend(["--max-batch-age", "20ms", "--max-batch-messages", "64"]);
        let mut sidecar = Sidecar::start_with(&args, env);
        replayed += sidecar.metric("spout_spool_replayed_messages_total");
        let (next_id, acked) = (next_id.clone(), acked.clone());
        kill_9_while_sending(&mut sidecar, CLIENTS, move |addr| {
            send_until_killed(addr, next_id.clone(), acked.clone())
        });
    }
    let last = Sidecar::start_with(&spool_args(sink, spool), env);
    replayed += last.metric("spout_spool_replayed_messages_total");
    drain(last);
    let acked = Arc::try_unwrap(acked).unwrap().into_inner().unwrap();
    assert!(acked.len() > 1000, "only {} messages were answered 202", acked.len());
    assert!(replayed > 0, "no round left anything in the spool to replay: the test proved nothing");
    (acked, replayed)
}

/// Asserts every id in `acked` is committed once (`committed` counts each id found).
fn assert_each_once(acked: &BTreeSet<u64>, committed: &BTreeMap<u64, usize>) {
    let doubled: Vec<_> = committed.iter().filter(|(_, &n)| n > 1).collect();
    assert!(doubled.is_empty(), "committed more than once: {doubled:?}");
    let lost: Vec<_> = acked.iter().filter(|id| !committed.contains_key(id)).collect();
    assert!(lost.is_empty(), "{} of {} messages answered 202 are not committed: {lost:?}", lost.len(), acked.len());
}

#[test]
fn kill_9_at_random_moments_commits_every_202_exactly_once_into_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("out");
    let sink = format!("dir:{}", root.display());
    let (acked, replayed) = crash_rounds(&sink, &tmp.path().join("spool").display().to_string(), |_| {});
    let committed = committed_ids(&root);
    assert_each_once(&acked, &committed);
    eprintln!("{} answered 202, {} committed, {replayed} replayed at restarts", acked.len(), committed.len());
}

/// Every message in the files at the head of `spooled@master`, by id, with how often
/// it is there (a batch committed twice appends its files to themselves).
fn pfs_committed_ids(pachd: &mut FakePachd) -> BTreeMap<u64, usize> {
    let mut committed = BTreeMap::new();
    let state = pachd.state();
    if !state.repos.iter().any(|r| r.name == "spooled" && r.branches.contains_key("master")) {
        return committed;
    }
    for (_, bytes) in state.files("spooled", "master") {
        let mut values = serde_json::Deserializer::from_slice(&bytes).into_iter::<serde_json::Value>();
        let mut start = 0;
        while let Some(value) = values.next() {
            value.unwrap();
            count(&mut committed, std::str::from_utf8(&bytes[start..values.byte_offset()]).unwrap());
            start = values.byte_offset();
        }
    }
    committed
}

/// Every message in the commits under `events/` of the bucket `spooled`, by id, with
/// how often it is there (each manifest checked against its objects).
fn s3_committed_ids(moto: &Moto) -> BTreeMap<u64, usize> {
    let mut committed = BTreeMap::new();
    for commit in read_commits(&moto.endpoint(), "spooled", "events") {
        for (_, bytes) in &commit.objects {
            count(&mut committed, std::str::from_utf8(bytes).unwrap());
        }
    }
    committed
}

/// Into `pfs://` the marker file, named by the spool's writer id, holds the sequence
/// numbers of the writer's last landed batch, so a replayed batch that landed before
/// the crash is recognised at the branch head.
#[test]
fn kill_9_at_random_moments_commits_every_202_exactly_once_into_pfs() {
    let mut pachd = FakePachd::start(None, None);
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool").display().to_string();
    let (acked, replayed) = crash_rounds(&pachd.uri("spooled@master"), &spool, |_| {});
    let state = pachd.state();
    assert!(state.commits.iter().all(|c| c.finished && c.error.is_empty()), "no open or failed commit left");
    let committed = pfs_committed_ids(&mut pachd);
    assert_each_once(&acked, &committed);
    let writers = state.markers("spooled", "master").len();
    assert_eq!(writers, 1, "one writer across every restart");
    eprintln!("{} answered 202, {} committed, {replayed} replayed at restarts", acked.len(), committed.len());
}

/// Into `s3://` a commit is named by its batch's first seq, so a replayed batch finds
/// its own manifest if it committed before the crash, or writes over what it left.
#[test]
fn kill_9_at_random_moments_commits_every_202_exactly_once_into_s3() {
    let moto = Moto::start();
    moto.create_bucket("spooled");
    let tmp = tempfile::tempdir().unwrap();
    let sink = format!("s3://{}/spooled/events", moto.endpoint());
    let (acked, replayed) = crash_rounds(&sink, &tmp.path().join("spool").display().to_string(), s3_env);
    let committed = s3_committed_ids(&moto);
    assert_each_once(&acked, &committed);
    eprintln!("{} answered 202, {} committed, {replayed} replayed at restarts", acked.len(), committed.len());
}

/// Sends messages `ids` one request each, each answered 202, and returns the sidecar.
fn send_each(sidecar: &Sidecar, ids: std::ops::Range<u64>) {
    let mut conn = Connection::tcp(&sidecar.addr);
    for id in ids {
        let answer =
            conn.request("POST", "/messages", &[("Content-Type", "application/x-ndjson")], message(id).as_bytes());
        assert_eq!(answer.status, 202, "{}", answer.text());
    }
}

/// The segment files of a spool, oldest first.
fn segments(spool: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    found.sort();
    found
}

/// Where each record of a segment starts, from the lengths in their headers.
fn record_offsets(segment: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    while at + HEADER_LEN <= segment.len() {
        offsets.push(at);
        at += claimed_len(&segment[at..]) as usize;
    }
    assert_eq!(at, segment.len(), "whole records");
    offsets
}

#[test]
fn a_damaged_spool_is_salvaged_record_by_record_and_never_stops_start_up() {
    type Damage = fn(&mut Vec<u8>, &[usize]);
    let cases: [(&str, Damage, Option<u64>, &str); 5] = [
        ("truncated mid-record", |seg, at| seg.truncate(at[7] + HEADER_LEN + 8), None, "torn"),
        // Past the header and the one message's 12-byte index entry.
        ("a flipped byte in a payload", |seg, at| seg[at[3] + HEADER_LEN + 12 + 5] ^= 0x01, Some(3), "corrupt"),
        ("a flipped byte in a length", |seg, at| seg[at[5] + 9] ^= 0x10, Some(5), "corrupt"),
        ("a zero-filled tail", |seg, _| seg.resize(seg.len() + 8192, 0), None, ""),
        ("an empty segment", |_, _| {}, None, ""),
    ];
    for (case, damage, lost, kind) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let (root, spool) = (tmp.path().join("out"), tmp.path().join("spool"));
        let sink = format!("dir:{}", root.display());
        let spool_arg = spool.display().to_string();
        let mut args = spool_args(&sink, &spool_arg);
        args.extend(["--max-batch-age", "1h"]);
        let mut sidecar = Sidecar::start(&args);
        send_each(&sidecar, 0..8);
        sidecar.child.kill().unwrap();
        sidecar.child.wait().unwrap();
        let [segment] = &segments(&spool)[..] else { panic!("one segment") };
        let mut bytes = std::fs::read(segment).unwrap();
        let offsets = record_offsets(&bytes);
        assert_eq!(offsets.len(), 8, "a record per request of one message, nothing sealed yet");
        damage(&mut bytes, &offsets);
        std::fs::write(segment, &bytes).unwrap();
        if case == "an empty segment" {
            std::fs::write(spool.join("00000000000000000000.seg"), b"").unwrap();
        }

        let sidecar = Sidecar::start(&spool_args(&sink, &spool_arg));
        let quarantined = |kind: &str| sidecar.metric(&format!("spout_spool_quarantined_total{{kind=\"{kind}\"}}"));
        let expected_quarantine = u64::from(!kind.is_empty());
        assert_eq!(quarantined("corrupt") + quarantined("torn"), expected_quarantine, "{case}");
        if !kind.is_empty() {
            assert_eq!(quarantined(kind), 1, "{case}");
        }
        let truncated_last = case == "truncated mid-record";
        let expected: BTreeSet<u64> = (0..8).filter(|&id| Some(id) != lost && !(truncated_last && id == 7)).collect();
        assert_eq!(sidecar.metric("spout_spool_replayed_messages_total"), expected.len() as u64, "{case}");
        let log = drain(sidecar);
        let committed = committed_ids(&root);
        assert_eq!(committed.keys().copied().collect::<BTreeSet<_>>(), expected, "{case}: salvaged");
        assert!(committed.values().all(|&n| n == 1), "{case}: once each");
        let set_aside: Vec<_> = std::fs::read_dir(spool.join("quarantine"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        assert_eq!(set_aside.len() as u64, expected_quarantine, "{case}: {set_aside:?}");
        if let Some(path) = set_aside.first() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.ends_with(&format!(".{kind}")), "{case}: {name}");
            assert_eq!(log.matches("are not whole records").count(), 1, "{case}: logged once:\n{log}");
        }
    }
}

/// A sink the replay test can hold back from committing, and read back.
trait Holdable {
    fn sink(&self) -> String;
    /// Adjusts the sidecar's command (credentials).
    fn env(&self) -> fn(&mut Command) {
        |_| {}
    }
    /// Makes commits fail (and be retried) until [`Holdable::release`].
    fn hold(&mut self);
    fn release(&mut self);
    /// Every message committed, by id, with how often it is there.
    fn committed(&mut self) -> BTreeMap<u64, usize>;
    /// What the log says when a replayed batch is recognised as committed already.
    const RECOGNISED: &str;
}

struct Dir(PathBuf);

impl Holdable for Dir {
    fn sink(&self) -> String {
        format!("dir:{}", self.0.display())
    }
    fn hold(&mut self) {
        // The sink's root turned into a file.
        std::fs::remove_dir(&self.0).unwrap();
        std::fs::write(&self.0, b"in the way").unwrap();
    }
    fn release(&mut self) {
        std::fs::remove_file(&self.0).unwrap();
        std::fs::create_dir(&self.0).unwrap();
    }
    fn committed(&mut self) -> BTreeMap<u64, usize> {
        committed_ids(&self.0)
    }
    const RECOGNISED: &str = "is in place already: a previous run committed this batch";
}

impl Holdable for FakePachd {
    fn sink(&self) -> String {
        self.uri("spooled@master")
    }
    fn hold(&mut self) {
        self.faults(json!({"fail": [{"method": "ModifyFile", "every": 1}]}));
    }
    fn release(&mut self) {
        self.faults(json!({}));
    }
    fn committed(&mut self) -> BTreeMap<u64, usize> {
        pfs_committed_ids(self)
    }
    const RECOGNISED: &str = "a replayed batch had landed before the restart; not sending it again";
}

/// moto with the bucket `spooled` missing while held.
struct S3(Moto);

impl Holdable for S3 {
    fn sink(&self) -> String {
        format!("s3://{}/spooled/events", self.0.endpoint())
    }
    fn env(&self) -> fn(&mut Command) {
        s3_env
    }
    fn hold(&mut self) {}
    fn release(&mut self) {
        self.0.create_bucket("spooled");
    }
    fn committed(&mut self) -> BTreeMap<u64, usize> {
        s3_committed_ids(&self.0)
    }
    const RECOGNISED: &str = "a replayed batch had committed before the restart; not writing it again";
}

/// A crash between a batch's commit and the spool's record of it: the restart replays
/// the batch, which the sink must recognise as committed rather than commit again.
/// The batch is held back while the spool is copied, then committed, then the sidecar
/// killed and the copy put back.
fn a_replayed_batch_the_sink_holds_is_not_committed_twice<S: Holdable>(mut sink: S) {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, snapshot) = (tmp.path().join("spool"), tmp.path().join("snapshot"));
    let (uri, spool_arg) = (sink.sink(), spool.display().to_string());
    let mut args = spool_args(&uri, &spool_arg);
    args.extend(["--max-batch-messages", "10"]);
    let mut sidecar = Sidecar::start_with(&args, sink.env());
    sink.hold();
    send_each(&sidecar, 0..10);
    eventually(Duration::from_secs(10), "a failing commit", || {
        (sidecar.metric("spout_sink_retries_total") > 0).then_some(())
    });
    // The spool as a crash between the commit and its mark would leave it.
    std::fs::create_dir(&snapshot).unwrap();
    for segment in segments(&spool) {
        std::fs::copy(&segment, snapshot.join(segment.file_name().unwrap())).unwrap();
    }
    sink.release();
    eventually(Duration::from_secs(10), "the commit", || (sink.committed().len() == 10).then_some(()));
    sidecar.child.kill().unwrap();
    sidecar.child.wait().unwrap();
    for segment in segments(&spool) {
        std::fs::remove_file(segment).unwrap();
    }
    for saved in std::fs::read_dir(&snapshot).unwrap() {
        let saved = saved.unwrap().path();
        std::fs::copy(&saved, spool.join(saved.file_name().unwrap())).unwrap();
    }

    let sidecar = Sidecar::start_with(&spool_args(&uri, &spool_arg), sink.env());
    assert_eq!(sidecar.metric("spout_spool_replayed_messages_total"), 10);
    let log = drain(sidecar);
    assert_eq!(sink.committed(), (0..10).map(|id| (id, 1)).collect(), "once each");
    assert!(log.contains("sealed_batches=1"), "replayed as the batch it was: {log}");
    assert!(log.contains(S::RECOGNISED), "{log}");
}

#[test]
fn a_replayed_batch_already_in_dir_is_not_committed_twice() {
    let tmp = tempfile::tempdir().unwrap();
    a_replayed_batch_the_sink_holds_is_not_committed_twice(Dir(tmp.path().join("out")));
}

#[test]
fn a_replayed_batch_already_in_pfs_is_not_committed_twice() {
    a_replayed_batch_the_sink_holds_is_not_committed_twice(FakePachd::start(None, None));
}

#[test]
fn a_replayed_batch_already_in_s3_is_not_committed_twice() {
    a_replayed_batch_the_sink_holds_is_not_committed_twice(S3(Moto::start()));
}

#[test]
fn a_second_sidecar_on_the_same_spool_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool").display().to_string();
    let first_sink = format!("dir:{}", tmp.path().join("a").display());
    let first = Sidecar::start(&spool_args(&first_sink, &spool));
    let second_sink = format!("dir:{}", tmp.path().join("b").display());
    let mut second = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .args(spool_args(&second_sink, &spool))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut second, Duration::from_secs(20));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    let expected = format!(
        "spout-sidecar: cannot open the spool: the spool {spool} is in use by another sidecar (pid {}); \
         give each sidecar a --spool-dir of its own\n",
        first.child.id()
    );
    assert!(stderr.ends_with(&expected), "{stderr}");
    send_each(&first, 0..3);
    drain(first);
    assert_eq!(committed_ids(&tmp.path().join("a")).len(), 3, "the first one carries on");
}

/// A tmpfs of `size` mounted for one test, unmounted however the test ends.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&at).unwrap();
        Self::run(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", at.to_str().unwrap()]);
        Tmpfs(at)
    }

    /// Remounts `ro` or `rw`. Read-only waits until no file is open for writing there
    /// (the spool closes a segment once everything in it is committed).
    fn remount(&self, mode: &str) {
        let args = ["-o", &format!("remount,{mode}"), self.0.to_str().unwrap()];
        eventually(Duration::from_secs(10), "remounting", || Self::try_run(&args).then_some(()));
    }

    fn run(args: &[&str]) {
        assert!(Self::try_run(args), "mount {args:?} failed: this test needs root (CAP_SYS_ADMIN) for a small tmpfs");
    }

    fn try_run(args: &[&str]) -> bool {
        Command::new("mount").args(args).stderr(Stdio::null()).status().expect("run mount").success()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Waits for the log to hold `line` exactly `times` (one line per change of state).
fn logged(sidecar: &Sidecar, line: &str, times: usize) {
    let count = || sidecar.log().matches(line).count();
    eventually(Duration::from_secs(5), line, || (count() >= times).then_some(()));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(count(), times, "{line}:\n{}", sidecar.log());
}

/// Posts message `id` once: its status and error kind.
fn post_once(conn: &mut Connection, id: u64) -> (u16, String) {
    let answer = conn.request("POST", "/messages", &[("Content-Type", "application/x-ndjson")], message(id).as_bytes());
    let kind = if answer.status == 202 { String::new() } else { answer.json()["error"].as_str().unwrap().to_owned() };
    (answer.status, kind)
}

#[test]
fn a_full_or_read_only_spool_answers_503_accepts_nothing_it_refused_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(tmp.path().join("disk"), "1m");
    let root = tmp.path().join("out");
    let sink = format!("dir:{}", root.display());
    let spool = disk.0.join("spool").display().to_string();
    let mut args = spool_args(&sink, &spool);
    args.extend(["--max-batch-age", "1h", "--max-batch-bytes", "64MiB"]);
    let sidecar = Sidecar::start(&args);
    let mut conn = Connection::tcp(&sidecar.addr);
    let (mut acked, mut refused) = (BTreeSet::new(), BTreeSet::new());
    let mut id = BIG;
    while refused.is_empty() {
        assert!(id < BIG + 100, "1 MiB never filled");
        match post_once(&mut conn, id) {
            (202, _) => acked.insert(id),
            (503, kind) if kind == "spool_unwritable" => refused.insert(id),
            other => panic!("{other:?}"),
        };
        id += 1;
    }
    assert!(acked.len() > 30, "{} messages fit in 1 MiB", acked.len());
    for _ in 0..5 {
        assert_eq!(post_once(&mut conn, id), (503, "spool_unwritable".into()));
        refused.insert(id);
        id += 1;
    }
    let ready = client::get(&sidecar.addr, "/readyz");
    assert_eq!(ready.status, 503);
    assert!(ready.text().contains("the disk spool cannot be written"), "{}", ready.text());
    let status = client::get(&sidecar.addr, "/status").json();
    assert!(status["spool"]["error"].as_str().unwrap().contains("No space left on device"), "{status}");
    logged(&sidecar, "the spool cannot be written", 1);

    // Committing what it holds frees the disk (once the syncer lets go of a segment
    // it may be syncing); then requests are accepted again.
    sidecar.flush();
    eventually(Duration::from_secs(5), "a 202 once the disk has room", || {
        let answer = post_once(&mut conn, id);
        let accepted = answer.0 == 202;
        if accepted {
            acked.insert(id)
        } else {
            refused.insert(id)
        };
        id += 1;
        accepted.then_some(())
    });
    logged(&sidecar, "is writable again", 1);
    assert_eq!(client::get(&sidecar.addr, "/readyz").status, 200);

    // A file system remounted read-only (once the spool has nothing open to write,
    // all of it committed), then writable again.
    sidecar.flush();
    disk.remount("ro");
    assert_eq!(post_once(&mut conn, id), (503, "spool_unwritable".into()));
    refused.insert(id);
    id += 1;
    disk.remount("rw");
    assert_eq!(post_once(&mut conn, id), (202, String::new()));
    acked.insert(id);
    logged(&sidecar, "the spool cannot be written", 2);
    logged(&sidecar, "is writable again", 2);

    drain(sidecar);
    let committed = committed_ids(&root);
    assert_eq!(committed, acked.iter().map(|&id| (id, 1)).collect(), "every 202 once, no 503 committed");
}

/// The sidecar's resident memory, from /proc.
fn rss_bytes(sidecar: &Sidecar) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", sidecar.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// With a spool, a sink that lags holds its backlog on disk: ten times the memory
/// budget is answered 202 (`--when-full reject` would answer 503 were it held in
/// memory), resident memory stays within the budget and a margin for the process
/// itself, and everything lands once each when the sink is back.
#[test]
fn a_stalled_sink_s_backlog_waits_on_disk_not_in_memory() {
    const BUDGET: u64 = 8 << 20;
    const MARGIN: u64 = 48 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let mut root = Dir(tmp.path().join("out"));
    let (sink, spool) = (root.sink(), tmp.path().join("spool").display().to_string());
    let mut args = spool_args(&sink, &spool);
    args.extend(["--max-buffer-bytes", "8MiB", "--when-full", "reject", "--max-batch-messages", "100"]);
    let sidecar = Sidecar::start(&args);
    root.hold();
    let mut conn = Connection::tcp(&sidecar.addr);
    let mut peak = 0;
    // 100 messages of 16 KB a request: 80 MB in all.
    let (requests, per_request) = (50u64, 100u64);
    for request in 0..requests {
        let ids = BIG + request * per_request..BIG + (request + 1) * per_request;
        let body: String = ids.map(|id| message(id) + "\n").collect();
        let answer = conn.request("POST", "/messages", &[("Content-Type", "application/x-ndjson")], body.as_bytes());
        assert_eq!(answer.status, 202, "request {request}: {}", answer.text());
        peak = peak.max(rss_bytes(&sidecar));
    }
    assert!(sidecar.metric("spout_sink_retries_total") > 0, "the sink was stalled");
    assert!(peak < BUDGET + MARGIN, "resident memory reached {} MiB", peak >> 20);
    root.release();
    drain(sidecar);
    let committed = root.committed();
    assert_eq!(committed.len() as u64, requests * per_request);
    assert!(committed.values().all(|&n| n == 1), "once each");
    eprintln!("peak RSS {} MiB with {} MiB accepted", peak >> 20, (requests * per_request * 16_000) >> 20);
}
