//! `cargo xtask test [ARGS]`, the project's test command: makes a fresh Debian machine
//! that has Rust and Python 3 ready for the test suite, then runs it.
//!
//! 1. The programs the tests run (curl, nc, go, promtool, rabbitmq-server, and
//!    `python3 -m venv`) are looked for; as root, the Debian packages of those missing
//!    are installed with apt-get; otherwise it names them and the command that
//!    installs them, and stops.
//! 2. A Python virtualenv in `target/test-venv` gets tests/requirements.txt. It is
//!    made again only when those requirements (or the Python) change: a stamp file
//!    in it records what it was made from.
//! 3. Azurite (the local Azure Blob Storage of the `wasb://` tests) is installed
//!    with npm into `target/test-node`, unless that version is there already.
//! 4. `cargo test --workspace --locked ARGS` runs with `SPOUT_TEST_PYTHON` naming the
//!    virtualenv's interpreter, and its `bin/` and Azurite's first on the PATH.
//!
//! `cargo xtask bench` runs the criterion benches against a saved baseline (see
//! `bench.rs`), with the same tools on hand.
//!
//! Only the standard library, so that this builds in seconds, before anything else.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

mod bench;

/// What the tests need from Debian: each package, and how to tell it is there
/// without asking dpkg (a program may come from elsewhere, such as Python from pyenv).
const PACKAGES: &[(&str, Probe)] = &[
    // The README's curl snippets (tests/it/clients.rs), and the HTTP/2 and TLS client
    // of tests/it/http2.rs and tests/it/tls.rs (Debian's curl has nghttp2 and OpenSSL).
    ("curl", Probe::Runs(&["curl", "--version"])),
    // HTTPS to PyPI for the virtualenv's packages.
    ("ca-certificates", Probe::File("/etc/ssl/certs/ca-certificates.crt")),
    // The README's raw-socket snippet runs `nc -N -U`, which only OpenBSD's netcat has.
    ("netcat-openbsd", Probe::Prints(&["nc", "-h"], "OpenBSD")),
    // The README's Go snippet.
    ("golang-go", Probe::Runs(&["go", "version"])),
    // promtool checks the scrape config, the alert rules and /metrics, and the
    // Prometheus server scrapes a sidecar to evaluate every query (tests/it/deploy).
    ("prometheus", Probe::Runs(&["prometheus", "--version"])),
    // The broker of the amqp:// source tests (tests/it/source_amqp), run as a private
    // node from its scripts, never as the system service.
    ("rabbitmq-server", Probe::File("/usr/lib/rabbitmq/bin/rabbitmq-server")),
    // `python3 -m venv` makes the virtualenv; Debian's python3 lacks ensurepip without it.
    ("python3-venv", Probe::Runs(&["python3", "-c", "import ensurepip, venv"])),
    // The load harness's fast client for ceilings and single POSTs (loadtest/src/wrk.rs);
    // `wrk -v` exits 1, so its banner is what shows it runs.
    ("wrk", Probe::Prints(&["wrk", "-v"], "Will Glozer")),
    // The font `loadtest plot` draws its charts' text with (its test draws them).
    ("fonts-dejavu-core", Probe::File("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")),
];

/// The npm packages the tests run, pinned to the versions they were tried with.
const NPM_PACKAGES: &[&str] = &["azurite@3.35.0"];

/// The requirements the virtualenv is made from, relative to the workspace root.
const REQUIREMENTS: &str = "tests/requirements.txt";
/// The file in the virtualenv that records what it was made from.
const STAMP: &str = "spout-requirements.stamp";

enum Probe {
    /// The command exits 0.
    Runs(&'static [&'static str]),
    /// The command's output (either stream) contains the text, whatever its exit code.
    Prints(&'static [&'static str], &'static str),
    /// The file exists.
    File(&'static str),
}

impl Probe {
    fn holds(&self) -> bool {
        match self {
            Probe::Runs(argv) => output(argv).is_some_and(|out| out.status.success()),
            Probe::Prints(argv, text) => output(argv).is_some_and(|out| {
                String::from_utf8_lossy(&out.stdout).contains(text)
                    || String::from_utf8_lossy(&out.stderr).contains(text)
            }),
            Probe::File(path) => Path::new(path).is_file(),
        }
    }
}

