//! The ceilings the sidecar's figures are divided by, measured by the same harness in
//! the same run: a bare hyper server that reads each body and answers 202 (the HTTP
//! ceiling; for `wait=commit` loads it holds each answer to the next tick of a clock
//! ticking every batch age), large writes into a named pipe (the pipe ceiling), and
//! the Python `tarfile` spout the Pachyderm docs teach (what the sidecar replaces).

use std::convert::Infallible;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::client::Endpoint;
use crate::load::Target;
use crate::process::{self, Server};
use crate::readback;
use crate::report::Report;
use crate::run::{self, WorkDir};
use crate::scenario::{Harness, Scenario, Transport};
use crate::verify::{self, Outcome, Sent, Tally};

/// When the bare server answers: at once, or on the next tick of a clock shared by
/// every connection, as the sidecar answers `wait=commit` requests in a burst when
/// their batch commits. A tick costs the server one wake-up of all who wait for it,
/// which is the least a batch's answers can cost.
#[derive(Clone, Default)]
pub struct Answering {
    tick: Option<Arc<watch::Sender<()>>>,
}

impl Answering {
    /// Answers held to ticks `every` apart; the clock runs as long as the runtime.
    pub fn every(every: Duration) -> Self {
        let (tick, _) = watch::channel(());
        let tick = Arc::new(tick);
        let clock = tick.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                clock.send_replace(());
            }
        });
        Self { tick: Some(tick) }
    }

    async fn answer(self, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        // Reading the whole body is the one thing the baseline must do, as the sidecar does.
        let _ = request.into_body().collect().await;
        if let Some(tick) = &self.tick {
            // A new subscription has seen the last tick: this waits for the next.
            let _ = tick.subscribe().changed().await;
        }
        let mut response = Response::new(Full::new(Bytes::from_static(b"{\"accepted\":1}")));
        *response.status_mut() = StatusCode::ACCEPTED;
        Ok(response)
    }
}

async fn serve<S>(stream: S, answering: Answering)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |request| answering.clone().answer(request));
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
}

/// The sidecar's listen backlog: loads that open thousands of connections at once
/// must not lose SYNs here that the sidecar would queue.
const BACKLOG: u32 = 1024;

/// Serves the bare server on `endpoint` until the process is killed: what
/// `loadtest bare-server` runs, in a process of its own as the sidecar is.
pub async fn serve_bare(endpoint: &Endpoint, answering: Answering) -> anyhow::Result<()> {
    match endpoint {
        Endpoint::Tcp(addr) => {
            let socket =
                if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }?;
            socket.set_reuseaddr(true)?;
            socket.bind(*addr)?;
            let listener = socket.listen(BACKLOG)?;
            loop {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                tokio::spawn(serve(stream, answering.clone()));
            }
        }
        Endpoint::Unix(path) => {
            let socket = tokio::net::UnixSocket::new_stream()?;
            socket.bind(path)?;
            let listener = socket.listen(BACKLOG)?;
            loop {
                let (stream, _) = listener.accept().await?;
                tokio::spawn(serve(stream, answering.clone()));
            }
        }
    }
}

/// The sidecar's own `--max-batch-age`, for a `wait=commit` scenario that sets none.
const SIDECAR_BATCH_AGE: Duration = Duration::from_secs(1);

