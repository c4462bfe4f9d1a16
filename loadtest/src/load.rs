//! The load itself: workers on keep-alive connections (or raw-socket streams), on one
//! thread per client core, in a closed loop (each sends its next request once the last
//! is answered) or an open loop (requests are due at a fixed rate, and latency counts
//! from when a request was due, not when a free connection got round to it, so a
//! stalled server cannot hide its stall by slowing the generator down: no coordinated
//! omission).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use hyper::Method;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::body::{encode, Framing};
use crate::client::{Answer, Conn, Endpoint};
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
    /// The most connections an open loop over HTTP grows to when a request falls due
    /// and every connection is still waiting for an answer.
    pub max_connections: usize,
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
    /// Microseconds from when a request was due to when it went out, accepted requests
    /// only: in an open loop, the harness's own lateness (no connection free, a busy
    /// client core), which `latency` counts but the server never sees.
    pub lag: Histogram<u64>,
    pub accepted_requests: u64,
    pub refused_requests: u64,
    pub failed_requests: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub messages: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Connections an open loop opened during the run to send on time.
    pub added_connections: u64,
    pub errors: Vec<String>,
}

impl Measured {
    pub fn empty() -> Self {
        Self {
            sent: Sent::default(),
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds"),
            lag: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds"),
            accepted_requests: 0,
            refused_requests: 0,
            failed_requests: 0,
            statuses: BTreeMap::new(),
            messages: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            added_connections: 0,
            errors: Vec::new(),
        }
    }

    fn merge(&mut self, other: Measured) {
        self.sent.merge(other.sent);
        self.latency.add(&other.latency).expect("same bounds");
        self.lag.add(&other.lag).expect("same bounds");
        self.accepted_requests += other.accepted_requests;
        self.refused_requests += other.refused_requests;
        self.failed_requests += other.failed_requests;
        for (code, n) in other.statuses {
            *self.statuses.entry(code).or_default() += n;
        }
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.added_connections += other.added_connections;
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

    fn accepted(&mut self, first: u64, count: usize, bytes: usize, (due, sent): (Instant, Instant)) {
        self.sent.record(first, count as u64, Outcome::Accepted);
        self.accepted_requests += 1;
        self.messages += count as u64;
        self.bytes += bytes as u64;
        self.latency.saturating_record(due.elapsed().as_micros().max(1) as u64);
        self.lag.saturating_record(sent.saturating_duration_since(due).as_micros().max(1) as u64);
    }
}

/// What every client core's workers share: the ids, the open loop's tickets, and
/// the moment the load starts.
struct Shared {
    ids: AtomicU64,
    tickets: AtomicU64,
    /// Connections open or being opened, on every core.
    connections: AtomicUsize,
    /// Every core waits here with its connections open, so that the clock starts once
    /// all are connected.
    connected: Barrier,
    /// A core could not connect: the others do not start.
    failed: AtomicBool,
    /// Set by the first core past `connected`.
    start: OnceLock<Instant>,
}

/// When each request is due.
struct Schedule {
    start: Instant,
    end: Instant,
    rate: Option<f64>,
    shared: Arc<Shared>,
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
                let n = self.shared.tickets.fetch_add(1, Ordering::Relaxed);
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
        self.shared.ids.fetch_add(count as u64, Ordering::Relaxed)
    }
}

