//! The `pfs://` sink against a fake pachd built on Pachyderm's own published stubs
//! (tests/it/pfs/fake_pachd.py), driven as a real pipeline drives it: intake, batcher
//! and the sink thread. Needs `pip install -r tests/it/pfs/requirements.txt`.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use spout_sidecar::batch::Policy;
use spout_sidecar::encode::Layout;
use spout_sidecar::message::{file_name, Incoming, Payload};
use spout_sidecar::sink::SinkState;

use crate::pfs::fake::FakePachd;
use crate::pfs::pipeline::{logs, message, wait_until, Pipeline, Setup};

/// The bytes of message `i`: sizes from 0 to 300 bytes, every byte value.
fn body(i: usize) -> Vec<u8> {
    (0..i % 301).map(|j| (i.wrapping_mul(31) + j * 7) as u8).collect()
}

#[test]
fn a_hundred_thousand_messages_through_faults_land_once_each_in_order() {
    const MESSAGES: usize = 100_000;
    const PER_REQUEST: usize = 100;
    let mut pachd = FakePachd::start(None, None);
    pachd.faults(json!({
        "fail": [
            // The commit is made but the answer lost: the marker must tell, no second commit.
            {"method": "ModifyFile", "every": 4, "when": "after"},
            {"method": "ModifyFile", "every": 7, "when": "before"},
            {"method": "GetFile", "every": 5},
            {"method": "InspectCommit", "every": 6},
        ],
        // The stream breaks midway: nothing of it may land, the batch goes again.
        "cut_modify_file": {"every": 5, "after": 40},
        "finish_delay": 0.02,
    }));
    let mut setup = Setup::new(pachd.uri("events@master"));
    setup.policy = Policy { max_bytes: 8 << 20, max_messages: 2_500, max_age: Duration::from_millis(50) };
    let pipeline = Pipeline::start(setup);

    let mut sent = Vec::new();
    for r in 0..MESSAGES / PER_REQUEST {
        let messages = (0..PER_REQUEST).map(|k| message(None, body(r * PER_REQUEST + k))).collect();
        sent.push(pipeline.send(messages));
        if r == MESSAGES / PER_REQUEST / 3 {
            pachd.restart(0.3);
        }
    }
    let mut expected = HashMap::new();
    let mut by_commit: HashMap<String, Vec<String>> = HashMap::new();
    for (r, admitted) in sent.into_iter().enumerate() {
        let seqs = admitted.seqs;
        let receipt = pipeline.verdict(admitted).unwrap_or_else(|e| panic!("request {r}: {e}\n{}", logs()));
        for (k, seq) in (seqs.first..=seqs.last).enumerate() {
            expected.insert(file_name::default_name(seq), body(r * PER_REQUEST + k));
            by_commit.entry(receipt.commit.clone()).or_default().push(file_name::default_name(seq));
        }
    }
    pipeline.close();

    let state = pachd.state();
    let commits = state.commits_of("events");
    for commit in &commits {
        assert!(commit.finished && commit.error.is_empty(), "open or failed commit left: {commit:?}");
    }
    assert_eq!(commits.len(), by_commit.len(), "one commit per batch, none extra");
    let mut last_file = String::new();
    for (i, commit) in commits.iter().enumerate() {
        let mut changed: Vec<String> =
            commit.changed.iter().filter(|p| !crate::pfs::fake::is_marker(p)).cloned().collect();
        changed.sort();
        let mut named = by_commit[&commit.id].clone();
        named.sort();
        if changed != named {
            let written_twice = changed.windows(2).filter(|w| w[0] == w[1]).count();
            panic!(
                "commit {} must hold exactly its batch, each file once: {} file writes for {} \
                 files of its batch, {written_twice} written twice",
                commit.id,
                changed.len(),
                named.len()
            );
        }
        assert!(named[0] > last_file, "batches commit in order");
        last_file = named.last().unwrap().clone();
        let parent = i.checked_sub(1).map(|p| commits[p].id.clone());
        assert_eq!(commit.parent, parent, "one linear history on the branch");
    }
    let files = state.files("events", "master");
    assert_eq!(files.len(), MESSAGES);
    assert!(files == expected, "every message's bytes unchanged at the branch head");
    for method in ["GetFile", "InspectCommit"] {
        assert!(state.calls(method) > 0, "the faults exercised the recovery through {method}");
    }
}