/// The HTTP ceiling: `scenario`'s load (HTTP over TCP or the Unix socket) against
/// the bare server, run as `loadtest bare-server` in a process of its own.
pub async fn http_ceiling(scenario: &Scenario, harness: &Harness) -> anyhow::Result<Report> {
    let work = WorkDir::new(harness, &scenario.name)?;
    let control = Endpoint::Tcp(process::free_port()?);
    let mut args = vec!["bare-server".to_owned(), "--listen".into(), control.to_string()];
    let endpoint = match scenario.transport {
        Transport::Http => control.clone(),
        Transport::Unix => {
            let path = work.join("bare.sock");
            args.extend(["--socket".into(), path.display().to_string()]);
            Endpoint::Unix(path)
        }
        Transport::Raw => bail!("the HTTP ceiling is measured over HTTP"),
    };
    if scenario.wait_commit {
        let age = scenario.max_batch_age.unwrap_or(SIDECAR_BATCH_AGE);
        args.extend(["--answer-every".into(), humantime::format_duration(age).to_string()]);
    }
    let exe = std::env::current_exe()?;
    if exe.file_stem().is_none_or(|stem| stem != "loadtest") {
        bail!("the HTTP ceiling runs `loadtest bare-server`: call it from the loadtest binary");
    }
    let mut server = Server::spawn(&exe, &args, &work.join("bare-server.log"), None, &harness.pinning())?;
    server.wait_ready(&control).await?;
    // The bare server counts no messages: the answers' `accepted` is not checked.
    let load = scenario.load(Target::Http(endpoint), 0, false);
    let (measured, wrk_latency) = run::drive(scenario.client, &load, harness, &work).await?;
    let stopped = tokio::task::spawn_blocking(move || server.stop(Duration::from_secs(10))).await??;
    let mut report = Report::from_load(&scenario.name, &measured, Duration::ZERO);
    report.scenario = Some(serde_json::to_value(scenario)?);
    report.latency = wrk_latency.or(report.latency);
    report.peak_rss_bytes = Some(stopped.peak_rss);
    Ok(report)
}

/// Which core writes the pipe ceiling's pipe; its reader always runs on the harness's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PipeWriter {
    /// The server's core, as the sidecar writes its pipe: the CPU split of the runs
    /// divided by this ceiling, each byte crossing from one core's cache to the other's.
    Server,
    /// The harness's core, beside the reader: the cheapest pipe this machine has.
    Harness,
}

/// The pipe ceiling: `chunk`-byte writes into a named pipe for `duration`, drained
/// by a reader that checksums every byte as the sidecar runs' reader does.
pub fn pipe_ceiling(
    name: &str,
    chunk: usize,
    duration: Duration,
    writer: PipeWriter,
    harness: &Harness,
) -> anyhow::Result<Report> {
    let work = WorkDir::new(harness, name)?;
    let path = work.join("pipe.fifo");
    readback::make_fifo(&path)?;
    let reader = readback::drain_reader(&path);
    let data = data_of(chunk);
    let mut pipe = std::fs::OpenOptions::new().write(true).open(&path).context("opening the pipe to write")?;
    // The 1 MiB pipe the sidecar asks for: a pipe of the default 64 KiB takes a wake-up
    // of each side per 64 KiB, which would make this ceiling a low one.
    rustix::pipe::fcntl_setpipe_size(&pipe, 1 << 20).context("growing the pipe to 1 MiB")?;
    let started = Instant::now();
    let written = &data;
    let write = move || -> anyhow::Result<u64> {
        if writer == PipeWriter::Server {
            harness.pinning().pin_thread_to_server()?;
        }
        let mut writes = 0u64;
        while started.elapsed() < duration {
            pipe.write_all(written)?;
            writes += 1;
        }
        Ok(writes)
    };
    // A thread of its own, so that pinning it leaves the harness's threads alone.
    let writes = std::thread::scope(|scope| scope.spawn(write).join())
        .map_err(|_| anyhow::anyhow!("the pipe ceiling's writer panicked"))??;
    let read = reader.finish()?;
    let elapsed = started.elapsed();
    let mut report = Report::from_transfer(name, writes, writes * chunk as u64, elapsed);
    if read.finalize() != crc_of_repeats(&data, writes) {
        report.ok = false;
        report.errors.push(format!("the reader's checksum is not that of the {writes} writes of {chunk} bytes"));
    }
    Ok(report)
}

/// The bytes the pipe ceiling writes, again and again.
fn data_of(chunk: usize) -> Vec<u8> {
    (0..chunk).map(|i| (i % 251) as u8).collect()
}

/// The CRC-32 of `data` written `times` times over, by doubling: a run's tens of
/// gigabytes are not checksummed twice.
fn crc_of_repeats(data: &[u8], mut times: u64) -> u32 {
    let mut whole = crc32fast::Hasher::new();
    let mut doubled = crc32fast::Hasher::new();
    doubled.update(data);
    while times > 0 {
        if times & 1 == 1 {
            whole.combine(&doubled);
        }
        let again = doubled.clone();
        doubled.combine(&again);
        times >>= 1;
    }
    whole.finalize()
}