/// Runs the load to its end and gathers what the workers measured.
///
/// The connections are dealt out to one thread per core the harness may use (its
/// client cores once pinned), each running its share on a current-thread runtime,
/// as wrk runs one event loop per thread: the workers of a core take turns on it
/// with no work-stealing scheduler between them, and share one histogram and one
/// message generator that stay in that core's cache.
pub async fn drive(load: &Load) -> anyhow::Result<Measured> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, load.connections.max(1));
    let shared = Arc::new(Shared {
        ids: AtomicU64::new(0),
        tickets: AtomicU64::new(0),
        connections: AtomicUsize::new(load.connections),
        connected: Barrier::new(cores),
        failed: AtomicBool::new(false),
        start: OnceLock::new(),
    });
    let generator = Generator::new(load.run, load.sizes.max);
    let mut cores_done = Vec::with_capacity(cores);
    for core in 0..cores {
        let (done, result) = tokio::sync::oneshot::channel();
        let (load, shared, generator) = (load.clone(), shared.clone(), generator.clone());
        std::thread::Builder::new().name(format!("load-{core}")).spawn(move || {
            let _ = done.send(drive_core(core, cores, load, shared, generator));
        })?;
        cores_done.push(result);
    }
    let mut total = Measured::empty();
    for result in cores_done {
        total.merge(result.await.context("a load thread panicked")??);
    }
    total.elapsed = shared.start.get().map_or(Duration::ZERO, Instant::elapsed);
    Ok(total)
}

/// What one core's workers share. They take turns on one thread, so a histogram and
/// a generator (with its cache of filler checksums) for all of them stay hot, where
/// one of each per connection (64 histograms of 190 KiB) missed the cache on every
/// request.
struct CoreState {
    measured: Measured,
    generator: Generator,
}

/// Connections `core`, `core + cores`, … of the load, on this thread.
fn drive_core(
    core: usize,
    cores: usize,
    load: Load,
    shared: Arc<Shared>,
    generator: Generator,
) -> anyhow::Result<Measured> {
    let opened = open_share(core, cores, &load);
    // Connect everyone before the clock starts.
    if opened.is_err() {
        shared.failed.store(true, Ordering::Relaxed);
    }
    shared.connected.wait();
    let (runtime, conns) = opened?;
    if shared.failed.load(Ordering::Relaxed) {
        // Another core's error is the one reported.
        return Ok(Measured::empty());
    }
    let start = *shared.start.get_or_init(Instant::now);
    let schedule = Rc::new(Schedule { start, end: start + load.duration, rate: load.rate, shared });
    let state = Rc::new(RefCell::new(CoreState { measured: Measured::empty(), generator }));
    let load = Rc::new(load);
    let worker = |n: usize, conn: Connection| {
        let worker = Worker {
            load: load.clone(),
            schedule: schedule.clone(),
            state: state.clone(),
            rng: fastrand::Rng::with_seed(u64::from(load.run) << 16 | n as u64),
        };
        tokio::task::spawn_local(worker.run(conn))
    };
    tokio::task::LocalSet::new().block_on(&runtime, async {
        let mut workers: Vec<_> = conns.into_iter().map(|(n, conn)| worker(n, conn)).collect();
        workers.extend(keep_on_time(&load, &schedule, &state, &worker).await);
        for worker in workers {
            worker.await.context("a load worker panicked")?;
        }
        anyhow::Ok(())
    })?;
    let state = Rc::try_unwrap(state).ok().context("a load worker outlived the load")?;
    Ok(state.into_inner().measured)
}

/// How late past its due time a request may still be unclaimed before another
/// connection is opened for it: tokio's timers tick in milliseconds.
const GRACE: Duration = Duration::from_millis(1);

