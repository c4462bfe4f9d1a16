//! Drives the fake pachd (fake_pachd.py beside this file) from Rust tests and from
//! benches/pfs_commit.rs: starts it, sends it control commands, reads its state back.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::support::python;

const INSTALL: &str = "pip install -r tests/requirements.txt";

pub struct FakePachd {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub port: u16,
}

#[derive(Debug, Deserialize)]
pub struct State {
    pub repos: Vec<RepoState>,
    pub commits: Vec<CommitState>,
    pub calls: HashMap<String, u64>,
    pub max_piece: u64,
}

#[derive(Debug, Deserialize)]
pub struct RepoState {
    pub project: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub branches: HashMap<String, BranchState>,
}

#[derive(Debug, Deserialize)]
pub struct BranchState {
    /// Path to hex content.
    pub files: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct CommitState {
    pub id: String,
    pub repo: String,
    pub parent: Option<String>,
    /// "finishing" or "finished": how far the parent had got when this one started.
    pub parent_at_start: Option<String>,
    /// FinishCommit went through: the commit is no longer open.
    pub finishing: bool,
    /// pachd's master has validated it too (`error` says whether it failed).
    pub finished: bool,
    pub error: String,
    pub changed: Vec<String>,
}

impl State {
    pub fn branch(&self, repo: &str, branch: &str) -> &BranchState {
        let repo = self.repos.iter().find(|r| r.name == repo).unwrap_or_else(|| panic!("no repo {repo}"));
        &repo.branches[branch]
    }

    /// The files at the head of `repo@branch`, decoded, but for the sidecars'
    /// marker files.
    pub fn files(&self, repo: &str, branch: &str) -> HashMap<String, Vec<u8>> {
        let files = self.branch(repo, branch).files.iter();
        files.filter(|(path, _)| !is_marker(path)).map(|(path, hex)| (path.clone(), unhex(hex))).collect()
    }

    /// The sidecars' marker files at the head of `repo@branch`, by writer.
    pub fn markers(&self, repo: &str, branch: &str) -> HashMap<String, String> {
        let files = self.branch(repo, branch).files.iter();
        let marker = |(path, hex): (&String, &String)| {
            Some((path.strip_prefix(MARKER_DIR)?.to_owned(), String::from_utf8(unhex(hex)).unwrap()))
        };
        files.filter_map(marker).collect()
    }

    pub fn commits_of(&self, repo: &str) -> Vec<&CommitState> {
        self.commits.iter().filter(|c| c.repo == repo).collect()
    }

    pub fn calls(&self, method: &str) -> u64 {
        self.calls.get(method).copied().unwrap_or(0)
    }
}

/// Where the sidecar keeps one marker file per writer (src/sink/pfs/marker.rs).
pub const MARKER_DIR: &str = ".spout-sidecar/";

/// Whether a path is a sidecar's marker file rather than a message.
pub fn is_marker(path: &str) -> bool {
    path.starts_with(MARKER_DIR)
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex from the fake")).collect()
}

impl FakePachd {
    /// Starts the fake on a free port (or `port`), requiring `token` if given.
    pub fn start(token: Option<&str>, port: Option<u16>) -> Self {
        Self::spawn(token, port, false)
    }

    /// For benchmarks: a fake that counts file bytes and keeps none, so memory
    /// stays flat however many commits are measured.
    #[allow(dead_code, reason = "for benches/pfs_commit.rs, which includes this file; no test uses it")]
    pub fn start_discarding() -> Self {
        Self::spawn(None, None, true)
    }

