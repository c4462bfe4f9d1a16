//! Numbered NDJSON lines for the tests that push many messages through a sink: how
//! they are posted (retrying while the buffer is full) and the check that commits
//! hold each of them exactly once with its bytes unchanged.

use std::collections::BTreeSet;
use std::time::Duration;

use super::client::Connection;
use super::pachyderm_reader::Commit;

/// Line `i` of the NDJSON stream: unique, and long enough to need padding; one in a
/// thousand is 70-130 KB, a payload the `fifo:` sink lends to the pipe, not copies.
pub fn line(i: usize) -> String {
    let pad = if i % 1000 == 999 { 70_000 + i % 60_000 } else { i % 61 };
    format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(pad))
}

/// POSTs lines `range` as one NDJSON request, retrying while the buffer is full.
pub fn post_lines(conn: &mut Connection, range: std::ops::Range<usize>) {
    let body: String = range.map(|i| line(i) + "\n").collect();
    loop {
        let answer = conn.request("POST", "/messages", &[("Content-Type", "application/x-ndjson")], body.as_bytes());
        match answer.status {
            202 => return,
            503 => std::thread::sleep(Duration::from_millis(10)),
            other => panic!("unexpected {other}: {}", answer.text()),
        }
    }
}

/// Asserts that `commits` hold lines `0..count` exactly once each, under unique names.
pub fn assert_lines_exactly_once(commits: &[Commit], count: usize) {
    let files: Vec<&(String, Vec<u8>)> = commits.iter().flatten().collect();
    let names: BTreeSet<&String> = files.iter().map(|(name, _)| name).collect();
    assert_eq!(names.len(), files.len(), "file names are unique");
    let mut lines: Vec<String> = files.iter().map(|(_, data)| String::from_utf8(data.clone()).unwrap()).collect();
    lines.sort_by_key(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["n"].as_u64().unwrap());
    assert_eq!(lines.len(), count, "messages committed");
    assert!(lines.iter().enumerate().all(|(i, l)| *l == line(i)), "every line once, bytes unchanged");
}
