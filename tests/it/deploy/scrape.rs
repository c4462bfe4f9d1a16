//! The metrics test: the real binary takes traffic over TCP, the Unix socket
//! and the raw socket, its /metrics is parsed with a Prometheus text-format parser, and
//! - every counter agrees with what was sent and with what the `dir:` sink holds;
//! - every family has a HELP line, and promtool's linter finds nothing to fix;
//! - every family, label and label value the dashboard and the alerts query exists.
//!
//! A second sidecar, on a named pipe nobody reads, shows the sink down with its
//! errors, as SpoutSinkDown expects to see it.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use prometheus_parse::{Scrape, Value};

use super::monitoring::Catalog;
use super::promql;
use crate::support::client::{self, Connection};
use crate::support::sidecar::{dir_commits, eventually, Sidecar};

const BUFFER_LIMIT: u64 = 64 << 20;

pub struct Scraped {
    pub text: String,
    scrape: Scrape,
}

pub fn scrape(addr: &str, headers: &[(&str, &str)]) -> Scraped {
    let response = client::request(addr, "GET", "/metrics", headers, b"");
    assert_eq!(response.status, 200, "GET /metrics: {}", response.text());
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "GET /metrics answers {content_type}, not the text format");
    let text = response.text();
    let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("the text format parses");
    Scraped { text, scrape }
}

impl Scraped {
    /// The sum of the plain samples named `series` that carry all of `labels`
    /// (histograms' `_sum` and `_count` are plain samples).
    pub fn value(&self, series: &str, labels: &[(&str, &str)]) -> f64 {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == series && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => panic!("{series} is a histogram; ask for {series}_count or {series}_sum"),
            })
            .sum()
    }

    fn add_to(&self, catalog: &mut Catalog) {
        for sample in &self.scrape.samples {
            let histogram = matches!(sample.value, Value::Histogram(_));
            let labels = sample.labels.iter().map(|(k, v)| (k.clone(), Some(v.clone())));
            catalog.add(&sample.metric, histogram, labels.collect::<Vec<_>>());
        }
    }
}

/// Messages `traffic` sends, by transport: 5 single POSTs and 3 NDJSON lines over
/// TCP, 4 POSTs over the Unix socket, 3 lines on the raw socket.
const SENT: [(&str, u64); 3] = [("http", 8), ("unix", 4), ("raw", 3)];
/// Requests answered 202: the single POSTs over TCP and the Unix socket.
const ACCEPTED_REQUESTS: f64 = 9.0;

/// Starts a sidecar with every transport, sends a known mix of good and bad requests,
/// commits everything and scrapes.
fn traffic(dir: &Path) -> (Sidecar, Scraped) {
    let sink = format!("dir:{}", dir.join("out").display());
    let socket = dir.join("http.sock");
    let raw = dir.join("raw.sock");
    let sidecar = Sidecar::start(&[
        "--sink",
        &sink,
        "--socket",
        socket.to_str().unwrap(),
        "--raw-socket",
        raw.to_str().unwrap(),
        "--max-message-bytes",
        "1KiB",
        "--max-batch-messages",
        "4",
        "--max-buffer-bytes",
        "64MiB",
    ]);
    let octets = [("Content-Type", "application/octet-stream")];
    for n in 0..5 {
        let answer = client::request(&sidecar.addr, "POST", "/messages", &octets, format!("tcp {n}").as_bytes());
        assert_eq!(answer.status, 202, "{}", answer.text());
    }
    let ndjson = client::post(
        &sidecar.addr,
        "/messages?wait=commit",
        "application/x-ndjson",
        b"{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n",
    );
    assert_eq!(ndjson.status, 200, "{}", ndjson.text());
    let mut unix = Connection::unix(&socket);
    for n in 0..4 {
        assert_eq!(unix.request("POST", "/messages", &octets, format!("unix {n}").as_bytes()).status, 202);
    }
    let mut stream = UnixStream::connect(&raw).expect("raw socket");
    stream.write_all(b"raw 0\nraw 1\nraw 2\n").unwrap();
    drop(stream);
    let too_large = client::request(&sidecar.addr, "POST", "/messages", &octets, &[b'x'; 2048]);
    assert_eq!(too_large.status, 413);
    let bad_name = client::request(&sidecar.addr, "POST", "/messages", &[("Spout-File", "../escape")], b"x");
    assert_eq!(bad_name.status, 422);
    let bad_frame = client::post(&sidecar.addr, "/messages", "application/vnd.spout.frames", &[0, 0, 0, 9, b'a']);
    assert_eq!(bad_frame.status, 400);
    eventually(Duration::from_secs(20), "the raw socket's 3 messages", || {
        (scrape(&sidecar.addr, &[]).value("spout_messages_received_total", &[("transport", "raw")]) == 3.0)
            .then_some(())
    });
    sidecar.flush();
    let scraped = scrape(&sidecar.addr, &[]);
    (sidecar, scraped)
}

/// A sidecar whose named pipe has no reader: the state Pachyderm 1.x shows while the
/// worker restarts, and what SpoutSinkDown is for.
fn sink_down(dir: &Path) -> (Sidecar, Scraped) {
    let pipe = dir.join("pipe");
    let made = Command::new("mkfifo").arg(&pipe).status().expect("mkfifo runs");
    assert!(made.success());
    let sink = format!("fifo:{}", pipe.display());
    let sidecar = Sidecar::start(&["--sink", &sink, "--max-batch-age", "10ms"]);
    let answer = client::post(&sidecar.addr, "/messages", "text/plain", b"waits for a reader");
    assert_eq!(answer.status, 202);
    let scraped = eventually(Duration::from_secs(30), "the sink to be down", || {
        let scraped = scrape(&sidecar.addr, &[]);
        (scraped.value("spout_sink_state", &[("state", "down")]) == 1.0).then_some(scraped)
    });
    (sidecar, scraped)
}

