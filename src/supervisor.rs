//! The supervisor form, `spout-sidecar [OPTS] -- CMD ARGS`: the producer runs as our
//! child, with SPOUT_URL (and SPOUT_SOCKET, SPOUT_RAW_SOCKET) telling it where to
//! send, and SPOUT_AUTH_TOKEN_FILE where the bearer token is. Signals we receive
//! are forwarded to it; when it exits, the sidecar drains and exits with the
//! child's code, as if it were the child.

use std::path::Path;
use std::process::ExitStatus;

use rustix::process::{kill_process, Pid, Signal};
use tokio::process::{Child, Command};

/// Where the child sends its messages.
#[derive(Debug, Default, Clone)]
pub struct Endpoints<'a> {
    pub url: Option<String>,
    pub socket: Option<&'a Path>,
    pub raw_socket: Option<&'a Path>,
    /// `--auth-token-file`: the child reads the bearer token from it.
    pub token_file: Option<&'a Path>,
    /// Our stdout carries the `stdout:` sink's tar stream: the child's output must
    /// not mix into it, so it goes to stderr instead.
    pub stdout_is_sink: bool,
}

pub fn spawn(command: &[String], endpoints: &Endpoints<'_>) -> std::io::Result<Child> {
    let (program, args) = command.split_first().expect("clap requires a command after --");
    let mut cmd = Command::new(program);
    cmd.args(args);
    if endpoints.stdout_is_sink {
        cmd.stdout(std::io::stderr());
    }
    if let Some(url) = &endpoints.url {
        cmd.env("SPOUT_URL", url);
    }
    if let Some(path) = endpoints.socket {
        cmd.env("SPOUT_SOCKET", path);
    }
    if let Some(path) = endpoints.raw_socket {
        cmd.env("SPOUT_RAW_SOCKET", path);
    }
    if let Some(path) = endpoints.token_file {
        cmd.env("SPOUT_AUTH_TOKEN_FILE", path);
    }
    // Our own SPOUT_* options must not leak into a child that is itself configured
    // by SPOUT_URL: only the three above are meant for it, and the token file it
    // needs to authenticate.
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str() {
            let for_child = matches!(key, "SPOUT_URL" | "SPOUT_SOCKET" | "SPOUT_RAW_SOCKET" | "SPOUT_AUTH_TOKEN_FILE");
            if key.starts_with("SPOUT_") && !for_child {
                cmd.env_remove(key);
            }
        }
    }
    cmd.spawn()
}

pub fn forward(child: &Child, signal: i32) {
    let pid = child.id().and_then(|pid| Pid::from_raw(pid as i32));
    if let (Some(pid), Some(signal)) = (pid, Signal::from_named_raw(signal)) {
        // A child that has just exited (ESRCH) is no error: its exit is handled elsewhere.
        let _ = kill_process(pid, signal);
    }
}

/// The exit code a shell would report for `status`: the code, or 128 + signal.
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        (None, None) => 1,
    }
}
