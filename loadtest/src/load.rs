//! The load itself: workers on keep-alive connections (or raw-socket streams), in a
//! closed loop (each sends its next request once the last is answered) or an open
//! loop (requests are due at a fixed rate, and latency counts from when a request
//! was due, not when a free connection got round to it, so a stalled server cannot
//! hide its stall by slowing the generator down: no coordinated omission).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use hyper::Method;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::body::{encode, Framing};
use crate::client::{Conn, Endpoint};
use crate::msg::{Generator, HEADER_LEN};
use crate::verify::{Outcome, Sent};

/// Message sizes: one size, or uniform over an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Sizes {
    pub min: usize,
    pub max: usize,
}

impl Sizes {
    pub fn fixed(size: usize) -> Self {
        Self { min: size, max: size }
    }

    fn pick(&self, rng: &mut fastrand::Rng) -> usize {
        rng.usize(self.min..=self.max)
    }
}

impl std::str::FromStr for Sizes {
    type Err = String;

    /// `100`, `1MiB`, or a range `100..4KiB`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let size = |t: &str| {
            t.trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64() as usize)
                .map_err(|e| format!("`{t}` is not a size: {e}"))
        };
        let (min, max) = match s.split_once("..") {
            Some((lo, hi)) => (size(lo)?, size(hi)?),
            None => (size(s)?, size(s)?),
        };
        if min > max || min < HEADER_LEN {
            return Err(format!("sizes must be at least {HEADER_LEN} bytes (the id and checksum) and min <= max"));
        }
        Ok(Sizes { min, max })
    }
}

impl std::fmt::Display for Sizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |n: usize| bytesize::ByteSize::b(n as u64).display().iec().to_string();
        if self.min == self.max {
            f.write_str(&show(self.min))
        } else {
            write!(f, "{}..{}", show(self.min), show(self.max))
        }
    }
}