/// The docs' pattern: `baselines/tarfile_spout.py` writing each message as a file of
/// its own commit into the pipe, for `duration`, timed until the reader has it all,
/// and checked like the sidecar's output.
pub fn python_tarfile(name: &str, size: usize, duration: Duration, harness: &Harness) -> anyhow::Result<Report> {
    let work = WorkDir::new(harness, name)?;
    let path = work.join("spout.fifo");
    readback::make_fifo(&path)?;
    let run = fastrand::u32(..);
    let reader = readback::tar_reader(&path, readback::Pace::default(), Tally::new(run), verify::Separator::None);
    let started = Instant::now();
    let mut python = Command::new("python3");
    // The spout is the server of this baseline: it gets the sidecar's cores.
    harness.pinning().pin_server(&mut python);
    let output = python
        .arg(script())
        .args(["--fifo", &path.display().to_string()])
        .args(["--seconds", &duration.as_secs_f64().to_string()])
        .args(["--size", &size.to_string()])
        .args(["--run", &run.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("running python3 (the tarfile baseline needs it)")?;
    let tally = reader.finish()?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!("{} failed: {}", script().display(), output.status);
    }
    #[derive(serde::Deserialize)]
    struct Wrote {
        messages: u64,
    }
    let wrote: Wrote = serde_json::from_slice(&output.stdout).context("reading the script's summary")?;
    let mut sent = Sent::default();
    sent.record(0, wrote.messages, Outcome::Accepted);
    let report = Report::from_transfer(name, wrote.messages, wrote.messages * size as u64, elapsed);
    Ok(report.verified(verify::verdict(&sent, &tally)))
}

/// The Python script that follows the Pachyderm docs' spout pattern.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("baselines/tarfile_spout.py")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pin::PinOptions;

    #[test]
    fn the_checksum_of_repeats_is_that_of_the_bytes_written_out() {
        let data = data_of(1000);
        for times in 0..10 {
            let mut hasher = crc32fast::Hasher::new();
            (0..times).for_each(|_| hasher.update(&data));
            assert_eq!(crc_of_repeats(&data, times), hasher.finalize(), "{times} writes");
        }
    }

    #[tokio::test]
    async fn the_bare_server_holds_each_answer_to_its_next_tick() {
        for (every, held) in [(Duration::from_secs(3600), true), (Duration::from_millis(20), false)] {
            let endpoint = Endpoint::Tcp(process::free_port().unwrap());
            let server = tokio::spawn({
                let endpoint = endpoint.clone();
                async move { serve_bare(&endpoint, Answering::every(every)).await }
            });
            let Endpoint::Tcp(addr) = endpoint else { unreachable!() };
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let call = crate::client::call(&endpoint, hyper::Method::POST, "/messages?wait=commit");
            match tokio::time::timeout(Duration::from_millis(if held { 500 } else { 10_000 }), call).await {
                Ok(answer) => {
                    assert!(!held, "answered before a tick an hour away");
                    assert_eq!(answer.unwrap().status, StatusCode::ACCEPTED);
                }
                Err(_) => assert!(held, "no answer though the clock ticks every {every:?}"),
            }
            server.abort();
        }
    }

    #[test]
    fn the_pipe_ceiling_reads_back_what_either_core_wrote() {
        let harness = Harness {
            sidecar: None,
            debug: false,
            work_dir: None,
            keep: false,
            json: None,
            pin: PinOptions::default(),
        };
        for writer in [PipeWriter::Server, PipeWriter::Harness] {
            let report = pipe_ceiling("pipe", 64 << 10, Duration::from_millis(200), writer, &harness).unwrap();
            assert!(report.ok && report.errors.is_empty(), "{writer:?}: {:?}", report.errors);
            assert!(report.committed_mb_per_sec > 0.0, "{writer:?}: nothing went through");
        }
    }
}
