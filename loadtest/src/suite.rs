//! The suite: the throughput and memory targets, each a sidecar scenario measured next to the
//! baseline it is judged against, in one run on one machine, reported as ratios
//! with PASS or MISS.

use std::time::Duration;

use serde::Serialize;

use crate::baselines::{self, PipeWriter};
use crate::body::Framing;
use crate::load::Sizes;
use crate::pin::Pinning;
use crate::report::{self, Report};
use crate::run;
use crate::scenario::{Client, Harness, Layout, Scenario, Sink};

#[derive(Debug, Clone, clap::Args)]
pub struct SuiteOptions {
    /// How long each scenario and baseline runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// How long the 2x overload lasts (the target says 60 s).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub overload_duration: Duration,

    /// How fast the slow FIFO reader of the overload drains, MB/s (a twentieth of it
    /// with 100 B messages): the load offered is twice what it drains.
    #[arg(long, default_value_t = 100.0)]
    pub overload_drain: f64,

    /// The sidecar's --max-batch-age in the wait=commit scenario.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub commit_age: Duration,

    /// Runs of each scenario and its baseline, interleaved; targets use the medians.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,

    /// Run only the scenarios whose names contain one of these.
    #[arg(long, value_name = "NAME")]
    pub only: Vec<String>,

    /// Exit non-zero when a target is missed, not only when a message is lost.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub target: String,
    pub measured: Option<f64>,
    pub required: f64,
    pub unit: String,
    /// Whether the measure must be at least (else at most) `required`.
    pub at_least: bool,
    pub pass: Option<bool>,
}

impl Target {
    /// `measured` must be at least (`at_least`) or at most `required`.
    fn new(target: &str, measured: Option<f64>, required: f64, unit: &str, at_least: bool) -> Target {
        let pass = measured.map(|m| if at_least { m >= required } else { m <= required });
        Target { target: target.into(), measured, required, unit: unit.into(), at_least, pass }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
}

impl Machine {
    pub fn here() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine { cores: crate::pin::cores(), cpu }
    }
}

#[derive(Debug, Serialize)]
pub struct SuiteReport {
    pub machine: Machine,
    pub pinning: Pinning,
    pub reports: Vec<Report>,
    pub targets: Vec<Target>,
    pub failures: Vec<String>,
}

struct Runner<'a> {
    options: &'a SuiteOptions,
    harness: &'a Harness,
    reports: Vec<Report>,
    failures: Vec<String>,
}

impl Runner<'_> {
    fn wanted(&self, name: &str) -> bool {
        self.options.only.is_empty() || self.options.only.iter().any(|o| name.contains(o.as_str()))
    }

    /// Records a report, or the error that kept it from being made.
    fn keep(&mut self, name: &str, outcome: anyhow::Result<Report>) -> Option<Report> {
        let mut report = report::noted(name, outcome, &mut self.failures)?;
        report.pinning = Some(self.harness.pinning());
        self.reports.push(report.clone());
        Some(report)
    }

    async fn sidecar(&mut self, scenario: Scenario) -> Option<Report> {
        if !self.wanted(&scenario.name) {
            return None;
        }
        let outcome = run::run(&scenario, self.harness).await;
        self.keep(&scenario.name, outcome)
    }

    async fn http_ceiling(&mut self, scenario: Scenario) -> Option<Report> {
        if !self.wanted(&scenario.name) {
            return None;
        }
        let outcome = baselines::http_ceiling(&scenario, self.harness).await;
        self.keep(&scenario.name, outcome)
    }

    async fn blocking(
        &mut self,
        name: &str,
        f: impl FnOnce(&str, &Harness) -> anyhow::Result<Report> + Send + 'static,
    ) -> Option<Report> {
        if !self.wanted(name) {
            return None;
        }
        let (owned, harness) = (name.to_owned(), self.harness.clone());
        let outcome = tokio::task::spawn_blocking(move || f(&owned, &harness)).await.map_err(anyhow::Error::from);
        self.keep(name, outcome.and_then(|r| r))
    }
}

fn base(name: &str, duration: Duration) -> Scenario {
    let mut s = Scenario::named(name);
    s.duration = duration;
    s
}

/// The run whose `key` is the median (the upper one of an even count).
fn median(mut runs: Vec<Report>, key: fn(&Report) -> f64) -> Option<Report> {
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let middle = runs.len() / 2;
    runs.into_iter().nth(middle)
}

fn requests(r: &Report) -> f64 {
    r.requests_per_sec
}

fn committed(r: &Report) -> f64 {
    r.committed_messages_per_sec
}

fn committed_mb(r: &Report) -> f64 {
    r.committed_mb_per_sec
}

fn peak_rss_mib(r: &Report) -> f64 {
    r.peak_rss_bytes.unwrap_or(0) as f64 / 1048576.0
}

fn p99_ms(r: &Report) -> f64 {
    r.latency.map(|l| l.p99_ms).unwrap_or(f64::INFINITY)
}