/// What the load is sent to.
#[derive(Debug, Clone)]
pub enum Target {
    Http(Endpoint),
    /// The raw socket, with its framing (`Ndjson` for lines, or `Frames`).
    Raw(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Load {
    pub target: Target,
    pub framing: Framing,
    /// Messages per request (or per raw-socket write).
    pub batch: usize,
    pub sizes: Sizes,
    pub connections: usize,
    /// Requests per second for an open loop; `None` for a closed loop.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub wait_commit: bool,
    pub run: u32,
    /// Check that each answer's `accepted` counts the request's messages (the bare
    /// baseline server answers without counting).
    pub check_accepted: bool,
}

/// What the workers measured.
#[derive(Debug)]
pub struct Measured {
    pub sent: Sent,
    /// Microseconds from when a request was due to its answer, accepted requests only.
    pub latency: Histogram<u64>,
    pub accepted_requests: u64,
    pub refused_requests: u64,
    pub failed_requests: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub messages: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub errors: Vec<String>,
}

impl Measured {
    pub fn empty() -> Self {
        Self {
            sent: Sent::default(),
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds"),
            accepted_requests: 0,
            refused_requests: 0,
            failed_requests: 0,
            statuses: BTreeMap::new(),
            messages: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            errors: Vec::new(),
        }
    }

    fn merge(&mut self, other: Measured) {
        self.sent.merge(other.sent);
        self.latency.add(&other.latency).expect("same bounds");
        self.accepted_requests += other.accepted_requests;
        self.refused_requests += other.refused_requests;
        self.failed_requests += other.failed_requests;
        for (code, n) in other.statuses {
            *self.statuses.entry(code).or_default() += n;
        }
        self.messages += other.messages;
        self.bytes += other.bytes;
        for e in other.errors {
            self.error(e);
        }
    }

    /// Keeps `why` for the report (the first few distinct ones).
    pub fn error(&mut self, why: String) {
        if self.errors.len() < 5 && !self.errors.contains(&why) {
            self.errors.push(why);
        }
    }

    fn accepted(&mut self, first: u64, count: usize, bytes: usize, due: Instant) {
        self.sent.record(first, count as u64, Outcome::Accepted);
        self.accepted_requests += 1;
        self.messages += count as u64;
        self.bytes += bytes as u64;
        self.latency.saturating_record(due.elapsed().as_micros().max(1) as u64);
    }
}

/// When each request is due, shared by the workers.
struct Schedule {
    start: Instant,
    end: Instant,
    rate: Option<f64>,
    ticket: AtomicU64,
    ids: AtomicU64,
}

impl Schedule {
    /// The time the worker's next request is due, or `None` once the run is over.
    async fn next(&self) -> Option<Instant> {
        match self.rate {
            None => {
                let now = Instant::now();
                (now < self.end).then_some(now)
            }
            Some(rate) => {
                let n = self.ticket.fetch_add(1, Ordering::Relaxed);
                let due = self.start + Duration::from_secs_f64(n as f64 / rate);
                if due >= self.end {
                    return None;
                }
                tokio::time::sleep_until(due).await;
                Some(due)
            }
        }
    }

    fn ids(&self, count: usize) -> u64 {
        self.ids.fetch_add(count as u64, Ordering::Relaxed)
    }
}

/// Runs the load to its end and gathers what the workers measured.
pub async fn drive(load: &Load) -> anyhow::Result<Measured> {
    let generator = Generator::new(load.run, load.sizes.max);
    // Connect everyone before the clock starts.
    let mut conns = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        conns.push(Connection::open(&load.target).await?);
    }
    let start = Instant::now();
    let schedule = Arc::new(Schedule {
        start,
        end: start + load.duration,
        rate: load.rate,
        ticket: AtomicU64::new(0),
        ids: AtomicU64::new(0),
    });
    let mut workers = Vec::new();
    for (n, conn) in conns.into_iter().enumerate() {
        let worker = Worker {
            load: load.clone(),
            schedule: schedule.clone(),
            generator: generator.clone(),
            rng: fastrand::Rng::with_seed(u64::from(load.run) << 16 | n as u64),
        };
        workers.push(tokio::spawn(worker.run(conn)));
    }
    let mut total = Measured::empty();
    for worker in workers {
        total.merge(worker.await?);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

enum Connection {
    Http(Conn),
    Raw(tokio::net::UnixStream),
}

impl Connection {
    async fn open(target: &Target) -> anyhow::Result<Connection> {
        Ok(match target {
            Target::Http(endpoint) => Connection::Http(Conn::open(endpoint).await?),
            Target::Raw(path) => Connection::Raw(
                tokio::net::UnixStream::connect(path)
                    .await
                    .with_context(|| format!("connecting to the raw socket {}", path.display()))?,
            ),
        })
    }
}

struct Worker {
    load: Load,
    schedule: Arc<Schedule>,
    generator: Generator,
    rng: fastrand::Rng,
}

#[derive(serde::Deserialize)]
struct Accepted {
    accepted: u64,
}

impl Worker {
    async fn run(mut self, conn: Connection) -> Measured {
        let mut measured = Measured::empty();
        match conn {
            Connection::Http(conn) => self.http(conn, &mut measured).await,
            Connection::Raw(stream) => self.raw(stream, &mut measured).await,
        }
        measured
    }

    /// The next request: its first id, its body and its payload bytes.
    fn body(&mut self) -> (u64, crate::body::ChunkBody, usize) {
        let first = self.schedule.ids(self.load.batch);
        let messages: Vec<_> = (0..self.load.batch as u64)
            .map(|k| {
                let size = self.load.sizes.pick(&mut self.rng);
                self.generator.message(first + k, size)
            })
            .collect();
        let payload = messages.iter().map(|m| m.size()).sum();
        (first, encode(self.load.framing, &messages), payload)
    }

    async fn http(&mut self, mut conn: Conn, measured: &mut Measured) {
        let Target::Http(endpoint) = self.load.target.clone() else { unreachable!() };
        let path = if self.load.wait_commit { "/messages?wait=commit" } else { "/messages" };
        let content_type = self.load.framing.content_type();
        let count = self.load.batch;
        while let Some(due) = self.schedule.next().await {
            let (first, body, bytes) = self.body();
            match conn.send(Method::POST, path, &content_type, body).await {
                Ok(answer) => {
                    *measured.statuses.entry(answer.status.as_u16()).or_default() += 1;
                    if answer.status.is_success() {
                        match serde_json::from_slice::<Accepted>(&answer.body) {
                            Ok(a) if a.accepted == count as u64 => {}
                            _ if !self.load.check_accepted => {}
                            _ => measured.error(format!(
                                "{} for {count} messages: {}",
                                answer.status,
                                String::from_utf8_lossy(&answer.body)
                            )),
                        }
                        measured.accepted(first, count, bytes, due);
                    } else {
                        // A 5xx other than 503 is a failed commit a waiter was told of:
                        // whether its messages made it is not known.
                        let outcome = match answer.status.as_u16() {
                            400..=499 | 503 => Outcome::Refused,
                            _ => Outcome::Unknown,
                        };
                        measured.sent.record(first, count as u64, outcome);
                        measured.refused_requests += 1;
                        if answer.status.as_u16() != 503 {
                            measured.error(format!("{}: {}", answer.status, String::from_utf8_lossy(&answer.body)));
                        }
                    }
                }
                Err(e) => {
                    measured.sent.record(first, count as u64, Outcome::Unknown);
                    measured.failed_requests += 1;
                    measured.error(format!("request failed: {e:#}"));
                    match reconnect(&endpoint).await {
                        Some(fresh) => conn = fresh,
                        None => return,
                    }
                }
            }
        }
    }

    async fn raw(&mut self, mut stream: tokio::net::UnixStream, measured: &mut Measured) {
        while let Some(due) = self.schedule.next().await {
            let (first, body, bytes) = self.body();
            let mut written = Ok(());
            for chunk in body.into_chunks() {
                written = stream.write_all(&chunk).await;
                if written.is_err() {
                    break;
                }
            }
            match written {
                // The raw socket answers nothing: written is as accepted as it gets,
                // and the latency is that of the write.
                Ok(()) => measured.accepted(first, self.load.batch, bytes, due),
                Err(e) => {
                    measured.sent.record(first, self.load.batch as u64, Outcome::Unknown);
                    measured.failed_requests += 1;
                    measured.error(format!("raw socket write failed: {e}"));
                    return;
                }
            }
        }
        let _ = stream.shutdown().await;
    }
}

async fn reconnect(endpoint: &Endpoint) -> Option<Conn> {
    for _ in 0..50 {
        if let Ok(conn) = Conn::open(endpoint).await {
            return Some(conn);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_distributions_parse() {
        assert_eq!("100".parse(), Ok(Sizes::fixed(100)));
        assert_eq!("1MiB".parse(), Ok(Sizes::fixed(1 << 20)));
        assert_eq!("100..4KiB".parse(), Ok(Sizes { min: 100, max: 4096 }));
        assert!("10".parse::<Sizes>().is_err(), "smaller than the header");
        assert!("5KiB..1KiB".parse::<Sizes>().is_err());
        assert_eq!(Sizes { min: 100, max: 4096 }.to_string(), "100 B..4.0 KiB");
    }
}
