//! One scenario against the sidecar, end to end: sink and read-back set up, sidecar
//! started (or reached), load driven, everything flushed and committed, sidecar
//! stopped, and every message checked.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::Method;

use crate::client::{call, Endpoint};
use crate::load::{self, Load, Measured, Target};
use crate::process::{self, RssWatch, Server};
use crate::readback;
use crate::report::{Latency, Report};
use crate::scenario::{Client, Harness, Layout, Scenario, Sink, Transport};
use crate::verify::{self, Tally};

/// A directory for a run's pipes, sockets, sinks and logs.
pub struct WorkDir {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl WorkDir {
    pub fn new(harness: &Harness, name: &str) -> anyhow::Result<WorkDir> {
        let (root, temp) = match &harness.work_dir {
            Some(root) => (root.clone(), None),
            None => {
                let temp = tempfile::Builder::new().prefix("loadtest-").tempdir()?;
                if harness.keep {
                    let kept = temp.keep();
                    eprintln!("work directory kept: {}", kept.display());
                    (kept, None)
                } else {
                    (temp.path().to_owned(), Some(temp))
                }
            }
        };
        let path = root.join(name);
        if path.exists() {
            std::fs::remove_dir_all(&path).with_context(|| format!("clearing {}", path.display()))?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(WorkDir { path, _temp: temp })
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// Where the run's messages end up and how they are read back.
enum Readback {
    Dir(PathBuf),
    Fifo(readback::PipeReader<Tally>, PathBuf),
}

impl Readback {
    fn set_up(scenario: &Scenario, work: &WorkDir, run: u32) -> anyhow::Result<(String, Readback)> {
        Ok(match &scenario.sink {
            Sink::Dir(path) => {
                let path = path.clone().unwrap_or_else(|| work.join("out"));
                (format!("dir:{}", path.display()), Readback::Dir(path))
            }
            Sink::Fifo(_) | Sink::Stdout => {
                let given = match &scenario.sink {
                    Sink::Fifo(path) => path.clone(),
                    _ => None,
                };
                let path = given.unwrap_or_else(|| work.join("out.fifo"));
                if !path.exists() {
                    readback::make_fifo(&path)?;
                }
                let pace = readback::Pace {
                    bytes_per_sec: scenario.reader_rate.map(|mb| mb * 1e6),
                    stall: scenario.reader_delay.unwrap_or_default(),
                };
                let reader = readback::tar_reader(&path, pace, Tally::new(run), scenario.separator());
                let uri = match scenario.sink {
                    Sink::Stdout => "stdout:".to_owned(),
                    _ => format!("fifo:{}", path.display()),
                };
                (uri, Readback::Fifo(reader, path))
            }
        })
    }

    fn finish(self, run: u32, scenario: &Scenario) -> anyhow::Result<Tally> {
        match self {
            Readback::Fifo(reader, _) => reader.finish(),
            Readback::Dir(path) => {
                let mut tally = Tally::new(run);
                readback::read_dir_tree(&path, scenario.separator(), &mut tally)?;
                Ok(tally)
            }
        }
    }
}

/// The sidecar's command line for `scenario`.
fn sidecar_args(scenario: &Scenario, listen: &str, work: &WorkDir, sink: &str) -> Vec<String> {
    let mut args: Vec<String> = vec!["--listen".into(), listen.into(), "--sink".into(), sink.into()];
    let mut opt = |name: &str, value: String| args.extend([format!("--{name}"), value]);
    match scenario.transport {
        Transport::Http => {}
        Transport::Unix => opt("socket", work.join("http.sock").display().to_string()),
        Transport::Raw => {
            opt("raw-socket", work.join("raw.sock").display().to_string());
            let framing = if scenario.framing.is_line_oriented() { "lines" } else { "frames" };
            opt("raw-framing", framing.into());
        }
    }
    opt("layout", if scenario.layout == Layout::Batch { "batch" } else { "message" }.into());
    if let Some(n) = scenario.max_batch_bytes {
        opt("max-batch-bytes", n.to_string());
    }
    if let Some(n) = scenario.max_batch_messages {
        opt("max-batch-messages", n.to_string());
    }
    if let Some(age) = scenario.max_batch_age {
        opt("max-batch-age", format!("{}ms", age.as_millis()));
    }
    if let Some(n) = scenario.max_buffer_bytes {
        opt("max-buffer-bytes", n.to_string());
    }
    opt("log", "warn".into());
    args.extend(scenario.sidecar_args.iter().cloned());
    args
}

/// The server under test: started here, or already running.
enum Subject {
    Started(Server),
    Running(Option<RssWatch>),
}

impl Subject {
    fn peak_rss(&self) -> Option<u64> {
        match self {
            Subject::Started(server) => Some(server.peak_rss()),
            Subject::Running(watch) => watch.as_ref().map(RssWatch::peak_bytes),
        }
    }
}

/// Runs `scenario` and checks what it committed.
pub async fn run(scenario: &Scenario, harness: &Harness) -> anyhow::Result<Report> {
    if scenario.framing == crate::body::Framing::Raw && scenario.batch != 1 {
        bail!("--framing raw sends one message per request: use ndjson, frames or multipart for --batch");
    }
    let work = WorkDir::new(harness, &scenario.name)?;
    let run = fastrand::u32(..);
    let (sink_uri, readback) = Readback::set_up(scenario, &work, run)?;

    let (subject, control, load_target) = match &scenario.connect {
        Some(endpoint) => {
            let target = match scenario.transport {
                Transport::Raw => Target::Raw(
                    scenario.raw_socket.clone().context("--transport raw with --connect needs --raw-socket")?,
                ),
                _ => Target::Http(endpoint.clone()),
            };
            (Subject::Running(scenario.sidecar_pid.map(RssWatch::start)), endpoint.clone(), target)
        }
        None => {
            let binary = process::locate_sidecar(harness.sidecar.as_deref(), harness.debug)?;
            let addr = process::free_port()?;
            let args = sidecar_args(scenario, &addr.to_string(), &work, &sink_uri);
            let stdout = match (&scenario.sink, &readback) {
                (Sink::Stdout, Readback::Fifo(_, pipe)) => Some(std::fs::OpenOptions::new().write(true).open(pipe)?),
                _ => None,
            };
            let mut server = Server::spawn(&binary, &args, &work.join("sidecar.log"), stdout, &harness.pinning())?;
            let control = Endpoint::Tcp(addr);
            server.wait_ready(&control).await?;
            let target = match scenario.transport {
                Transport::Http => Target::Http(control.clone()),
                Transport::Unix => Target::Http(Endpoint::Unix(work.join("http.sock"))),
                Transport::Raw => Target::Raw(work.join("raw.sock")),
            };
            (Subject::Started(server), control, target)
        }
    };

    let load = scenario.load(load_target, run, true);
    let (measured, wrk_latency) = drive(scenario.client, &load, harness, &work).await?;

    let drain_started = Instant::now();
    let mut problems = Vec::new();
    if scenario.transport == Transport::Raw {
        if let Err(e) = wait_received(&control, "raw", measured.messages).await {
            problems.push(format!("{e:#}"));
        }
    }
    match call(&control, Method::POST, "/flush?wait=commit").await {
        Ok(answer) if answer.status.is_success() => {}
        Ok(answer) => problems.push(format!("/flush?wait=commit: {}", answer.status)),
        Err(e) => problems.push(format!("/flush?wait=commit: {e:#}")),
    }
    let drain = drain_started.elapsed();

    let peak_rss = match subject {
        Subject::Started(server) => {
            let stopped = tokio::task::spawn_blocking(move || server.stop(Duration::from_secs(60))).await??;
            if !stopped.status.success() {
                problems.push(format!("the sidecar exited with {} after SIGTERM", stopped.status));
            }
            Some(stopped.peak_rss)
        }
        running => running.peak_rss(),
    };
    let tally = {
        let scenario = scenario.clone();
        tokio::task::spawn_blocking(move || readback.finish(run, &scenario)).await??
    };

    let mut report =
        Report::from_load(&scenario.name, &measured, drain).verified(verify::verdict(&measured.sent, &tally));
    report.scenario = Some(serde_json::to_value(scenario)?);
    report.latency = wrk_latency.or(report.latency);
    report.peak_rss_bytes = peak_rss;
    if !problems.is_empty() {
        report.ok = false;
        report.errors.extend(problems);
    }
    Ok(report)
}

/// Drives `load` with `client`: what it measured, and with wrk the latency it reports
/// (wrk keeps percentiles, not the harness's histogram).
pub async fn drive(
    client: Client,
    load: &Load,
    harness: &Harness,
    work: &WorkDir,
) -> anyhow::Result<(Measured, Option<Latency>)> {
    match client {
        Client::Harness => Ok((load::drive(load).await?, None)),
        Client::Wrk => {
            let threads = harness.pinning().client.map_or(1, |cpus| cpus.count());
            let (load, dir) = (load.clone(), work.path.clone());
            let (measured, latency) =
                tokio::task::spawn_blocking(move || crate::wrk::drive(&load, threads, &dir)).await??;
            Ok((measured, Some(latency)))
        }
    }
}

/// Waits until the sidecar's `spout_messages_received_total{transport}` reaches
/// `expected`: the raw socket answers nothing, so this is how to know it has read
/// everything written.
pub async fn wait_received(control: &Endpoint, transport: &str, expected: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let label = format!("transport=\"{transport}\"");
    loop {
        let metrics = call(control, Method::GET, "/metrics").await?;
        let text = String::from_utf8_lossy(&metrics.body);
        let received: f64 = text
            .lines()
            .filter(|l| l.starts_with("spout_messages_received_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if received as u64 >= expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the sidecar counted {received} messages received on {transport}, {expected} were written");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
