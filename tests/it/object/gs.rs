//! The `gs://` sink through the real binary, configured as a GKE pod would be: a
//! service-account key file in `GOOGLE_SERVICE_ACCOUNT`, with which `object_store`
//! signs its own JWTs, and the file's `gcs_base_url` pointing at the server.
//!
//! `object_store` speaks Cloud Storage's XML API (PUT, `list-type=2` listing,
//! multipart uploads), which Google made S3-compatible for interoperability, so the
//! server here is `moto_server`, an S3 server. The Python emulator the issue names,
//! gcp-storage-emulator (2026.7.19), serves only the JSON API's listing and answers
//! an XML PUT without an ETag, which the client rejects; no other GCS emulator is
//! available from the package registries this project installs from. What this
//! covers is the client's real requests, addressing and authentication headers; not
//! covered is how Cloud Storage itself judges a token.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::servers::{read_commits, Moto};
use crate::support::client::{get, post, request};
use crate::support::python;
use crate::support::sidecar::{eventually, Sidecar};

const BUCKET: &str = "spout-gs";

/// A service-account key file as the console downloads it, with a fresh RSA key
/// (object_store signs RS256 JWTs with it), addressed to `base_url`.
fn service_account(dir: &Path, base_url: &str) -> std::path::PathBuf {
    let path = dir.join("service-account.json");
    let script = r#"
import json, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption()).decode()
json.dump({"type": "service_account", "project_id": "spout-tests", "private_key_id": "k1",
           "private_key": pem, "client_email": "spout@spout-tests.iam.gserviceaccount.com",
           "gcs_base_url": sys.argv[2]}, open(sys.argv[1], "w"))
"#;
    let status = python::command().args(["-c", script]).arg(&path).arg(base_url).status().unwrap();
    assert!(status.success(), "writing the service-account file");
    path
}

fn start(key: &Path, sink: &str, extra: &[&str]) -> Sidecar {
    let mut args = vec!["--sink", sink, "--max-batch-age", "100ms"];
    args.extend_from_slice(extra);
    Sidecar::start_with(&args, |command: &mut Command| {
        command.env("GOOGLE_SERVICE_ACCOUNT", key);
    })
}

#[test]
fn gs_commits_read_back_and_a_missing_bucket_is_a_clear_state() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let scratch = tempfile::tempdir().unwrap();
    let key = service_account(scratch.path(), &format!("http://{}", moto.endpoint()));

    // Each framing, a 20 MiB message (a multipart upload) and the answer's keys.
    let sidecar = start(&key, &format!("gs://{BUCKET}/events"), &["--max-message-bytes", "64MiB"]);
    let addr = &sidecar.addr;
    let whole = post(addr, "/messages?wait=commit", "application/octet-stream", &[0, 1, 2, 255]);
    assert_eq!(whole.status, 200, "{}", whole.text());
    assert_eq!(post(addr, "/messages", "application/x-ndjson", b"{\"n\":1}\n{\"n\":2}\n").status, 202);
    let big: Vec<u8> = (0..(20u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let large = request(addr, "POST", "/messages?wait=commit", &[("Spout-File", "big.bin")], &big);
    assert_eq!(large.status, 200, "{}", large.text());
    sidecar.flush();

    let commits = read_commits(&moto.endpoint(), BUCKET, "events");
    let mut bodies: Vec<Vec<u8>> = commits.iter().flat_map(|c| c.objects.iter().map(|(_, b)| b.clone())).collect();
    assert!(bodies.contains(&big), "the 20 MiB object is not stored whole");
    bodies.retain(|b| *b != big);
    bodies.sort();
    assert_eq!(bodies, [&[0u8, 1, 2, 255][..], b"{\"n\":1}", b"{\"n\":2}"]);
    let commit = whole.json()["commit"].as_str().unwrap().to_owned();
    let first = commits.iter().find(|c| c.manifest["commit"] == commit.as_str()).expect("the answered commit");
    assert_eq!(whole.json()["objects"], serde_json::json!([first.objects[0].0]));
    assert_eq!(sidecar.metric(r#"spout_object_requests_total{op="complete_multipart",outcome="ok"}"#), 1);
    drop(sidecar);

    // One gzipped tar object per commit, read back with standard readers.
    let sidecar = start(&key, &format!("gs://{BUCKET}/tar"), &["--object-format", "tar", "--compression", "gzip"]);
    let answer = post(&sidecar.addr, "/messages?wait=commit", "application/x-ndjson", b"a\nb\n");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let commits = read_commits(&moto.endpoint(), BUCKET, "tar");
    let [(key_name, stored)] = &commits[0].objects[..] else { panic!("one tar object: {:?}", commits[0].manifest) };
    assert_eq!(answer.json()["objects"], serde_json::json!([key_name]));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&stored[..]));
    let mut entries = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut text = String::new();
        entry.unwrap().read_to_string(&mut text).unwrap();
        entries.push(text);
    }
    assert_eq!(entries, ["a", "b"]);
    drop(sidecar);

    // A missing bucket: one clear state, and nothing lost once it exists.
    let sidecar = start(&key, "gs://not-yet/d", &[]);
    assert_eq!(post(&sidecar.addr, "/messages", "text/plain", b"kept").status, 202);
    eventually(Duration::from_secs(10), "/readyz to name the bucket", || {
        let ready = get(&sidecar.addr, "/readyz");
        (ready.status == 503 && ready.text().contains("the bucket `not-yet` does not exist")).then_some(())
    });
    moto.create_bucket("not-yet");
    sidecar.flush();
    let commits = read_commits(&moto.endpoint(), "not-yet", "d");
    let stored: Vec<&[u8]> = commits.iter().flat_map(|c| c.objects.iter().map(|(_, b)| b.as_slice())).collect();
    assert_eq!(stored, [b"kept"]);
}