#[test]
fn overwrite_replaces_a_file_and_append_extends_it() {
    let mut pachd = FakePachd::start(None, None);
    for (overwrite, repo) in [(false, "appended"), (true, "replaced")] {
        let mut setup = Setup::new(pachd.uri(repo));
        setup.overwrite = overwrite;
        let pipeline = Pipeline::start(setup);
        for text in ["first\n", "second\n"] {
            let admitted = pipeline.send(vec![message(Some("log/same.txt"), text)]);
            pipeline.verdict(admitted).expect("committed");
        }
        pipeline.close();
    }
    let state = pachd.state();
    assert_eq!(state.files("appended", "master")["log/same.txt"], b"first\nsecond\n");
    assert_eq!(state.files("replaced", "master")["log/same.txt"], b"second\n");
    for repo in ["appended", "replaced"] {
        assert_eq!(state.commits_of(repo).len(), 2, "a commit per batch in {repo}");
        assert_eq!(state.repos.iter().find(|r| r.name == repo).unwrap().kind, "user");
    }
}

#[test]
fn multi_mib_messages_go_in_pieces_under_the_grpc_limit() {
    let mut pachd = FakePachd::start(None, None);
    let mut setup = Setup::new(pachd.uri("big@master?project=default"));
    setup.policy.max_messages = 3;
    let pipeline = Pipeline::start(setup);
    // 21 MiB, over pachd's 20 MiB message limit, arriving as three slices.
    let big: Vec<Bytes> = (0..3u8).map(|k| Bytes::from(vec![b'a' + k; 7 << 20])).collect();
    let medium: Vec<u8> = (0..5 << 20).map(|i: u32| (i % 251) as u8).collect();
    let messages = vec![
        Incoming { name: Some("big.bin".into()), payload: Payload::from(big.clone()), line: false, origin: None },
        message(Some("medium.bin"), medium.clone()),
        message(Some("empty.bin"), Bytes::new()),
    ];
    let admitted = pipeline.send(messages);
    pipeline.verdict(admitted).expect("committed");
    pipeline.close();
    let state = pachd.state();
    let files = state.files("big", "master");
    assert_eq!(files["big.bin"], big.concat());
    assert_eq!(files["medium.bin"], medium);
    assert_eq!(files["empty.bin"], b"");
    assert!(state.max_piece <= 4 << 20, "pieces of a few MiB, not {}", state.max_piece);
    assert_eq!(state.commits_of("big").len(), 1);
}

#[test]
fn batch_layout_is_one_file_named_in_the_receipt() {
    let mut pachd = FakePachd::start(None, None);
    let mut setup = Setup::new(pachd.uri("lines@master"));
    setup.layout = Layout::Batch;
    setup.policy.max_messages = 3;
    let pipeline = Pipeline::start(setup);
    let lines = ["a", "bb", "ccc"]
        .map(|l| Incoming { name: None, payload: Bytes::from(l).into(), line: true, origin: None })
        .to_vec();
    let admitted = pipeline.send(lines);
    let receipt = pipeline.verdict(admitted).expect("committed");
    pipeline.close();
    let name = receipt.batch_file.clone().expect("the batch file's name");
    assert_eq!(pachd.state().files("lines", "master")[&name], b"a\nbb\nccc\n");
}

#[test]
fn a_wrong_token_is_reported_and_nothing_is_lost_once_it_is_fixed() {
    let mut pachd = FakePachd::start(Some("right-token"), None);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("pachd-token");
    std::fs::write(&token_file, "wrong-token\n").unwrap();
    let mut setup = Setup::new(pachd.uri("guarded@master"));
    setup.token_file = Some(token_file.clone());
    let pipeline = Pipeline::start(setup);
    wait_until("the idle sink's probe reports the refused token", || pipeline.health.state() != SinkState::Up);
    let admitted = pipeline.send(vec![message(Some("kept.txt"), "kept")]);

    let error = pipeline.health.last_error().unwrap();
    let source = format!("the token file {}", token_file.display());
    assert!(error.contains("pachd refused the token") && error.contains(&source), "{error}");
    wait_until("the refusal is logged", || logs().contains(&format!("pachd refused the token from {source}")));

    std::fs::write(&token_file, "right-token\n").unwrap();
    pipeline.verdict(admitted).expect("committed once the token is fixed");
    assert_eq!(pipeline.health.state(), SinkState::Up);
    pipeline.close();
    let state = pachd.state();
    assert_eq!(state.files("guarded", "master")["kept.txt"], b"kept");
    assert_eq!(state.commits_of("guarded").len(), 1);
}