fn output(argv: &[&str]) -> Option<std::process::Output> {
    Command::new(argv[0]).args(&argv[1..]).stdin(Stdio::null()).output().ok()
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    match args.next().as_ref().and_then(|a| a.to_str()) {
        Some("test") => finish(test(args.collect())),
        Some("bench") => finish(bench::run(args.collect())),
        _ => {
            eprintln!("usage: cargo xtask test [ARGS]   (ARGS go to `cargo test --workspace --locked`)");
            eprintln!("       cargo xtask bench [--save] [ARGS]   (see xtask/src/bench.rs)");
            ExitCode::from(2)
        }
    }
}

fn finish(result: Result<ExitCode, String>) -> ExitCode {
    result.unwrap_or_else(|message| {
        eprintln!("xtask: {message}");
        ExitCode::FAILURE
    })
}

fn test(cargo_args: Vec<OsString>) -> Result<ExitCode, String> {
    let mut cargo = cargo_with_test_tools(&["test", "--workspace", "--locked"])?;
    progress(&shown_command(&cargo_args));
    exit_code(cargo.args(&cargo_args).status())
}

/// `cargo ARGS` in the workspace, with what the tests (and the benches that start
/// servers) need: the Debian packages, the virtualenv and Azurite, on the PATH.
fn cargo_with_test_tools(args: &[&str]) -> Result<Command, String> {
    let root = workspace_root();
    install_packages()?;
    let venv = target_dir(&root).join("test-venv");
    let python = virtualenv(&root, &venv)?;
    let node_bin = node_packages(&target_dir(&root).join("test-node"))?;
    let bin = venv.join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths([bin, node_bin].into_iter().chain(std::env::split_paths(&path)))
        .map_err(|e| format!("cannot put the virtualenv on the PATH: {e}"))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(&root).args(args).env("SPOUT_TEST_PYTHON", &python).env("PATH", path);
    Ok(command)
}

/// The exit code of a finished cargo, as this process's.
fn exit_code(status: std::io::Result<std::process::ExitStatus>) -> Result<ExitCode, String> {
    let status = status.map_err(|e| format!("cannot run cargo: {e}"))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE, // killed by a signal
    })
}

/// Installs `NPM_PACKAGES` under `prefix` unless the same list is there already;
/// returns the directory of their programs.
fn node_packages(prefix: &Path) -> Result<PathBuf, String> {
    let stamp = prefix.join(STAMP);
    let wanted = NPM_PACKAGES.join("\n");
    if fs::read_to_string(&stamp).is_ok_and(|had| had == wanted) {
        return Ok(prefix.join("node_modules/.bin"));
    }
    progress(&format!("npm install {} into {} (a minute or two)", NPM_PACKAGES.join(" "), prefix.display()));
    fs::create_dir_all(prefix).map_err(|e| format!("cannot make {}: {e}", prefix.display()))?;
    let out = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(prefix)
        .args(NPM_PACKAGES)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run npm (the tests need Node.js and npm for Azurite): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "npm install {} failed ({}):\n{}",
            NPM_PACKAGES.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    fs::write(&stamp, wanted).map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(prefix.join("node_modules/.bin"))
}

/// The workspace root: the parent of this package's directory.
fn workspace_root() -> PathBuf {
    // `cargo run` sets it for the program too; the build-time value is the fallback.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&manifest_dir).parent().expect("xtask/ is inside the workspace").to_owned()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` if set, as cargo reads it, else `target/`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => std::env::current_dir().unwrap_or_default().join(dir),
        _ => root.join("target"),
    }
}

fn progress(line: &str) {
    eprintln!("xtask: {line}");
}

