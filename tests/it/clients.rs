//! Runs every client snippet of README.md against the real binary: each must
//! succeed and commit exactly the messages its `<!-- test: ...; commits: ... -->` line
//! names, read back from the `dir:` sink (or, for the round trip through a pipeline,
//! from the fake pachd).
//!
//! curl, nc (netcat-openbsd), go and the tests' Python with `requests` are required;
//! `cargo xtask test` installs them, and a missing one fails with its install hint.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::pfs::fake::FakePachd;
use crate::support::python;
use crate::support::sidecar::{dir_commits, eventually, Sidecar};

struct Snippet {
    name: String,
    language: String,
    code: String,
    commits: Vec<String>,
}

fn snippets() -> Vec<Snippet> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let text = std::fs::read_to_string(&doc).expect("README.md");
    let mut lines = text.lines();
    let mut found = Vec::new();
    while let Some(line) = lines.next() {
        let Some(test) = line.strip_prefix("<!-- test: ").and_then(|l| l.strip_suffix(" -->")) else {
            continue;
        };
        let (name, commits) = test.split_once("; commits: ").expect("<!-- test: NAME; commits: A | B -->");
        let language = lines
            .next()
            .and_then(|l| l.strip_prefix("```"))
            .unwrap_or_else(|| panic!("{name}: a code block follows the test line"));
        let code: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        found.push(Snippet {
            name: name.to_owned(),
            language: language.to_owned(),
            code: code.join("\n") + "\n",
            commits: commits.split(" | ").map(str::to_owned).collect(),
        });
    }
    found
}

fn snippet(name: &str) -> Snippet {
    snippets().into_iter().find(|s| s.name == name).unwrap_or_else(|| panic!("README.md has no `{name}` snippet"))
}

/// Fails with the install hint when `program` is missing: a snippet nobody ran
/// is not known to work. `cargo xtask test` installs every one of them.
fn require(program: &str, version_flag: &str, package: &str) {
    let found = Command::new(program).arg(version_flag).output().is_ok_and(|o| o.status.success());
    assert!(found, "{program} is missing: `apt-get install {package}` (`cargo xtask test` does)");
}

/// Starts a sidecar on every transport, runs the snippet with the documented
/// addresses replaced by the test's, and compares what was committed.
fn run(snippet: &Snippet) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (socket, raw) = (dir.join("http.sock"), dir.join("raw.sock"));
    let sink = format!("dir:{}", dir.join("out").display());
    let sidecar =
        Sidecar::start(&["--sink", &sink, "--socket", socket.to_str().unwrap(), "--raw-socket", raw.to_str().unwrap()]);
    std::fs::write(dir.join("token"), "unused-without-auth-token-file\n").unwrap();
    let code = snippet
        .code
        .replace("http://localhost:8080", &format!("http://{}", sidecar.addr))
        .replace("/run/spout/http.sock", socket.to_str().unwrap())
        .replace("/run/spout/raw.sock", raw.to_str().unwrap());
    let out = interpreter(&snippet.language, dir, &code).current_dir(dir).output().expect("the snippet runs");
    assert!(
        out.status.success(),
        "{} snippet failed:\n{}{}\nsidecar log:\n{}",
        snippet.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        sidecar.log()
    );
    // The raw socket answers nothing: its lines are in once the buffer holds them.
    eventually(std::time::Duration::from_secs(20), "the snippet's messages", || {
        sidecar.flush();
        let committed = contents(&dir.join("out"));
        (committed.len() >= snippet.commits.len()).then_some(())
    });
    let mut committed = contents(&dir.join("out"));
    let mut expected = snippet.commits.clone();
    committed.sort();
    expected.sort();
    assert_eq!(committed, expected, "{}: what the snippet committed", snippet.name);
}

fn contents(root: &Path) -> Vec<String> {
    dir_commits(root).into_iter().map(|(_, _, body)| String::from_utf8(body).expect("UTF-8")).collect()
}

/// The command that runs `code` as its fenced block's language.
fn interpreter(language: &str, dir: &Path, code: &str) -> Command {
    match language {
        "sh" => {
            let mut command = Command::new("bash");
            command.args(["-euo", "pipefail", "-c", code]);
            command
        }
        "python" => {
            let mut command = python::command();
            command.args(["-c", code]);
            command
        }
        "go" => {
            let source: PathBuf = dir.join("client.go");
            std::fs::write(&source, code).unwrap();
            let mut command = Command::new("go");
            command.arg("run").arg(source).env("GOCACHE", dir.join("gocache")).env("GOFLAGS", "-mod=mod");
            command
        }
        other => panic!("no interpreter for ```{other}"),
    }
}

#[test]
fn every_snippet_is_tested_here() {
    let names: Vec<String> = snippets().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["curl", "python", "python-downstream", "go", "unix"], "a new snippet needs its #[test] below");
}

#[test]
fn curl_snippet_commits_what_it_says() {
    require("curl", "--version", "curl");
    run(&snippet("curl"));
}

#[test]
fn python_requests_snippet_commits_what_it_says() {
    let requests = python::command().args(["-c", "import requests"]).status().is_ok_and(|s| s.success());
    let hint = "install tests/requirements.txt into it (`cargo xtask test` does)";
    assert!(requests, "{} cannot import requests: {hint}", python::interpreter().display());
    run(&snippet("python"));
}

/// The round trip through a pipeline: against the fake pachd, whose pipeline from
/// `spout` to `edges` upper-cases each file, so the snippet prints its input so.
#[test]
fn python_downstream_snippet_fetches_the_pipelines_result() {
    let snippet = snippet("python-downstream");
    let mut pachd = FakePachd::start(None, None);
    pachd.pipeline("spout", "edges", 0.3, None);
    let sidecar = Sidecar::start(&["--sink", &pachd.uri("spout"), "--max-batch-age", "20ms"]);
    let code = snippet.code.replace("http://localhost:8080", &format!("http://{}", sidecar.addr));
    let out = python::command().args(["-c", &code]).output().expect("the snippet runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the snippet failed:\n{printed}{}", String::from_utf8_lossy(&out.stderr));
    let expected: Vec<String> = snippet.commits.iter().map(|c| format!("{}\n", c.to_uppercase())).collect();
    assert_eq!(printed, expected.concat(), "the pipeline's output, fetched through the sidecar");
    let committed: Vec<String> =
        pachd.state().files("spout", "master").into_values().map(|b| String::from_utf8(b).unwrap()).collect();
    assert_eq!(committed, snippet.commits);
    assert!(sidecar.stop().success());
}

#[test]
fn go_net_http_snippet_commits_what_it_says() {
    require("go", "version", "golang-go");
    run(&snippet("go"));
}

#[test]
fn unix_socket_snippet_commits_what_it_says() {
    require("curl", "--version", "curl");
    require("nc", "-h", "netcat-openbsd");
    run(&snippet("unix"));
}
