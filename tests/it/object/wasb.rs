//! The `wasb://` sink against Azurite (npm `azurite`), through the real binary:
//! framings as objects under a manifest, tar and gzip objects read back, a missing
//! container and a wrong account key as one clear state. One test, one Azurite, the
//! scenarios in turn: Azurite's address reaches the reading client only through
//! the process environment (`AZURITE_BLOB_STORAGE_URL`), set once here.

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use super::servers::{read_store_commits, Azurite, AZURITE_ACCOUNT};
use crate::support::client::{get, post, request};
use crate::support::sidecar::{eventually, Sidecar};
use object_store::azure::MicrosoftAzureBuilder;

fn sidecar(azurite: &Azurite, sink: &str, extra: &[&str], key: Option<&str>) -> Sidecar {
    let mut args = vec!["--sink", sink, "--max-batch-age", "100ms"];
    args.extend_from_slice(extra);
    let url = azurite.url();
    Sidecar::start_with(&args, |command: &mut Command| {
        command.env("AZURE_STORAGE_USE_EMULATOR", "true").env("AZURITE_BLOB_STORAGE_URL", url);
        if let Some(key) = key {
            command.env("AZURE_STORAGE_ACCOUNT_KEY", key);
        }
    })
}

fn commits(container: &str, dir: &str) -> Vec<super::servers::StoredCommit> {
    let store = MicrosoftAzureBuilder::new().with_use_emulator(true).with_container_name(container).build().unwrap();
    read_store_commits(&store, dir)
}

#[test]
fn wasb_commits_read_back_and_faults_are_clear_states() {
    let azurite = Azurite::start();
    std::env::set_var("AZURITE_BLOB_STORAGE_URL", azurite.url());
    azurite.create_container("spout");
    let sink = format!("wasb://spout@{AZURITE_ACCOUNT}/events");

    // Framings: each message one object, named ones under their name.
    let plain = sidecar(&azurite, &sink, &[], None);
    let named = request(&plain.addr, "POST", "/messages?wait=commit", &[("Spout-File", "a/b.json")], b"{\"b\":1}");
    assert_eq!(named.status, 200, "{}", named.text());
    assert_eq!(post(&plain.addr, "/messages", "application/x-ndjson", b"one\ntwo\n").status, 202);
    let frames = [&2u32.to_be_bytes()[..], b"hi"].concat();
    assert_eq!(post(&plain.addr, "/messages", "application/vnd.spout.frames", &frames).status, 202);
    plain.flush();
    drop(plain);
    let found = commits("spout", "events");
    let mut bodies: Vec<Vec<u8>> = found.iter().flat_map(|c| c.objects.iter().map(|(_, b)| b.clone())).collect();
    bodies.sort();
    assert_eq!(bodies, [b"hi".to_vec(), b"one".to_vec(), b"two".to_vec(), b"{\"b\":1}".to_vec()]);
    let commit = named.json()["commit"].as_str().unwrap().to_owned();
    let keys: Vec<&str> = found.iter().flat_map(|c| c.objects.iter().map(|(k, _)| k.as_str())).collect();
    assert!(keys.contains(&format!("events/{commit}/a/b.json").as_str()), "{keys:?}");

    // One gzipped tar object per commit.
    let tar_sink = format!("wasb://spout@{AZURITE_ACCOUNT}/tars");
    let tarred = sidecar(&azurite, &tar_sink, &["--object-format", "tar", "--compression", "gzip"], None);
    let lines: String = (0..300).map(|i| format!("line {i}\n")).collect();
    let answer = post(&tarred.addr, "/messages?wait=commit", "application/x-ndjson", lines.as_bytes());
    assert_eq!(answer.status, 200, "{}", answer.text());
    drop(tarred);
    let found = commits("spout", "tars");
    assert_eq!(found.len(), 1);
    let (key, stored) = &found[0].objects[0];
    assert!(key.ends_with(".tar.gz"), "{key}");
    let mut plain_tar = Vec::new();
    flate2::read::GzDecoder::new(&stored[..]).read_to_end(&mut plain_tar).unwrap();
    let mut archive = tar::Archive::new(&plain_tar[..]);
    let mut read: Vec<String> = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut text = String::new();
        entry.unwrap().read_to_string(&mut text).unwrap();
        read.push(text);
    }
    let expected: Vec<String> = (0..300).map(|i| format!("line {i}")).collect();
    assert_eq!(read, expected);

    // A missing container: down, named, said once; created, everything lands.
    let missing = sidecar(&azurite, &format!("wasb://later@{AZURITE_ACCOUNT}/d"), &[], None);
    for i in 0..5 {
        assert_eq!(post(&missing.addr, "/messages", "text/plain", format!("m{i}").as_bytes()).status, 202);
    }
    eventually(Duration::from_secs(10), "/readyz to name the container", || {
        let ready = get(&missing.addr, "/readyz");
        (ready.status == 503 && ready.text().contains("the bucket `later` does not exist")).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(missing.log().matches("sink missing_bucket:").count(), 1, "{}", missing.log());
    azurite.create_container("later");
    missing.flush();
    assert_eq!(commits("later", "d").iter().map(|c| c.objects.len()).sum::<usize>(), 5);
    drop(missing);

    // A wrong account key: Azurite checks the signature and refuses it.
    let wrong = sidecar(&azurite, &sink, &[], Some("d3JvbmcgYWNjb3VudCBrZXk="));
    assert_eq!(post(&wrong.addr, "/messages", "text/plain", b"held").status, 202);
    eventually(Duration::from_secs(10), "/readyz to say the key was refused", || {
        let ready = get(&wrong.addr, "/readyz");
        (ready.status == 503 && ready.text().contains("the store refused the credentials")).then_some(())
    });
    assert_eq!(get(&wrong.addr, "/status").json()["sink_state"], "down");
}