/// The cargo command line run, as the progress line shows it.
fn shown_command(args: &[OsString]) -> String {
    let mut shown = String::from("cargo test --workspace --locked");
    for arg in args {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}

/// Installs the Debian packages whose programs are missing, as root; otherwise says
/// which they are and how to install them.
fn install_packages() -> Result<(), String> {
    let missing: Vec<&str> = PACKAGES.iter().filter(|(_, probe)| !probe.holds()).map(|(name, _)| *name).collect();
    if missing.is_empty() {
        progress("the Debian packages the tests need are there");
        return Ok(());
    }
    let list = missing.join(" ");
    let install = format!("apt-get update && apt-get install -y --no-install-recommends {list}");
    if !is_root() {
        return Err(format!(
            "the tests need these Debian packages, which are missing: {list}\n\
             xtask: install them as root, then run `cargo xtask test` again:\n    sudo sh -c '{install}'"
        ));
    }
    if !Probe::Runs(&["apt-get", "--version"]).holds() {
        return Err(format!("the tests need these Debian packages, and there is no apt-get to install them: {list}"));
    }
    progress("apt-get update");
    apt_get(&["update", "-qq"])?;
    progress(&format!("apt-get install {list} (a minute or two)"));
    apt_get(&[&["install", "-y", "-qq", "--no-install-recommends"][..], &missing].concat())?;
    let still: Vec<&str> = PACKAGES.iter().filter(|(_, probe)| !probe.holds()).map(|(name, _)| *name).collect();
    if !still.is_empty() {
        return Err(format!("installed, yet still not usable: {}", still.join(" ")));
    }
    Ok(())
}

/// Runs apt-get non-interactively; its output is shown only if it fails.
fn apt_get(args: &[&str]) -> Result<(), String> {
    let out = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "apt-get {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Whether this process runs as root (its effective user id is 0).
fn is_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    // `Uid:` lists the real, effective, saved and file-system user ids.
    let uid = status.lines().find_map(|line| line.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().nth(1));
    match uid {
        Some(uid) => uid == "0",
        None => output(&["id", "-u"]).is_some_and(|out| out.stdout.trim_ascii() == b"0"),
    }
}

/// Makes (or re-uses) the virtualenv at `venv` with the tests' requirements; returns
/// its interpreter.
fn virtualenv(root: &Path, venv: &Path) -> Result<PathBuf, String> {
    let python = venv.join("bin").join("python");
    let version = output(&["python3", "--version"])
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .ok_or("the tests need Python 3 as `python3` on the PATH")?;
    let mut stamp = format!("{version}\n");
    for (file, text) in requirement_files(root, Path::new(REQUIREMENTS))? {
        stamp.push_str(&format!("== {}\n{text}\n", file.display()));
    }
    let shown = venv.strip_prefix(root).unwrap_or(venv).display().to_string();
    if python.is_file() && fs::read_to_string(venv.join(STAMP)).is_ok_and(|made_from| made_from == stamp) {
        progress(&format!("Python virtualenv {shown} is up to date with {REQUIREMENTS}"));
        return Ok(python);
    }
    progress(&format!("making the Python virtualenv {shown} ({version}) from {REQUIREMENTS}"));
    // --clear: a virtualenv made from other requirements starts empty again.
    run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(venv))?;
    progress(&format!("pip install -r {REQUIREMENTS} (a minute or two)"));
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(root.join(REQUIREMENTS)))?;
    fs::write(venv.join(STAMP), stamp).map_err(|e| format!("cannot write {shown}/{STAMP}: {e}"))?;
    Ok(python)
}

fn run(command: &mut Command) -> Result<(), String> {
    let status = command.status().map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed ({status})"))
    }
}

/// A requirements file and every file it includes with `-r`, each with its text:
/// what the virtualenv's packages follow from.
fn requirement_files(root: &Path, file: &Path) -> Result<Vec<(PathBuf, String)>, String> {
    let text = fs::read_to_string(root.join(file)).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut files = Vec::new();
    for included in includes(&text) {
        // pip reads an included path relative to the file that names it.
        let included = file.parent().unwrap_or(Path::new("")).join(included);
        files.extend(requirement_files(root, &included)?);
    }
    files.insert(0, (file.to_owned(), text));
    Ok(files)
}

/// The files a requirements text includes: `-r FILE` or `--requirement FILE` lines.
fn includes(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix("--requirement").or_else(|| line.strip_prefix("-r"))?;
            let rest = rest.trim_start_matches([' ', '=']);
            (!rest.is_empty()).then(|| rest.split_whitespace().next().unwrap_or(rest))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_are_found_in_every_spelling() {
        let text =
            "# -r commented.txt\nrequests>=2\n-r a.txt\n  -r  b/c.txt  \n--requirement=d.txt\n--requirement e.txt\n";
        assert_eq!(includes(text), ["a.txt", "b/c.txt", "d.txt", "e.txt"]);
    }

    #[test]
    fn the_stamp_covers_the_included_requirements() {
        let files = requirement_files(&workspace_root(), Path::new(REQUIREMENTS)).unwrap();
        let paths: Vec<PathBuf> = files.into_iter().map(|(path, _)| path).collect();
        assert_eq!(paths, [Path::new(REQUIREMENTS), Path::new("tests/it/pfs/requirements.txt")]);
    }
}