/// Keeps an open loop over HTTP on time: whenever a request is still unclaimed
/// [`GRACE`] after it fell due (every connection waiting for an answer), opens another
/// connection to send it, up to `load.max_connections` over all cores; returns the
/// workers started so.
///
/// With a fixed set of connections, a request due while all wait went out only once
/// some answer freed one, and its latency, counted from when it was due, took in
/// that wait, which is the harness's and not the server's. With `?wait=commit` it
/// feeds on itself: a batch's waiters are answered at once, the requests sent on the
/// freed connections land together in the next batch, and the connections move in
/// lockstep, one round trip per batch, falling further behind with each (a p99 of
/// 1.85 s where the sidecar answered every request within 153 ms).
async fn keep_on_time(
    load: &Load,
    schedule: &Schedule,
    state: &RefCell<CoreState>,
    worker: &impl Fn(usize, Connection) -> tokio::task::JoinHandle<()>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut added = Vec::new();
    // A raw-socket stream has no answer to wait for: it is late only when the server
    // does not read, and more streams would hide that.
    let (Some(rate), Target::Http(_)) = (schedule.rate, &load.target) else { return added };
    let shared = &schedule.shared;
    loop {
        let next = shared.tickets.load(Ordering::Relaxed);
        let due = schedule.start + Duration::from_secs_f64(next as f64 / rate);
        if due >= schedule.end {
            return added;
        }
        tokio::time::sleep_until(due + GRACE).await;
        if shared.tickets.load(Ordering::Relaxed) != next {
            continue;
        }
        let n = shared.connections.fetch_add(1, Ordering::Relaxed);
        if n >= load.max_connections {
            // Past the cap, requests wait for a free connection: `lag` shows it.
            return added;
        }
        match Connection::open(&load.target).await {
            Ok(conn) => {
                added.push(worker(n, conn));
                state.borrow_mut().measured.added_connections += 1;
                // Let the new worker claim the request before looking again.
                tokio::task::yield_now().await;
            }
            Err(e) => {
                state.borrow_mut().measured.error(format!("opening another connection: {e:#}"));
                return added;
            }
        }
    }
}

/// This core's runtime, and its connections opened on it: a tokio socket stays with
/// the runtime it was opened on.
fn open_share(
    core: usize,
    cores: usize,
    load: &Load,
) -> anyhow::Result<(tokio::runtime::Runtime, Vec<(usize, Connection)>)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let connections = runtime.block_on(async {
        let mut connections = Vec::new();
        for n in (core..load.connections).step_by(cores) {
            connections.push((n, Connection::open(&load.target).await?));
        }
        anyhow::Ok(connections)
    })?;
    Ok((runtime, connections))
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
    load: Rc<Load>,
    schedule: Rc<Schedule>,
    state: Rc<RefCell<CoreState>>,
    rng: fastrand::Rng,
}

#[derive(serde::Deserialize)]
struct Accepted {
    accepted: u64,
}

impl Worker {
    async fn run(mut self, conn: Connection) {
        match conn {
            Connection::Http(conn) => self.http(conn).await,
            Connection::Raw(stream) => self.raw(stream).await,
        }
    }

    /// The next request: its first id, its body and its payload bytes.
    fn body(&mut self) -> (u64, crate::body::ChunkBody, usize) {
        let first = self.schedule.ids(self.load.batch);
        let generator = &mut self.state.borrow_mut().generator;
        let messages: Vec<_> = (0..self.load.batch as u64)
            .map(|k| {
                let size = self.load.sizes.pick(&mut self.rng);
                generator.message(first + k, size)
            })
            .collect();
        let payload = messages.iter().map(|m| m.size()).sum();
        (first, encode(self.load.framing, &messages), payload)
    }

    async fn http(&mut self, mut conn: Conn) {
        let load = self.load.clone();
        let Target::Http(endpoint) = &load.target else { unreachable!() };
        let path = if load.wait_commit { "/messages?wait=commit" } else { "/messages" };
        let content_type = load.framing.content_type();
        while let Some(due) = self.schedule.next().await {
            let (first, body, bytes) = self.body();
            let sent = Instant::now();
            let answer = conn.send(Method::POST, path, &content_type, body).await;
            if !self.answered(answer, first, bytes, (due, sent)) {
                match reconnect(endpoint).await {
                    Some(fresh) => conn = fresh,
                    None => return,
                }
            }
        }
    }