/// Runs every scenario and baseline and judges the targets. Each scenario runs
/// `--repeat` times, interleaved with its baseline so both see the same machine, and
/// the targets take the medians.
pub async fn run_suite(options: &SuiteOptions, harness: &Harness) -> SuiteReport {
    let d = options.duration;
    let repeat = options.repeat.max(1);
    let label = |name: &str, k: usize| if repeat > 1 { format!("{name}#{}", k + 1) } else { name.to_owned() };
    let mut r = Runner { options, harness, reports: Vec::new(), failures: Vec::new() };
    let mut targets = Vec::new();
    let ratio = |a: &Option<Report>, b: &Option<Report>, f: fn(&Report) -> f64| match (a, b) {
        (Some(a), Some(b)) if f(b) > 0.0 => Some(f(a) / f(b)),
        _ => None,
    };

    // 1. The client: the harness's own, where it is still used (framings, open loops),
    //    against wrk on the bare server; and single-message POSTs, wrk-driven, the
    //    sidecar against the bare hyper server.
    let single = |name: &str, client: Client| {
        let mut s = base(name, d);
        (s.size, s.connections, s.sink, s.client) = (Sizes::fixed(100), 64, Sink::Fifo(None), client);
        s
    };
    let (mut ceilings, mut own_clients, mut singles) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..repeat {
        ceilings.extend(r.http_ceiling(single(&label("http-ceiling-wrk", k), Client::Wrk)).await);
        own_clients.extend(r.http_ceiling(single(&label("http-ceiling-harness-client", k), Client::Harness)).await);
        singles.extend(r.sidecar(single(&label("single-100B-fifo-wrk", k), Client::Wrk)).await);
    }
    let ceiling = median(ceilings, requests);
    targets.push(Target::new(
        "harness client vs wrk on the bare server: req/s",
        ratio(&median(own_clients, requests), &ceiling, requests),
        0.9,
        "x",
        true,
    ));
    let single_run = median(singles, requests);
    targets.push(Target::new(
        "single 100 B POSTs, 64 connections, wrk: req/s vs bare hyper",
        ratio(&single_run, &ceiling, requests),
        0.85,
        "x",
        true,
    ));

    // 2. Batched NDJSON into the FIFO, one tar entry per batch and one per message,
    //    beside the docs' Python pattern: msg/s required, and how many times Python's.
    let batched = [
        ("batched-ndjson-fifo-batch", Layout::Batch, 5e6, 50.0),
        ("batched-ndjson-fifo-message", Layout::Message, 1e6, 1.0),
    ];
    let (mut pythons, mut runs) = (Vec::new(), [Vec::new(), Vec::new()]);
    for k in 0..repeat {
        let name = label("python-tarfile", k);
        pythons.extend(r.blocking(&name, move |n, h| baselines::python_tarfile(n, 100, d, h)).await);
        for ((name, layout, _, _), runs) in batched.iter().zip(&mut runs) {
            let mut s = base(&label(name, k), d);
            (s.framing, s.batch, s.size, s.connections, s.sink, s.layout) =
                (Framing::Ndjson, 1000, Sizes::fixed(100), 16, Sink::Fifo(None), *layout);
            (s.max_batch_messages, s.max_batch_bytes) = (Some(100_000), Some(16 << 20));
            runs.extend(r.sidecar(s).await);
        }
    }
    let python = median(pythons, committed);
    for ((name, _, required, times_python), runs) in batched.iter().zip(runs) {
        let run = median(runs, committed);
        let vs_python = ratio(&run, &python, committed);
        targets.push(Target::new(
            &format!("{name}: committed msg/s"),
            run.as_ref().map(committed),
            *required,
            "msg/s",
            true,
        ));
        targets.push(Target::new(
            &format!("{name}: committed msg/s vs Python tarfile"),
            vs_python,
            *times_python,
            "x",
            true,
        ));
    }

    // 3. 1 MiB messages into the FIFO, against large writes into a pipe (written from
    //    the server's core, as the sidecar writes, and from the reader's own, where a
    //    pipe costs least), within the default buffer budget.
    let big_buffer: u64 = 256 << 20;
    let (mut pipes, mut one_core_pipes, mut bigs) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..repeat {
        for (ceiling, writer, reports) in [
            ("pipe-ceiling", PipeWriter::Server, &mut pipes),
            ("pipe-ceiling-one-core", PipeWriter::Harness, &mut one_core_pipes),
        ] {
            let name = label(ceiling, k);
            reports.extend(r.blocking(&name, move |n, h| baselines::pipe_ceiling(n, 1 << 20, d, writer, h)).await);
        }
        let mut s = base(&label("fifo-1MiB", k), d);
        (s.size, s.connections, s.sink) = (Sizes::fixed(1 << 20), 4, Sink::Fifo(None));
        s.max_buffer_bytes = Some(big_buffer);
        bigs.extend(r.sidecar(s).await);
    }
    let big = median(bigs, committed_mb);
    for (ceiling, reports) in [("written from the server's core", pipes), ("on one core", one_core_pipes)] {
        targets.push(Target::new(
            &format!("1 MiB messages into fifo: committed MB/s vs raw pipe {ceiling}"),
            ratio(&big, &median(reports, committed_mb), committed_mb),
            0.7,
            "x",
            true,
        ));
    }
    targets.push(Target::new(
        "1 MiB messages into fifo: peak RSS vs --max-buffer-bytes + 64 MiB",
        big.as_ref().map(peak_rss_mib),
        ((big_buffer + (64 << 20)) >> 20) as f64,
        "MiB",
        false,
    ));

    // 4. Twice the load a slow reader drains: memory must stay bounded, for large
    //    messages and for small ones (where per-message overhead is what counts).
    let buffer: u64 = 64 << 20;
    for (name, message, drain) in [
        ("overload-2x-64KiB", 64 << 10, options.overload_drain),
        ("overload-2x-100B", 100, options.overload_drain / 20.0),
    ] {
        // What one message costs the reader: a tar header and the padded payload.
        let tar_bytes = 512.0 + (message as f64 / 512.0).ceil() * 512.0;
        let mut runs = Vec::new();
        for k in 0..repeat {
            let mut s = base(&label(name, k), options.overload_duration);
            (s.size, s.connections, s.sink) = (Sizes::fixed(message), 128, Sink::Fifo(None));
            // An overload is meant to queue: more connections would only hold more
            // bodies in flight, what the sidecar reads before its budget can refuse them.
            s.max_connections = Some(s.connections);
            s.reader_rate = Some(drain);
            s.rate = Some(2.0 * drain * 1e6 / tar_bytes);
            s.max_buffer_bytes = Some(buffer);
            s.sidecar_args = vec!["--block-timeout=1s".into()];
            runs.extend(r.sidecar(s).await);
        }
        targets.push(Target::new(
            &format!("{name}: peak RSS vs --max-buffer-bytes + 64 MiB"),
            median(runs, peak_rss_mib).as_ref().map(peak_rss_mib),
            ((buffer + (64 << 20)) >> 20) as f64,
            "MiB",
            false,
        ));
    }

    // 5. wait=commit at half the single-message peak, in an open loop (the harness's
    //    client: latency counted from when each request was due), beside the bare
    //    server holding each answer to a clock that ticks every batch age.
    let peak = single_run.as_ref().map(requests).unwrap_or(2000.0);
    let rate = (peak / 2.0).max(100.0);
    let (mut runs, mut bares) = (Vec::new(), Vec::new());
    for k in 0..repeat {
        let mut s = single(&label("wait-commit-half-peak", k), Client::Harness);
        s.wait_commit = true;
        s.rate = Some(rate);
        s.max_batch_age = Some(options.commit_age);
        // Enough connections for every request to wait its batch's age and 20 ms
        // more, twice over, to start with; the harness opens more when a request falls
        // due with every one waiting (up to 4x), and the sidecar's connection cap
        // (1024 by default) is raised to match.
        s.connections = ((rate * (options.commit_age.as_secs_f64() + 0.02) * 2.0) as usize).clamp(16, 8000);
        s.max_connections = Some(4 * s.connections);
        s.sidecar_args = vec![format!("--max-connections={}", 4 * s.connections + 16)];
        let bare = Scenario { name: label("wait-commit-half-peak-bare", k), ..s.clone() };
        bares.extend(r.http_ceiling(bare).await);
        runs.extend(r.sidecar(s).await);
    }
    let age_ms = options.commit_age.as_secs_f64() * 1000.0;
    let waited = median(runs, p99_ms);
    targets.push(Target::new(
        "wait=commit at half peak: req/s vs bare hyper answering every batch age",
        ratio(&waited, &median(bares, requests), requests),
        0.85,
        "x",
        true,
    ));
    targets.push(Target::new(
        "wait=commit at half peak: p99 vs --max-batch-age + 20 ms",
        waited.as_ref().map(p99_ms),
        age_ms + 20.0,
        "ms",
        false,
    ));
    targets.push(Target::new(
        "wait=commit at half peak: p99.9 / p50",
        waited.as_ref().and_then(|r| r.latency).map(|l| l.p999_ms / l.p50_ms),
        2.0,
        "x",
        false,
    ));

    SuiteReport {
        machine: Machine::here(),
        pinning: harness.pinning(),
        reports: r.reports,
        targets,
        failures: r.failures,
    }
}

/// The targets as a text table.
pub fn targets_table(targets: &[Target]) -> String {
    let mut out = String::from("| target | measured | required | verdict |\n|---|---|---|---|\n");
    for t in targets {
        let (measured, verdict) = match (t.measured, t.pass) {
            (Some(m), Some(pass)) => (format!("{m:.2} {}", t.unit), if pass { "PASS" } else { "MISS" }),
            _ => ("-".into(), "n/a (not run)"),
        };
        let bound = if t.at_least { ">=" } else { "<=" };
        out.push_str(&format!("| {} | {measured} | {bound} {:.2} {} | {verdict} |\n", t.target, t.required, t.unit));
    }
    out
}
