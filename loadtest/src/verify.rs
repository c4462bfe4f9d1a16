//! Exactly-once checking: what the generator sent (and what the sidecar answered)
//! against what the read-back found in the sink.
//!
//! Accepted messages must be there exactly once; refused ones (503, 4xx) never;
//! messages whose request died on the wire (no answer) at most once. Anything else,
//! or a message whose bytes changed, fails the run whatever its speed.

use serde::Serialize;

use crate::msg;

/// What the sidecar said about a request's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Refused,
    /// The connection failed before an answer: may or may not have been enqueued.
    Unknown,
}

/// The ids sent, in contiguous ranges, with their outcome.
#[derive(Debug, Default)]
pub struct Sent {
    ranges: Vec<(u64, u64, Outcome)>,
}

impl Sent {
    pub fn record(&mut self, first: u64, count: u64, outcome: Outcome) {
        self.ranges.push((first, count, outcome));
    }

    pub fn merge(&mut self, other: Sent) {
        self.ranges.extend(other.ranges);
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.ranges.iter().filter(|r| r.2 == outcome).map(|r| r.1).sum()
    }
}

/// How messages follow each other inside one committed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Separator {
    /// Back to back (one message per file, or frames/raw bodies under `--layout batch`).
    None,
    /// Each message ends with `\n` (NDJSON or raw lines under `--layout batch`).
    Newline,
}

const MAX_ERRORS_KEPT: usize = 10;

/// What the read-back found: a count per id of this run, and what did not parse.
#[derive(Debug)]
pub struct Tally {
    run: u32,
    counts: Vec<u8>,
    pub messages: u64,
    pub bytes: u64,
    pub files: u64,
    pub commits: u64,
    /// Intact messages of another run (a sink directory that was not empty).
    pub foreign: u64,
    /// Files with damaged, truncated or stray bytes.
    pub corrupt: u64,
    errors: Vec<String>,
}

impl Tally {
    pub fn new(run: u32) -> Self {
        Self {
            run,
            counts: Vec::new(),
            messages: 0,
            bytes: 0,
            files: 0,
            commits: 0,
            foreign: 0,
            corrupt: 0,
            errors: Vec::new(),
        }
    }

    /// Checks one committed file, `name` for error messages.
    pub fn scan(&mut self, name: &str, data: &[u8], separator: Separator) {
        self.files += 1;
        self.bytes += data.len() as u64;
        let mut at = 0;
        while at < data.len() {
            let found = match msg::parse(&data[at..]) {
                Ok(found) => found,
                Err(why) => return self.damaged(format!("{name} at byte {at}: {why}")),
            };
            at += found.len;
            if separator == Separator::Newline {
                if data.get(at) != Some(&b'\n') {
                    return self.damaged(format!("{name} at byte {at}: line does not end with \\n"));
                }
                at += 1;
            }
            self.see(found);
        }
        if data.is_empty() {
            self.damaged(format!("{name}: empty file"));
        }
    }

    fn see(&mut self, found: msg::Found) {
        if found.run != self.run {
            self.foreign += 1;
            return;
        }
        let id = found.id as usize;
        if id >= self.counts.len() {
            self.counts.resize((id + 1).max(self.counts.len() * 2), 0);
        }
        self.counts[id] = self.counts[id].saturating_add(1);
        self.messages += 1;
    }

    fn damaged(&mut self, why: String) {
        self.corrupt += 1;
        self.note(why);
    }

    /// Keeps the first few problems for the report.
    pub fn note(&mut self, why: String) {
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push(why);
        }
    }
}

/// The outcome of a run's check, as reported.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    pub accepted: u64,
    pub refused: u64,
    pub unknown: u64,
    pub found: u64,
    pub commits: u64,
    pub files: u64,
    pub missing: u64,
    pub duplicated: u64,
    pub refused_but_committed: u64,
    pub never_sent: u64,
    pub foreign: u64,
    pub corrupt: u64,
    pub errors: Vec<String>,
    pub ok: bool,
}

