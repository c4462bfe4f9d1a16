//! The ceilings the sidecar's figures are divided by, measured by the same harness in
//! the same run: a bare hyper server that reads each body and answers 202 (the HTTP
//! ceiling), large writes into a named pipe (the pipe ceiling), and the Python
//! `tarfile` spout the Pachyderm docs teach (what the sidecar replaces).

use std::convert::Infallible;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::client::Endpoint;
use crate::load::{self, Load, Target};
use crate::readback;
use crate::report::Report;
use crate::run::WorkDir;
use crate::scenario::{Harness, Scenario, Transport};
use crate::verify::{self, Outcome, Sent, Tally};

async fn answer_202(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Reading the whole body is the one thing the baseline must do, as the sidecar does.
    let _ = request.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(b"{\"accepted\":1}")));
    *response.status_mut() = StatusCode::ACCEPTED;
    Ok(response)
}

async fn serve<S>(stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(answer_202);
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
}

/// The bare server, on a runtime of its own (as many workers as cores, like the
/// sidecar's), until the returned guard is dropped.
struct BareServer {
    endpoint: Endpoint,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BareServer {
    fn start(unix: Option<PathBuf>) -> anyhow::Result<BareServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        tcp.set_nonblocking(true)?;
        let endpoint = match &unix {
            Some(path) => Endpoint::Unix(path.clone()),
            None => Endpoint::Tcp(tcp.local_addr()?),
        };
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let accept = async {
                    match unix {
                        Some(path) => {
                            let listener = tokio::net::UnixListener::bind(path).expect("binding the bare server's socket");
                            while let Ok((stream, _)) = listener.accept().await {
                                tokio::spawn(serve(stream));
                            }
                        }
                        None => {
                            let listener = tokio::net::TcpListener::from_std(tcp).expect("a bound listener");
                            while let Ok((stream, _)) = listener.accept().await {
                                let _ = stream.set_nodelay(true);
                                tokio::spawn(serve(stream));
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
            runtime.shutdown_background();
        });
        Ok(BareServer { endpoint, shutdown: Some(shutdown), thread: Some(thread) })
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        drop(self.shutdown.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The HTTP ceiling: `scenario`'s load (HTTP over TCP or the Unix socket) against
/// the bare server.
pub async fn http_ceiling(scenario: &Scenario, harness: &Harness) -> anyhow::Result<Report> {
    let work = WorkDir::new(harness, &scenario.name)?;
    let unix = match scenario.transport {
        Transport::Http => None,
        Transport::Unix => Some(work.join("bare.sock")),
        Transport::Raw => bail!("the HTTP ceiling is measured over HTTP"),
    };
    let server = BareServer::start(unix)?;
    for _ in 0..500 {
        if crate::client::Conn::open(&server.endpoint).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let load = Load {
        target: Target::Http(server.endpoint.clone()),
        framing: scenario.framing,
        batch: scenario.batch,
        sizes: scenario.size,
        connections: scenario.connections,
        rate: scenario.rate,
        duration: scenario.duration,
        wait_commit: false,
        run: 0,
        check_accepted: false,
    };
    let measured = load::drive(&load).await?;
    tokio::task::spawn_blocking(move || drop(server)).await?;
    let mut report = Report::from_load(&scenario.name, &measured, Duration::ZERO);
    report.scenario = Some(serde_json::to_value(scenario)?);
    Ok(report)
}

/// The pipe ceiling: `chunk`-byte writes into a named pipe for `duration`, drained
/// by a reader that checksums every byte as the sidecar runs' reader does.
pub fn pipe_ceiling(name: &str, chunk: usize, duration: Duration, harness: &Harness) -> anyhow::Result<Report> {
    let work = WorkDir::new(harness, name)?;
    let path = work.join("pipe.fifo");
    readback::make_fifo(&path)?;
    let reader = readback::drain_reader(&path);
    let data: Vec<u8> = (0..chunk).map(|i| (i % 251) as u8).collect();
    let mut pipe = std::fs::OpenOptions::new().write(true).open(&path).context("opening the pipe to write")?;
    let started = Instant::now();
    let mut writes = 0u64;
    while started.elapsed() < duration {
        pipe.write_all(&data)?;
        writes += 1;
    }
    drop(pipe);
    reader.finish()?;
    let elapsed = started.elapsed();
    Ok(Report::from_transfer(name, writes, writes * chunk as u64, elapsed))
}

/// The docs' pattern: `baselines/tarfile_spout.py` writing each message as a file of
/// its own commit into the pipe, for `duration`, timed until the reader has it all,
/// and checked like the sidecar's output.
pub fn python_tarfile(name: &str, size: usize, duration: Duration, harness: &Harness) -> anyhow::Result<Report> {
    let work = WorkDir::new(harness, name)?;
    let path = work.join("spout.fifo");
    readback::make_fifo(&path)?;
    let run = fastrand::u32(..);
    let reader = readback::tar_reader(&path, None, Tally::new(run), verify::Separator::None);
    let started = Instant::now();
    let output = Command::new("python3")
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
