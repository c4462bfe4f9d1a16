//! curl as the client, for what the tests' own HTTP/1.1 client does not speak:
//! HTTP/2 (h2c with prior knowledge, ALPN `h2`) and TLS. Each transfer of one curl
//! run reports its status, HTTP version and how many connections it opened, so a
//! test can tell that requests made one after another shared one connection.

use std::process::Command;

/// One transfer's answer.
#[derive(Debug)]
pub struct Transfer {
    pub status: u16,
    /// `1.1` or `2`, as curl's `%{http_version}`.
    pub version: String,
    /// Connections this transfer opened: 0 when it reused one.
    pub connects: u32,
    pub body: String,
}

/// What a transfer's `--write-out` prints after its body, on a line of its own.
const MARK: &str = "\n@@curl ";

/// Runs `curl -sS` with `args`; for each transfer (`--next` starts another, on the
/// same connection when it can) its answer, in order.
pub fn run(args: &[&str]) -> Vec<Transfer> {
    let write_out = format!("{MARK}%{{http_code}} %{{http_version}} %{{num_connects}}\n");
    // --write-out belongs to each transfer: repeat it after every --next.
    let mut full = vec!["-sS", "--max-time", "60", "--write-out", &write_out];
    for arg in args {
        full.push(arg);
        if *arg == "--next" {
            full.extend(["-sS", "--max-time", "60", "--write-out", &write_out]);
        }
    }
    let out = Command::new("curl").args(&full).output().expect("curl runs (xtask installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains(MARK), "curl {args:?} answered nothing: {}", String::from_utf8_lossy(&out.stderr));
    let mut transfers = Vec::new();
    let mut rest = stdout.as_str();
    while let Some((body, after)) = rest.split_once(MARK) {
        let (stats, next) = after.split_once('\n').unwrap_or((after, ""));
        let mut fields = stats.split(' ');
        let mut field = || fields.next().unwrap_or_default();
        let status = field().parse().unwrap_or(0);
        let version = field().to_owned();
        let connects = field().parse().unwrap_or(0);
        transfers.push(Transfer { status, version, connects, body: body.to_owned() });
        rest = next;
    }
    transfers
}

/// One transfer.
pub fn one(args: &[&str]) -> Transfer {
    let mut transfers = run(args);
    assert_eq!(transfers.len(), 1, "curl {args:?}: {transfers:?}");
    transfers.remove(0)
}
