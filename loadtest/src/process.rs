//! The server under test as a child process (the sidecar, or the bare baseline
//! server): started, watched for memory, asked to stop with SIGTERM.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::Method;
use rustix::process::{kill_process, Pid, Signal};

use crate::client::{call, Endpoint};
use crate::pin::Pinning;

/// Polls `/proc/<pid>/status` for the resident set size and keeps the peak: the
/// larger of the kernel's high-water mark (`VmHWM`) and any `VmRSS` sample.
pub struct RssWatch {
    stop: Arc<AtomicBool>,
    peak_kib: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl RssWatch {
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kib = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, peak) = (stop.clone(), peak_kib.clone());
            std::thread::spawn(move || {
                let path = format!("/proc/{pid}/status");
                while !stop.load(Ordering::Relaxed) {
                    let Ok(status) = std::fs::read_to_string(&path) else { return };
                    for line in status.lines() {
                        if let Some(kib) = line
                            .strip_prefix("VmHWM:")
                            .or_else(|| line.strip_prefix("VmRSS:"))
                            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                        {
                            peak.fetch_max(kib, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Self { stop, peak_kib, thread: Some(thread) }
    }

    pub fn peak_bytes(&self) -> u64 {
        self.peak_kib.load(Ordering::Relaxed) * 1024
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub struct Server {
    child: Child,
    rss: RssWatch,
    log: PathBuf,
}

/// How a server ended.
pub struct Stopped {
    pub status: ExitStatus,
    pub peak_rss: u64,
}

impl Server {
    /// Starts `program` on the server cores of `pinning`, with its stderr in `log`,
    /// and its stdout there too unless `stdout` is given (the `stdout:` sink's stream).
    pub fn spawn(
        program: &Path,
        args: &[String],
        log: &Path,
        stdout: Option<File>,
        pinning: &Pinning,
    ) -> anyhow::Result<Server> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let stdout = match stdout {
            Some(file) => file,
            None => out.try_clone()?,
        };
        let mut command = Command::new(program);
        pinning.pin_server(&mut command);
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let rss = RssWatch::start(child.id());
        Ok(Server { child, rss, log: log.to_owned() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn peak_rss(&self) -> u64 {
        self.rss.peak_bytes()
    }

    /// Waits until `GET /healthz` answers 200.
    pub async fn wait_ready(&mut self, endpoint: &Endpoint) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the server exited ({status}) before it was ready:\n{}", self.log_tail());
            }
            if let Ok(answer) = call(endpoint, Method::GET, "/healthz").await {
                if answer.status.is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the server did not answer /healthz on {endpoint} within 20 s:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `grace`).
    pub fn stop(mut self, grace: Duration) -> anyhow::Result<Stopped> {
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            // One that has exited already is waited for below all the same.
            let _ = kill_process(pid, Signal::TERM);
        }
        let deadline = Instant::now() + grace;
        loop {
            let peak_rss = self.rss.peak_bytes();
            if let Some(status) = self.child.try_wait()? {
                return Ok(Stopped { status, peak_rss });
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the server did not exit within {grace:?} of SIGTERM:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A run that failed half-way must not leave a server behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The sidecar binary: `explicit` if given, else built (or found up to date) by
/// cargo in this workspace, release profile unless `debug`.
pub fn locate_sidecar(explicit: Option<&Path>, debug: bool) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("loadtest lives in the workspace");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "-p", "spout-sidecar", "--bin", "spout-sidecar", "--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit());
    if !debug {
        command.arg("--release");
    }
    let output = command.output().context("running cargo build for the sidecar")?;
    if !output.status.success() {
        bail!("cargo build of the sidecar failed");
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "spout-sidecar")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo built no spout-sidecar executable")
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}
