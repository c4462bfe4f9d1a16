//! Figures of a run, printed as a table and written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::load::Measured;
use crate::pin::Pinning;
use crate::verify::Verdict;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Option<Latency> {
        let ms = |us: u64| us as f64 / 1000.0;
        (!histogram.is_empty()).then(|| Latency {
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: String,
    /// The load and sink, for the record (`null` for baselines that take none).
    pub scenario: Option<serde_json::Value>,
    pub seconds: f64,
    pub requests_per_sec: f64,
    /// Messages accepted per second of load.
    pub messages_per_sec: f64,
    /// Messages per second until the last of them was committed (load time plus the
    /// final `/flush?wait=commit`).
    pub committed_messages_per_sec: f64,
    /// Payload megabytes (10^6) accepted per second of load.
    pub mb_per_sec: f64,
    pub committed_mb_per_sec: f64,
    pub latency: Option<Latency>,
    /// How late the harness's client sent requests after they were due: the part of
    /// `latency` that is its own queueing, which the server never sees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag: Option<Latency>,
    /// Connections an open loop opened during the run to send its requests on time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added_connections: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
    /// Which cores the server and the harness ran on.
    pub pinning: Option<Pinning>,
    pub accepted_requests: u64,
    pub refused_requests: u64,
    pub failed_requests: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub verify: Option<Verdict>,
    pub errors: Vec<String>,
    /// Every message accounted for (or, for a baseline without a sink, no failure).
    pub ok: bool,
}

impl Report {
    /// A report from a load, `drain` being the time after it until all was committed.
    pub fn from_load(name: &str, measured: &Measured, drain: Duration) -> Report {
        let secs = measured.elapsed.as_secs_f64().max(1e-9);
        let committed_secs = secs + drain.as_secs_f64();
        Report {
            name: name.to_owned(),
            scenario: None,
            seconds: secs,
            requests_per_sec: measured.accepted_requests as f64 / secs,
            messages_per_sec: measured.messages as f64 / secs,
            committed_messages_per_sec: measured.messages as f64 / committed_secs,
            mb_per_sec: measured.bytes as f64 / 1e6 / secs,
            committed_mb_per_sec: measured.bytes as f64 / 1e6 / committed_secs,
            latency: Latency::of(&measured.latency),
            send_lag: Latency::of(&measured.lag),
            added_connections: (measured.added_connections > 0).then_some(measured.added_connections),
            peak_rss_bytes: None,
            pinning: None,
            accepted_requests: measured.accepted_requests,
            refused_requests: measured.refused_requests,
            failed_requests: measured.failed_requests,
            statuses: measured.statuses.clone(),
            verify: None,
            errors: measured.errors.clone(),
            ok: measured.failed_requests == 0 && measured.accepted_requests > 0,
        }
    }

    /// A report of bytes or messages moved in `elapsed`, without requests.
    pub fn from_transfer(name: &str, messages: u64, bytes: u64, elapsed: Duration) -> Report {
        let mut measured = Measured::empty();
        measured.messages = messages;
        measured.bytes = bytes;
        measured.elapsed = elapsed;
        let mut report = Report::from_load(name, &measured, Duration::ZERO);
        report.ok = messages > 0 || bytes > 0;
        report
    }

    pub fn verified(mut self, verdict: Verdict) -> Report {
        self.ok = self.ok && verdict.ok;
        self.verify = Some(verdict);
        self
    }
}

/// Why `report` is not ok: its errors, and the check's findings if it failed.
pub fn failure(report: &Report) -> String {
    let mut why: Vec<String> = report.errors.clone();
    if let Some(v) = &report.verify {
        if !v.ok {
            why.push(format!(
                "check failed: accepted {}, found {}, missing {}, duplicated {}, corrupt {}, refused but committed {}, never sent {}",
                v.accepted, v.found, v.missing, v.duplicated, v.corrupt, v.refused_but_committed, v.never_sent
            ));
            why.extend(v.errors.iter().cloned());
        }
    }
    why.join("; ")
}

/// A run's outcome as progress: its row (or its error) on stderr, and into
/// `failures` if it failed or its check did.
pub fn noted(name: &str, outcome: anyhow::Result<Report>, failures: &mut Vec<String>) -> Option<Report> {
    match outcome {
        Ok(report) => {
            if !report.ok {
                failures.push(format!("{name}: {}", failure(&report)));
            }
            eprintln!("{}", table(std::slice::from_ref(&report)).lines().nth(2).unwrap_or_default());
            Some(report)
        }
        Err(e) => {
            failures.push(format!("{name}: {e:#}"));
            eprintln!("{name}: FAILED: {e:#}");
            None
        }
    }
}

fn si(value: f64) -> String {
    match value {
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// The reports as an aligned text table.
pub fn table(reports: &[Report]) -> String {
    let header = [
        "run",
        "req/s",
        "msg/s",
        "committed msg/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "peak RSS",
        "check",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    for r in reports {
        let lat = |f: fn(&Latency) -> f64| r.latency.as_ref().map(|l| format!("{:.2}", f(l))).unwrap_or("-".into());
        let check = match (&r.verify, r.ok) {
            (Some(v), true) => format!("ok {}/{}", v.found, v.accepted),
            (Some(v), false) => format!("FAIL missing {} dup {} corrupt {}", v.missing, v.duplicated, v.corrupt),
            (None, true) => "n/a".into(),
            (None, false) => "FAIL".into(),
        };
        rows.push(vec![
            r.name.clone(),
            if r.accepted_requests > 0 { si(r.requests_per_sec) } else { "-".into() },
            si(r.messages_per_sec),
            si(r.committed_messages_per_sec),
            format!("{:.1}", r.mb_per_sec),
            lat(|l| l.p50_ms),
            lat(|l| l.p99_ms),
            lat(|l| l.p999_ms),
            lat(|l| l.max_ms),
            r.peak_rss_bytes.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0)).unwrap_or("-".into()),
            check,
        ]);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| rows.iter().map(|row| row[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(out, "|-{}-|", rule.join("-|-"));
        }
    }
    out
}
