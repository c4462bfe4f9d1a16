//! The log shippers' settings in README.md, exercised: each `<!-- sender: NAME -->`
//! block is read, and the request that shipper makes for those settings is sent to the
//! real binary, as its source builds it (Fluent Bit's `out_http`, Vector's `http`
//! sink): the URI from the block, the `Content-Type` its format or codec and framing
//! give, the `Content-Encoding` its compression gives, its `User-Agent`, and the body
//! shape it writes. Every record must be committed as the JSON text that was sent.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::support::client;
use crate::support::sidecar::{dir_commits, Sidecar};

/// The settings of README's block `<!-- sender: NAME -->`: Fluent Bit's `Key Value`
/// lines or Vector's `key = "value"` lines, keys lower-cased.
fn settings(name: &str) -> BTreeMap<String, String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let marker = format!("<!-- sender: {name} -->");
    let block = readme.split(&marker).nth(1).unwrap_or_else(|| panic!("README.md has no `{marker}`"));
    let block = block.split("```").nth(1).expect("a code block follows the marker");
    let mut settings = BTreeMap::new();
    for line in block.lines().skip(1).map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('[')) {
        let (key, value) = match line.split_once(" = ") {
            Some((key, value)) => (key, value.trim_matches('"')),
            None => line.split_once(char::is_whitespace).expect("Key Value"),
        };
        settings.insert(key.trim().to_lowercase(), value.trim().to_owned());
    }
    settings
}

fn every_sender_block() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    readme.split("<!-- sender: ").skip(1).map(|rest| rest.split(" -->").next().unwrap().to_owned()).collect()
}

/// Compresses as the shipper does for its `compress`/`compression` setting, and names
/// the coding as it does in `Content-Encoding`.
fn compress(setting: Option<&str>, body: &[u8]) -> (Option<&'static str>, Vec<u8>) {
    match setting {
        None | Some("none") => (None, body.to_vec()),
        Some("gzip") => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(body).unwrap();
            (Some("gzip"), e.finish().unwrap())
        }
        // Vector's `zlib` is the zlib format, sent as `deflate`.
        Some("zlib") => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(body).unwrap();
            (Some("deflate"), e.finish().unwrap())
        }
        Some("zstd") => (Some("zstd"), zstd::encode_all(body, 3).unwrap()),
        Some(other) => panic!("no test compression for `{other}`"),
    }
}

/// A request as a shipper makes it.
struct Sent {
    target: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

/// Fluent Bit's records as `flb_pack_msgpack_to_json_format` writes them: the time
/// under `date` as a double first, non-ASCII escaped (`json.escape_unicode`, its default).
fn fluent_bit_records() -> Vec<String> {
    (0..50)
        .map(|i| {
            format!(
                r#"{{"date":1733058000.{i:06},"log":"GET /item/{i}?q=[a,b] 200 \"curl\" caf\u00e9","kubernetes":{{"pod_name":"web-{i}","labels":{{"app":"shop"}}}}}}"#
            )
        })
        .collect()
}

/// Vector's log events as its `json` codec writes them: fields in key order.
fn vector_records() -> Vec<String> {
    (0..50)
        .map(|i| {
            format!(
                r#"{{"host":"node-{i}","message":"line {i}: {{\"nested\": [1, 2]}} ]]","source_type":"demo_logs","timestamp":"2024-12-01T13:00:{:02}.123456789Z"}}"#,
                i % 60
            )
        })
        .collect()
}

fn fluent_bit(settings: &BTreeMap<String, String>, records: &[String]) -> Sent {
    let (content_type, body) = match settings["format"].as_str() {
        "json" => ("application/json", format!("[{}]", records.join(","))),
        "json_lines" => ("application/x-ndjson", records.iter().map(|r| format!("{r}\n")).collect()),
        other => panic!("no test body for Fluent Bit format {other}"),
    };
    let (coding, body) = compress(settings.get("compress").map(String::as_str), body.as_bytes());
    let mut headers = vec![("Content-Type", content_type.to_owned()), ("User-Agent", "Fluent-Bit".to_owned())];
    headers.extend(coding.map(|c| ("Content-Encoding", c.to_owned())));
    Sent { target: settings["uri"].clone(), headers, body }
}

fn vector(settings: &BTreeMap<String, String>, records: &[String]) -> Sent {
    assert_eq!(settings["encoding.codec"], "json");
    let (content_type, body) = match settings["framing.method"].as_str() {
        // Vector drops the last newline of a newline-delimited body.
        "newline_delimited" => ("application/x-ndjson", records.join("\n")),
        "character_delimited" => {
            assert_eq!(settings["framing.character_delimited.delimiter"], ",");
            ("application/json", format!("[{}]", records.join(",")))
        }
        other => panic!("no test body for Vector framing {other}"),
    };
    let (coding, body) = compress(settings.get("compression").map(String::as_str), body.as_bytes());
    let mut headers = vec![("Content-Type", content_type.to_owned()), ("User-Agent", "Vector/0.43.0".to_owned())];
    headers.extend(coding.map(|c| ("Content-Encoding", c.to_owned())));
    let uri = &settings["uri"];
    let target = uri.find("/messages").map(|at| uri[at..].to_owned()).expect("the URI names /messages");
    Sent { target, headers, body }
}

fn check(name: &str) {
    let settings = settings(name);
    let (sent, records) = if name.starts_with("fluent-bit") {
        let records = fluent_bit_records();
        (fluent_bit(&settings, &records), records)
    } else {
        let records = vector_records();
        (vector(&settings, &records), records)
    };
    let tmp = tempfile::tempdir().unwrap();
    let sink = format!("dir:{}", tmp.path().join("out").display());
    let sidecar = Sidecar::start(&["--sink", &sink, "--max-batch-age", "10ms"]);
    let headers: Vec<(&str, &str)> = sent.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let answer = client::request(&sidecar.addr, "POST", &sent.target, &headers, &sent.body);
    assert_eq!(answer.status, 202, "{name}: {}", answer.text());
    assert_eq!(answer.json()["accepted"], records.len(), "{name}");
    sidecar.flush();
    let committed: Vec<String> = dir_commits(&tmp.path().join("out"))
        .into_iter()
        .map(|(_, _, bytes)| String::from_utf8(bytes).unwrap())
        .collect();
    assert_eq!(committed, records, "{name}: each record committed as sent, in order");
}

#[test]
fn every_sender_block_of_the_readme_is_tested_here() {
    assert_eq!(every_sender_block(), ["fluent-bit json_lines", "fluent-bit json", "vector ndjson", "vector json"]);
}

#[test]
fn fluent_bit_json_lines() {
    check("fluent-bit json_lines");
}

#[test]
fn fluent_bit_json() {
    check("fluent-bit json");
}

#[test]
fn vector_ndjson() {
    check("vector ndjson");
}

#[test]
fn vector_json_array() {
    check("vector json");
}