/// A port of 127.0.0.1 bound by a socket that does not listen: connecting to it is
/// refused, as to a pachd that is down, and no other socket can take the port (the
/// other tests of this process and their children open many) until it is dropped.
struct ReservedPort {
    socket: socket2::Socket,
    port: u16,
}

fn reserve_port() -> ReservedPort {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let loopback = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
    socket.bind(&loopback.into()).expect("bind");
    let port = socket.local_addr().expect("getsockname").as_socket().expect("an IPv4 address").port();
    ReservedPort { socket, port }
}

#[test]
fn an_unreachable_pachd_is_down_until_it_comes_up() {
    let reserved = reserve_port();
    let port = reserved.port;
    let pipeline = Pipeline::start(Setup::new(format!("pfs://127.0.0.1:{port}/late")));
    wait_until("the idle sink's probe finds pachd down", || pipeline.health.state() == SinkState::Down);
    let admitted = pipeline.send(vec![message(Some("waited.txt"), "waited")]);

    drop(reserved.socket);
    let mut pachd = FakePachd::start(None, Some(port));
    pipeline.verdict(admitted).expect("committed once pachd is up");
    assert_eq!(pipeline.health.state(), SinkState::Up);
    pipeline.close();
    assert_eq!(pachd.state().files("late", "master")["waited.txt"], b"waited");
}

#[test]
fn giving_up_fails_the_batch_and_leaves_no_open_commit() {
    let mut pachd = FakePachd::start(None, None);
    pachd.faults(json!({"fail": [{"method": "ModifyFile", "every": 1}]}));
    let pipeline = Pipeline::start(Setup::new(pachd.uri("stuck@master")));
    let admitted = pipeline.send(vec![message(None, "never committed")]);
    wait_until("a few attempts failed", || pachd.state().calls("ModifyFile") >= 3);
    assert_eq!(pipeline.health.state(), SinkState::Down);

    pipeline.give_up();
    let error = pipeline.verdict(admitted).expect_err("given up");
    assert!(error.0.contains("gave up"), "{error}");
    pipeline.close();
    let state = pachd.state();
    assert!(state.commits_of("stuck").is_empty(), "no commit, open or not: {:?}", state.commits);
}

#[test]
fn an_open_commit_at_the_head_is_not_joined() {
    let mut pachd = FakePachd::start(None, None);
    let pipeline = Pipeline::start(Setup::new(pachd.uri("shared@master")));
    let first = pipeline.send(vec![message(Some("first.txt"), "first")]);
    pipeline.verdict(first).expect("committed");
    // Someone runs `pachctl start commit shared@master`.
    let theirs = pachd.start_commit("shared", "master");
    let admitted = pipeline.send(vec![message(Some("mine.txt"), "mine")]);
    wait_until("the open head is reported", || {
        pipeline.health.last_error().is_some_and(|e| e.contains(&format!("the branch head {theirs} is an open commit")))
    });
    assert!(pachd.state().commits.iter().find(|c| c.id == theirs).unwrap().changed.is_empty(), "not joined");

    pachd.finish_commit(&theirs);
    let receipt = pipeline.verdict(admitted).expect("committed once the head is finished");
    assert_ne!(receipt.commit, theirs);
    pipeline.close();
    let state = pachd.state();
    let mine = state.commits.iter().find(|c| c.id == receipt.commit).unwrap();
    assert_eq!(mine.parent.as_deref(), Some(theirs.as_str()), "a commit of its own, after theirs");
    assert_eq!(state.files("shared", "master")["mine.txt"], b"mine");
}