pub fn verdict(sent: &Sent, tally: &Tally) -> Verdict {
    const UNSENT: u8 = 0;
    let code = |o: Outcome| match o {
        Outcome::Accepted => 1u8,
        Outcome::Refused => 2,
        Outcome::Unknown => 3,
    };
    let end = sent.ranges.iter().map(|r| r.0 + r.1).max().unwrap_or(0) as usize;
    let mut status = vec![UNSENT; end];
    for &(first, count, outcome) in &sent.ranges {
        status[first as usize..(first + count) as usize].fill(code(outcome));
    }
    let mut v = Verdict {
        accepted: sent.count(Outcome::Accepted),
        refused: sent.count(Outcome::Refused),
        unknown: sent.count(Outcome::Unknown),
        found: tally.messages,
        commits: tally.commits,
        files: tally.files,
        foreign: tally.foreign,
        corrupt: tally.corrupt,
        errors: tally.errors.clone(),
        ..Verdict::default()
    };
    let note = |v: &mut Verdict, why: String| {
        if v.errors.len() < MAX_ERRORS_KEPT {
            v.errors.push(why);
        }
    };
    for id in 0..end.max(tally.counts.len()) {
        let seen = tally.counts.get(id).copied().unwrap_or(0);
        match (status.get(id).copied().unwrap_or(UNSENT), seen) {
            (1, 0) => {
                v.missing += 1;
                note(&mut v, format!("accepted message {id:#x} is not in the sink"));
            }
            (1 | 3, n) if n > 1 => {
                v.duplicated += 1;
                note(&mut v, format!("message {id:#x} is in the sink {n} times"));
            }
            (2, n) if n > 0 => {
                v.refused_but_committed += 1;
                note(&mut v, format!("refused message {id:#x} was committed anyway"));
            }
            (UNSENT, n) if n > 0 => v.never_sent += 1,
            _ => {}
        }
    }
    v.ok = v.missing == 0
        && v.duplicated == 0
        && v.refused_but_committed == 0
        && v.never_sent == 0
        && v.corrupt == 0
        && v.accepted > 0;
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt, Full};
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::msg::Generator;

    /// An HTTP server, on the caller's runtime, that checks every body it is sent as
    /// the read-back checks a commit, for tests of the clients: their address, and
    /// what it has seen.
    pub(crate) async fn tallying_server(run: u32, separator: Separator) -> (std::net::SocketAddr, Arc<Mutex<Tally>>) {
        let tally = Arc::new(Mutex::new(Tally::new(run)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = tally.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let seen = seen.clone();
                let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        seen.lock().unwrap().scan("request", &body, separator);
                        Ok::<_, hyper::Error>(Response::new(Full::new(bytes::Bytes::from_static(b"{}"))))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (addr, tally)
    }

    fn file(generator: &mut Generator, ids: &[u64], separator: Separator) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend(generator.message(id, 80).to_vec());
            if separator == Separator::Newline {
                out.push(b'\n');
            }
        }
        out
    }

    #[test]
    fn exactly_once_or_the_run_fails() {
        let mut generator = Generator::new(9, 100);
        let mut sent = Sent::default();
        sent.record(0, 3, Outcome::Accepted);
        sent.record(3, 1, Outcome::Refused);
        sent.record(4, 1, Outcome::Unknown);

        let mut tally = Tally::new(9);
        tally.scan("a", &file(&mut generator, &[0, 1], Separator::Newline), Separator::Newline);
        tally.scan("b", &file(&mut generator, &[2], Separator::None), Separator::None);
        assert!(verdict(&sent, &tally).ok, "{:?}", verdict(&sent, &tally));

        tally.scan("c", &file(&mut generator, &[1, 3], Separator::None), Separator::None);
        let bad = verdict(&sent, &tally);
        assert_eq!((bad.duplicated, bad.refused_but_committed, bad.ok), (1, 1, false));

        let mut lost = Tally::new(9);
        lost.scan("a", &file(&mut generator, &[0, 2, 4], Separator::None), Separator::None);
        let v = verdict(&sent, &lost);
        assert_eq!((v.missing, v.unknown, v.ok), (1, 1, false));
    }

    #[test]
    fn damage_and_missing_newlines_are_corruption() {
        let mut generator = Generator::new(9, 100);
        let mut data = file(&mut generator, &[0, 1], Separator::Newline);
        let mut tally = Tally::new(9);
        tally.scan("joined", &data, Separator::None);
        assert_eq!(tally.corrupt, 1, "a newline where none belongs");
        data[50] = b'#';
        let mut tally = Tally::new(9);
        tally.scan("flipped", &data, Separator::Newline);
        assert_eq!((tally.corrupt, tally.messages), (1, 0));
        let mut other_run = Tally::new(10);
        other_run.scan("old", &file(&mut generator, &[0], Separator::None), Separator::None);
        assert_eq!((other_run.foreign, other_run.corrupt), (1, 0));
    }
}