    fn spawn(token: Option<&str>, port: Option<u16>, discard: bool) -> Self {
        let python = python::interpreter();
        let check = Command::new(&python)
            .args(["-c", "import python_pachyderm.proto.v2.pfs.pfs_pb2_grpc"])
            .output()
            .unwrap_or_else(|e| panic!("the pfs tests run the fake pachd with {}: {e}", python.display()));
        assert!(
            check.status.success(),
            "the pfs tests run a fake pachd on Pachyderm's published stubs, and {} cannot import them; \
             install them with `{INSTALL}` (`cargo xtask test` does)\n{}",
            python.display(),
            String::from_utf8_lossy(&check.stderr)
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/pfs/fake_pachd.py");
        let mut command = Command::new(&python);
        command.arg(script).arg("--port").arg(port.unwrap_or(0).to_string());
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        if discard {
            command.arg("--discard");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the fake pachd");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let hello = read_line(&mut stdout);
        let port = hello["port"].as_u64().expect("the fake pachd prints its port first") as u16;
        Self { child, stdin, stdout, port }
    }

    /// The fake's process, to stop and continue it (SIGSTOP: a pachd that hangs).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn uri(&self, repo_branch: &str) -> String {
        format!("pfs://127.0.0.1:{}/{repo_branch}", self.port)
    }

    fn command(&mut self, command: Value) -> Value {
        writeln!(self.stdin, "{command}").expect("writing to the fake pachd");
        self.stdin.flush().unwrap();
        let answer = read_line(&mut self.stdout);
        assert!(answer.get("error").is_none(), "fake pachd: {answer}");
        answer
    }

    pub fn state(&mut self) -> State {
        serde_json::from_value(self.command(json!({"cmd": "state"}))).expect("the fake's state")
    }

    /// Replaces the injected faults (see fake_pachd.py), resetting call counts.
    pub fn faults(&mut self, faults: Value) {
        let mut command = faults;
        command["cmd"] = json!("faults");
        self.command(command);
    }

    /// Starts a commit on `repo@branch` as another client would (`pachctl start
    /// commit`), leaving it open; its id.
    pub fn start_commit(&mut self, repo: &str, branch: &str) -> String {
        let answer = self.command(json!({"cmd": "start_commit", "repo": repo, "branch": branch}));
        answer["id"].as_str().expect("the commit id").to_owned()
    }

    /// Finishes a commit as another client would (`pachctl finish commit`).
    pub fn finish_commit(&mut self, id: &str) {
        self.command(json!({"cmd": "finish_commit", "id": id}));
    }

    /// Runs a pipeline from `input` to `output` (see fake_pachd.py): each input
    /// commit gets an output commit of the same id, finished `delay` seconds after
    /// it, with `error` if given.
    #[allow(dead_code, reason = "for the tests; benches/pfs_commit.rs includes this file too")]
    pub fn pipeline(&mut self, input: &str, output: &str, delay: f64, error: Option<&str>) {
        self.command(json!({"cmd": "pipeline", "input": input, "output": output, "delay": delay, "error": error}));
    }

    /// Commits a file of `size` bytes into `repo` as another client would; the
    /// commit's id. Its content is [`put_file_content`]'s.
    #[allow(dead_code, reason = "for the tests; benches/pfs_commit.rs includes this file too")]
    pub fn put_file(&mut self, repo: &str, path: &str, size: u64) -> String {
        let answer = self.command(json!({"cmd": "put_file", "repo": repo, "path": path, "size": size}));
        answer["id"].as_str().expect("the commit id").to_owned()
    }

    pub fn set_token(&mut self, token: Option<&str>) {
        self.command(json!({"cmd": "token", "token": token}));
    }

    /// Drops every connection and serves again after `down_for` seconds, state kept.
    pub fn restart(&mut self, down_for: f64) {
        self.command(json!({"cmd": "restart", "down_for": down_for}));
    }
}

/// Byte `at` of a file the fake's `put_file` made: 1 MiB piece `k` holds
/// `(31 k + j) % 256` at its offset `j`.
#[allow(dead_code, reason = "for the tests; benches/pfs_commit.rs includes this file too")]
pub fn put_file_byte(at: u64) -> u8 {
    let (piece, offset) = (at >> 20, at & ((1 << 20) - 1));
    ((31 * piece + offset) % 256) as u8
}

fn read_line(stdout: &mut BufReader<ChildStdout>) -> Value {
    let mut line = String::new();
    stdout.read_line(&mut line).expect("reading from the fake pachd");
    assert!(!line.is_empty(), "the fake pachd exited (its error is above)");
    serde_json::from_str(&line).expect("a JSON line from the fake pachd")
}

impl Drop for FakePachd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