    /// Records what became of the request carrying messages `first…`, due and sent at
    /// `times`; `false` when its connection failed.
    fn answered(&self, answer: anyhow::Result<Answer>, first: u64, bytes: usize, times: (Instant, Instant)) -> bool {
        let count = self.load.batch;
        let measured = &mut self.state.borrow_mut().measured;
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                measured.sent.record(first, count as u64, Outcome::Unknown);
                measured.failed_requests += 1;
                measured.error(format!("request failed: {e:#}"));
                return false;
            }
        };
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
            measured.accepted(first, count, bytes, times);
        } else {
            // A 5xx other than 503 is a failed commit a waiter was told of: whether
            // its messages made it is not known.
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
        true
    }

    async fn raw(&mut self, mut stream: tokio::net::UnixStream) {
        while let Some(due) = self.schedule.next().await {
            let (first, body, bytes) = self.body();
            let sent = Instant::now();
            let mut written = Ok(());
            for chunk in body.into_chunks() {
                written = stream.write_all(&chunk).await;
                if written.is_err() {
                    break;
                }
            }
            let measured = &mut self.state.borrow_mut().measured;
            match written {
                // The raw socket answers nothing: written is as accepted as it gets,
                // and the latency is that of the write.
                Ok(()) => measured.accepted(first, self.load.batch, bytes, (due, sent)),
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
    use crate::scenario::Scenario;
    use crate::verify::tests::tallying_server;
    use crate::verify::{verdict, Separator};

    /// Batches over more connections than cores, so each core drives several and ids
    /// come from every core: each message answered arrives once, none is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_from_every_core_are_accounted_for() {
        let run = 0x10ad;
        let (addr, tally) = tallying_server(run, Separator::Newline).await;
        let mut scenario = Scenario::named("cores");
        (scenario.duration, scenario.connections, scenario.batch) = (Duration::from_millis(300), 5, 10);
        (scenario.framing, scenario.size) = (Framing::Ndjson, "43..300".parse().unwrap());
        let load = scenario.load(Target::Http(Endpoint::Tcp(addr)), run, false);
        let measured = drive(&load).await.unwrap();
        let v = verdict(&measured.sent, &tally.lock().unwrap());
        assert!(v.ok && v.found == v.accepted && v.unknown == 0, "{v:#?}\n{:?}", measured.errors);
        assert_eq!(measured.messages, v.accepted);
        assert_eq!(measured.latency.len(), measured.accepted_requests);
    }

    /// An HTTP server that answers every request `delay` after it came, as
    /// `?wait=commit` does: the address.
    async fn slow_server(delay: Duration) -> std::net::SocketAddr {
        use http_body_util::{BodyExt, Full};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service =
                    hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| async move {
                        request.into_body().collect().await?;
                        tokio::time::sleep(delay).await;
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(bytes::Bytes::from_static(b"{}"))))
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
            }
        });
        addr
    }

    /// An open loop at 400 requests/s into a server that takes 50 ms to answer needs
    /// some 20 connections: from 4, the load opens more so that requests go out when
    /// they are due, and their latency is the server's 50 ms, not a queue in the
    /// harness. Held to 8, requests go out ever later, and `lag` says by how much.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_open_loop_opens_connections_to_send_on_time() {
        let addr = slow_server(Duration::from_millis(50)).await;
        let mut scenario = Scenario::named("on-time");
        (scenario.duration, scenario.connections, scenario.rate) = (Duration::from_secs(1), 4, Some(400.0));
        scenario.max_connections = Some(64);
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;

        let grown = drive(&scenario.load(Target::Http(Endpoint::Tcp(addr)), 1, false)).await.unwrap();
        assert_eq!(grown.accepted_requests, 400, "{:?}", grown.errors);
        assert!(grown.added_connections > 0);
        // Generous bounds for a busy test machine: held to 4 connections, the lag
        // would reach most of a second.
        assert!(ms(&grown.lag, 0.99) < 100.0, "lag p99 {} ms", ms(&grown.lag, 0.99));
        assert!(ms(&grown.latency, 0.99) < 200.0, "latency p99 {} ms", ms(&grown.latency, 0.99));

        // 200 requests over 8 connections that each carry 20 a second: 1.25 s.
        (scenario.duration, scenario.connections, scenario.max_connections) = (Duration::from_millis(500), 8, Some(8));
        let held = drive(&scenario.load(Target::Http(Endpoint::Tcp(addr)), 2, false)).await.unwrap();
        assert_eq!(held.added_connections, 0);
        assert!(ms(&held.lag, 0.99) > 300.0, "lag p99 {} ms", ms(&held.lag, 0.99));
        assert!(held.latency.value_at_quantile(0.99) >= held.lag.value_at_quantile(0.99));
    }

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
