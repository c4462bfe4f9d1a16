//! The `s3://` sink against a real local S3 server (`moto_server`, from
//! tests/requirements.txt), driven through the real binary: what each framing
//! becomes, the manifest, tar and compressed objects, multipart uploads, a missing
//! bucket and refused credentials, and the server dying mid-upload under load.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use super::servers::{read_commits, s3_env, Moto, Proxy, StoredCommit};
use crate::support::client::{get, post, request};
use crate::support::sidecar::{eventually, Sidecar};

const BUCKET: &str = "spout";

fn sidecar(sink: &str, extra: &[&str]) -> Sidecar {
    let mut args = vec!["--sink", sink, "--max-batch-age", "100ms"];
    args.extend_from_slice(extra);
    Sidecar::start_with(&args, s3_env)
}

/// Every object of every commit as (file name in the manifest, stored bytes).
fn files(commits: &[StoredCommit]) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for commit in commits {
        for (entry, (_, bytes)) in commit.manifest["objects"].as_array().unwrap().iter().zip(&commit.objects) {
            let name = entry["files"][0].as_str().unwrap().to_owned();
            assert!(files.insert(name.clone(), bytes.clone()).is_none(), "{name} committed twice");
        }
    }
    files
}

#[test]
fn every_framing_lands_as_objects_under_a_manifest() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let sink = format!("s3://{}/{BUCKET}/events/raw", moto.endpoint());
    let sidecar = sidecar(&sink, &[]);
    let addr = &sidecar.addr;

    let whole = post(addr, "/messages?wait=commit", "application/octet-stream", &[0, 1, 2, 255]);
    assert_eq!(whole.status, 200, "{}", whole.text());
    let named = request(addr, "POST", "/messages", &[("Spout-File", "users/42.json")], br#"{"user": 42}"#);
    assert_eq!(named.status, 202);
    assert_eq!(post(addr, "/messages", "application/x-ndjson", b"{\"n\":1}\n{\"n\":2}\n").status, 202);
    let frames = [&3u32.to_be_bytes()[..], b"abc", &0u32.to_be_bytes()].concat();
    assert_eq!(post(addr, "/messages", "application/vnd.spout.frames", &frames).status, 202);
    let form = b"--XX\r\nContent-Disposition: form-data; name=\"a\"; filename=\"form/part.txt\"\r\n\r\npart body\r\n--XX--\r\n";
    assert_eq!(post(addr, "/messages", "multipart/form-data; boundary=XX", form).status, 202);
    sidecar.flush();

    let commits = read_commits(&moto.endpoint(), BUCKET, "events/raw");
    let commit_id = whole.json()["commit"].as_str().unwrap().to_owned();
    let first = commits.iter().find(|c| c.manifest["commit"] == commit_id.as_str()).expect("the answered commit");
    let seq = whole.json()["first_seq"].as_u64().unwrap();
    assert_eq!((first.manifest["first_seq"].as_u64(), first.manifest["last_seq"].as_u64()), (Some(seq), Some(seq)));
    assert_eq!(first.objects[0].0, format!("events/raw/{commit_id}/msg-{seq:020}"));
    assert_eq!(whole.json()["objects"], serde_json::json!([first.objects[0].0]), "wait=commit names the object");
    assert_eq!(first.manifest["format"], "files");

    let files = files(&commits);
    let bodies: Vec<&[u8]> = files.values().map(Vec::as_slice).collect();
    assert_eq!(files["users/42.json"], br#"{"user": 42}"#);
    assert_eq!(files["form/part.txt"], b"part body");
    for expected in [&[0u8, 1, 2, 255][..], b"{\"n\":1}", b"{\"n\":2}", b"abc", b""] {
        assert!(bodies.contains(&expected), "{expected:?} not among {bodies:?}");
    }
    assert_eq!(files.len(), 7, "{:?}", files.keys());
    let messages: u64 = commits.iter().map(|c| c.manifest["messages"].as_u64().unwrap()).sum();
    assert_eq!(messages, 7);
}

#[test]
fn tar_and_compressed_objects_read_back_with_standard_readers() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let lines: Vec<String> = (0..500).map(|i| format!("{{\"line\": {i}}}")).collect();
    let ndjson = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    for (format, compression) in
        [("tar", None), ("tar", Some("gzip")), ("files", Some("zstd")), ("files", Some("gzip"))]
    {
        let dir = format!("{format}-{}", compression.unwrap_or("none"));
        let sink = format!("s3://{}/{BUCKET}/{dir}", moto.endpoint());
        let mut extra = vec!["--object-format", format, "--max-batch-messages", "100000"];
        if let Some(compression) = compression {
            extra.extend(["--compression", compression]);
        }
        let sidecar = sidecar(&sink, &extra);
        let answer = post(&sidecar.addr, "/messages?wait=commit", "application/x-ndjson", ndjson.as_bytes());
        assert_eq!(answer.status, 200, "{}", answer.text());
        let commits = read_commits(&moto.endpoint(), BUCKET, &dir);
        assert_eq!(commits.len(), 1, "{dir}");
        let commit = &commits[0];
        assert_eq!(commit.manifest["format"], format);
        assert_eq!(commit.manifest["compression"].as_str(), compression);
        let suffix = match compression {
            Some("gzip") => ".gz",
            Some("zstd") => ".zst",
            _ => "",
        };
        let mut bodies = Vec::new();
        for (key, stored) in &commit.objects {
            assert!(key.ends_with(suffix), "{key}");
            let plain = match compression {
                Some("gzip") => read_all(flate2::read::GzDecoder::new(&stored[..])),
                Some("zstd") => read_all(zstd::Decoder::new(&stored[..]).unwrap()),
                _ => stored.clone(),
            };
            if format == "tar" {
                assert!(key.ends_with(&format!(".tar{suffix}")), "{key}");
                let mut archive = tar::Archive::new(&plain[..]);
                for entry in archive.entries().unwrap() {
                    bodies.push(String::from_utf8(read_all(entry.unwrap())).unwrap());
                }
            } else {
                bodies.push(String::from_utf8(plain).unwrap());
            }
        }
        bodies.sort_by_key(|b| b.trim_start_matches("{\"line\": ").trim_end_matches('}').parse::<u32>().unwrap());
        assert_eq!(bodies, lines, "{dir}");
        assert_eq!(commit.objects.len(), if format == "tar" { 1 } else { 500 }, "{dir}");
        let mut stored: Vec<&str> = commit.objects.iter().map(|(key, _)| key.as_str()).collect();
        let answered = answer.json();
        let mut named: Vec<&str> =
            answered["objects"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
        stored.sort_unstable();
        named.sort_unstable();
        assert_eq!(named, stored, "wait=commit names every object of {dir}");
        drop(sidecar);
    }
}

fn read_all(mut reader: impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn large_objects_go_up_in_parts_and_small_ones_in_one_put() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let sink = format!("s3://{}/{BUCKET}/big", moto.endpoint());
    let sidecar = sidecar(&sink, &["--max-message-bytes", "64MiB"]);
    let big: Vec<u8> = (0..(20u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let answer = request(&sidecar.addr, "POST", "/messages?wait=commit", &[("Spout-File", "big.bin")], &big);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let small = request(&sidecar.addr, "POST", "/messages?wait=commit", &[("Spout-File", "small")], b"s");
    assert_eq!(small.status, 200);
    let files = files(&read_commits(&moto.endpoint(), BUCKET, "big"));
    assert!(files["big.bin"] == big, "the 20 MiB object differs");
    assert_eq!(files["small"], b"s");
    // 20 MiB in 8 MiB parts: three parts, one multipart upload; the rest single PUTs.
    assert_eq!(sidecar.metric(r#"spout_object_requests_total{op="put_part",outcome="ok"}"#), 3);
    assert_eq!(sidecar.metric(r#"spout_object_requests_total{op="complete_multipart",outcome="ok"}"#), 1);
    // The small object, and two manifests.
    assert_eq!(sidecar.metric(r#"spout_object_requests_total{op="put",outcome="ok"}"#), 3);
    assert!(sidecar.metric(r#"spout_object_request_bytes_total{op="put_part"}"#) == 20 << 20);
}

#[test]
fn a_missing_bucket_is_one_clear_state_and_nothing_is_lost_once_created() {
    let moto = Moto::start();
    let sink = format!("s3://{}/nobucket/d", moto.endpoint());
    let sidecar = sidecar(&sink, &[]);
    for i in 0..20 {
        assert_eq!(post(&sidecar.addr, "/messages", "text/plain", format!("m{i}").as_bytes()).status, 202);
    }
    let problems = eventually(Duration::from_secs(10), "/readyz to name the bucket", || {
        let ready = get(&sidecar.addr, "/readyz");
        (ready.status == 503 && ready.text().contains("the bucket `nobucket` does not exist")).then(|| ready.text())
    });
    assert!(problems.contains(" is down: "), "{problems}");
    let status = get(&sidecar.addr, "/status").json();
    assert_eq!(status["sink_state"], "down", "{status}");
    assert!(status["sink_error"].as_str().unwrap().starts_with("missing_bucket: the bucket `nobucket`"), "{status}");
    // Retries go on with backoff, but the log says it once.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sidecar.log().matches("sink missing_bucket:").count(), 1, "{}", sidecar.log());

    moto.create_bucket("nobucket");
    sidecar.flush();
    let mut bodies: Vec<Vec<u8>> = files(&read_commits(&moto.endpoint(), "nobucket", "d")).into_values().collect();
    bodies.sort();
    let mut expected: Vec<Vec<u8>> = (0..20).map(|i| format!("m{i}").into_bytes()).collect();
    expected.sort();
    assert_eq!(bodies, expected);
    eventually(Duration::from_secs(10), "ready again", || (get(&sidecar.addr, "/readyz").status == 200).then_some(()));
}

#[test]
fn refused_credentials_are_one_clear_state_and_nothing_is_lost_once_accepted() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    // From now on moto checks every request's key against its IAM, which knows none.
    moto.check_credentials_after(0);
    let sink = format!("s3://{}/{BUCKET}/auth", moto.endpoint());
    let sidecar = sidecar(&sink, &[]);
    for i in 0..10 {
        assert_eq!(post(&sidecar.addr, "/messages", "text/plain", format!("a{i}").as_bytes()).status, 202);
    }
    eventually(Duration::from_secs(10), "/readyz to say the credentials were refused", || {
        let ready = get(&sidecar.addr, "/readyz");
        (ready.status == 503 && ready.text().contains("the store refused the credentials")).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sidecar.log().matches("sink auth:").count(), 1, "{}", sidecar.log());
    // The key is accepted again (as when a policy is fixed): the held batches commit.
    moto.check_credentials_after(1_000_000);
    sidecar.flush();
    assert_eq!(files(&read_commits(&moto.endpoint(), BUCKET, "auth")).len(), 10);
}

#[test]
fn the_server_killed_mid_upload_loses_and_doubles_nothing() {
    const MESSAGES: usize = 20_000;
    const PER_REQUEST: usize = 100;
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let mut proxy = Proxy::start(moto.port);
    let sink = format!("s3://127.0.0.1:{}/{BUCKET}/chaos", proxy.port);
    let sidecar = sidecar(&sink, &["--object-format", "tar", "--max-batch-messages", "700"]);
    let addr = sidecar.addr.clone();
    let producer = std::thread::spawn(move || {
        for start in (0..MESSAGES).step_by(PER_REQUEST) {
            let mut body = Vec::new();
            for i in start..start + PER_REQUEST {
                writeln!(body, "message {i}").unwrap();
            }
            let answer = post(&addr, "/messages", "application/x-ndjson", &body);
            assert_eq!(answer.status, 202, "{}", answer.text());
        }
    });
    // Kill the server three times while the messages flow, each time mid-upload.
    for _ in 0..3 {
        eventually(Duration::from_secs(30), "an upload in flight", || {
            (sidecar.metric(r#"spout_object_requests_total{op="put",outcome="ok"}"#) > 0).then_some(())
        });
        std::thread::sleep(Duration::from_millis(150));
        proxy.kill();
        std::thread::sleep(Duration::from_millis(700));
        proxy.restart();
    }
    producer.join().unwrap();
    sidecar.flush();
    assert!(sidecar.metric(r#"spout_object_requests_total{op="put",outcome="error"}"#) > 0, "no request failed");
    assert!(sidecar.metric("spout_sink_retries_total") > 0);

    let commits = read_commits(&moto.endpoint(), BUCKET, "chaos");
    let mut seen = vec![0u32; MESSAGES];
    let mut sequences = Vec::new();
    for commit in &commits {
        let (first, last) =
            (commit.manifest["first_seq"].as_u64().unwrap(), commit.manifest["last_seq"].as_u64().unwrap());
        sequences.push((first, last));
        let mut archive = tar::Archive::new(&commit.objects[0].1[..]);
        let mut in_commit = 0;
        for entry in archive.entries().unwrap() {
            let line = String::from_utf8(read_all(entry.unwrap())).unwrap();
            let n: usize = line.strip_prefix("message ").unwrap().parse().unwrap();
            seen[n] += 1;
            in_commit += 1;
        }
        assert_eq!(in_commit, last - first + 1, "{}", commit.manifest);
    }
    let missing: Vec<usize> = (0..MESSAGES).filter(|&i| seen[i] == 0).collect();
    let doubled: Vec<usize> = (0..MESSAGES).filter(|&i| seen[i] > 1).collect();
    assert!(missing.is_empty() && doubled.is_empty(), "missing {missing:?}, doubled {doubled:?}");
    // Batches commit side by side, but their commit ids follow batch order.
    assert!(sequences.is_sorted(), "commit ids out of batch order: {sequences:?}");
    for pair in sequences.windows(2) {
        assert!(pair[0].1 < pair[1].0, "commits overlap: {pair:?}");
    }
}
