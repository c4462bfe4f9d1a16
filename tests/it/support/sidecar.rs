//! Starts the real `spout-sidecar` binary for a test and stops it afterwards.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

pub const BIN: &str = env!("CARGO_BIN_EXE_spout-sidecar");

pub struct Sidecar {
    pub child: Child,
    /// `127.0.0.1:PORT` of the HTTP (or, with --tls-cert, HTTPS) listener.
    pub addr: String,
    /// What the sidecar wrote to stderr so far, as a thread has read it from the pipe:
    /// a line the sidecar just wrote may still be on its way.
    pub log: Arc<Mutex<String>>,
    /// That thread: once it has ended, it read the pipe to its end and the log is whole.
    log_reader: JoinHandle<()>,
}

impl Sidecar {
    /// Starts the sidecar on an ephemeral port with `args` (no `--listen` needed)
    /// and waits until it is ready.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, |_| {})
    }

    /// Like `start`, letting the test adjust the command (env, working dir, stdout).
    pub fn start_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Self {
        let mut command = Command::new(BIN);
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        command.stderr(Stdio::piped()).stdin(Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("SPOUT_") {
                command.env_remove(key);
            }
        }
        adjust(&mut command);
        let mut child = command.spawn().expect("spawn spout-sidecar");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log_reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut addr = None;
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let url = line.split("listening on http://").nth(1);
                    if let Some(found) = url.or_else(|| line.split("listening on https://").nth(1)) {
                        addr = Some(found.trim().to_owned());
                    }
                    // The log is the only place the sidecar names its port, and every
                    // listener (the Unix sockets too) is bound once the ready line is out.
                    if line.contains(" ready") {
                        if let Some(addr) = addr.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                }
            })
        };
        let addr = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("sidecar did not start listening; log:\n{}", log.lock().unwrap())
        });
        Self { child, addr, log, log_reader }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The value of one series of `/metrics`, e.g. `spout_sink_errors_total{kind="epipe"}`;
    /// 0 while it has not appeared.
    pub fn metric(&self, series: &str) -> u64 {
        let text = super::client::get(&self.addr, "/metrics").text();
        let value = |line: &str| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse::<f64>().ok();
        text.lines().find_map(value).unwrap_or(0.0) as u64
    }

    /// Seals the open batch and waits until every batch has settled (`/flush?wait=commit`).
    pub fn flush(&self) {
        let answer = super::client::post(&self.addr, "/flush?wait=commit", "text/plain", b"");
        assert_eq!(answer.status, 200, "{}", answer.text());
    }

    /// The peak resident memory of the sidecar so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.child.id() as i32).expect("a child's pid is positive");
        kill_process(pid, signal).expect("signal the sidecar");
    }

    /// Sends SIGTERM and waits for the exit, and for the whole log.
    pub fn stop(self) -> ExitStatus {
        self.stop_with_log().0
    }

    /// Like [`Self::stop`], and returns every line the sidecar logged: a line logged
    /// just before an answer the test saw may still be in the pipe until the exit.
    pub fn stop_with_log(mut self) -> (ExitStatus, String) {
        self.signal(Signal::TERM);
        let status = self.wait_exit(Duration::from_secs(40));
        (status, self.log())
    }

    /// Waits for the sidecar to exit, then for its log to be read to the end, so that
    /// [`Self::log`] holds every line it wrote.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = wait_exit(&mut self.child, timeout);
        // stderr ends once the sidecar, and any producer it started, have exited.
        eventually(Duration::from_secs(10), "the end of the sidecar's stderr", || {
            self.log_reader.is_finished().then_some(())
        });
        status
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` until it returns Some, or panics after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The payloads of every committed file of a `dir:` sink, sorted: what was committed,
/// whatever the order of the requests that sent it.
pub fn dir_payloads(root: &Path) -> Vec<Vec<u8>> {
    let mut payloads: Vec<Vec<u8>> = dir_commits(root).into_iter().map(|(_, _, body)| body).collect();
    payloads.sort();
    payloads
}

/// Every committed file of a `dir:` sink: (commit id, file name, bytes), in commit order.
pub fn dir_commits(root: &Path) -> Vec<(String, String, Vec<u8>)> {
    let mut commits: Vec<PathBuf> =
        std::fs::read_dir(root).map(|entries| entries.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    commits.retain(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'));
    commits.sort();
    let mut files = Vec::new();
    for commit in commits {
        let id = commit.file_name().unwrap().to_string_lossy().into_owned();
        let mut stack = vec![commit.clone()];
        let mut in_commit = Vec::new();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let name = path.strip_prefix(&commit).unwrap().to_string_lossy().into_owned();
                    in_commit.push((id.clone(), name, std::fs::read(&path).unwrap()));
                }
            }
        }
        in_commit.sort_by(|a, b| a.1.cmp(&b.1));
        files.extend(in_commit);
    }
    files
}