#[test]
fn counters_match_the_traffic_and_the_sink() {
    let tmp = tempfile::tempdir().unwrap();
    let (_sidecar, m) = traffic(tmp.path());
    let committed = dir_commits(&tmp.path().join("out"));
    let total: u64 = SENT.iter().map(|(_, n)| n).sum();
    for (transport, n) in SENT {
        assert_eq!(
            m.value("spout_messages_received_total", &[("transport", transport)]),
            n as f64,
            "{transport} messages"
        );
    }
    assert_eq!(committed.len() as u64, total, "files in the dir: sink");
    let bytes: usize = committed.iter().map(|(_, _, body)| body.len()).sum();
    assert_eq!(m.value("spout_bytes_received_total", &[]), bytes as f64, "payload bytes accepted = bytes committed");
    assert_eq!(m.value("spout_messages_committed_total", &[]), total as f64);
    let commits = committed.iter().map(|(id, _, _)| id).collect::<std::collections::BTreeSet<_>>().len() as f64;
    assert_eq!(m.value("spout_batches_committed_total", &[]), commits, "batches = commit directories");
    for histogram in
        ["spout_batch_messages", "spout_batch_bytes", "spout_commit_duration_seconds", "spout_accept_to_commit_seconds"]
    {
        assert_eq!(m.value(&format!("{histogram}_count"), &[]), commits, "{histogram}: one observation per commit");
    }
    assert_eq!(m.value("spout_batch_messages_sum", &[]), total as f64);
    assert_eq!(m.value("spout_batch_bytes_sum", &[]), bytes as f64);
    assert!(
        m.value("spout_batches_committed_total", &[("reason", "messages")]) >= 1.0,
        "--max-batch-messages 4 sealed batches"
    );
    // How many batches the age or /flush sealed depends on timing; the three reasons
    // together account for every commit.
    let by_reason: f64 = ["messages", "age", "flush"]
        .iter()
        .map(|reason| m.value("spout_batches_committed_total", &[("reason", reason)]))
        .sum();
    assert_eq!(by_reason, commits, "every commit has a documented reason");
    assert!(m.value("spout_ack_wait_seconds_count", &[]) >= 1.0, "the wait=commit request");
    assert_eq!(m.value("spout_requests_total", &[("code", "202")]), ACCEPTED_REQUESTS);
    for (code, reason) in [("413", "too_large"), ("422", "bad_file_name"), ("400", "bad_framing")] {
        assert_eq!(m.value("spout_requests_total", &[("code", code)]), 1.0, "answers {code}");
        assert_eq!(m.value("spout_messages_rejected_total", &[("reason", reason)]), 1.0, "rejected as {reason}");
    }
    assert_eq!(
        m.value("spout_request_duration_seconds_count", &[("route", "/messages"), ("code", "202")]),
        ACCEPTED_REQUESTS
    );
    assert_eq!(m.value("spout_buffer_bytes", &[]), 0.0, "all committed, nothing held");
    assert_eq!(m.value("spout_buffer_limit_bytes", &[]), BUFFER_LIMIT as f64);
    assert_eq!(m.value("spout_open_batch_messages", &[]), 0.0);
    assert_eq!(m.value("spout_sink_state", &[("state", "up")]), 1.0);
    assert_eq!(m.value("spout_sink_state", &[("state", "down")]), 0.0);
    // The crate counts CPU in whole seconds: a short test may not have used one yet.
    assert!(m.scrape.docs.contains_key("spout_process_cpu_seconds_total"), "CPU time is exported");
    for process in ["spout_process_resident_memory_bytes", "spout_process_open_fds", "spout_process_max_fds"] {
        assert!(m.value(process, &[]) > 0.0, "{process}");
    }
}

#[test]
fn every_family_is_documented_and_passes_the_promtool_linter() {
    let tmp = tempfile::tempdir().unwrap();
    let (_sidecar, m) = traffic(tmp.path());
    let families: std::collections::BTreeSet<&str> =
        m.text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_whitespace().next()).collect();
    assert!(families.len() > 20, "{families:?}");
    for family in families {
        assert!(family.starts_with("spout_"), "{family}: every family carries the spout_ prefix");
        assert!(m.scrape.docs.get(family).is_some_and(|help| !help.is_empty()), "{family} has no HELP");
    }
    let mut lint = super::promtool::promtool();
    let mut child = lint
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child.stdin.take().unwrap().write_all(m.text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && findings.trim().is_empty(), "promtool check metrics:\n{findings}");
}

#[test]
fn a_pipe_without_reader_shows_the_sink_down() {
    let tmp = tempfile::tempdir().unwrap();
    let (sidecar, m) = sink_down(tmp.path());
    assert_eq!(m.value("spout_sink_state", &[("state", "up")]), 0.0);
    assert!(m.value("spout_sink_errors_total", &[]) >= 1.0, "the failed opens are counted");
    assert!(m.value("spout_buffer_bytes", &[]) > 0.0, "the message waits in the buffer");
    assert_eq!(client::get(&sidecar.addr, "/readyz").status, 503, "not ready while the sink is down");
}

/// Every query's metrics, labels and `label="value"` matchers exist once the sidecar
/// has seen traffic, rejections and a sink outage.
#[test]
fn every_dashboard_and_alert_query_finds_its_series() {
    let (traffic_dir, down_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_a, healthy) = traffic(traffic_dir.path());
    let (_b, down) = sink_down(down_dir.path());
    let mut catalog = Catalog::default();
    healthy.add_to(&mut catalog);
    down.add_to(&mut catalog);
    catalog.assert_serves(&promql::all_queries(), true);
}
