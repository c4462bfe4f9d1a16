//! What one run is: the load, the sink and the sidecar's batching options (the
//! `run` command's options, and what the suite fills in for each of its scenarios),
//! and the harness settings every command shares.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::body::Framing;
use crate::client::Endpoint;
use crate::load::{Load, Sizes, Target};
use crate::pin::{PinOptions, Pinning};

/// How messages reach the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// HTTP over TCP.
    Http,
    /// HTTP over the sidecar's Unix socket.
    Unix,
    /// The raw Unix socket: `--framing ndjson` writes lines, `--framing frames` frames.
    Raw,
}

/// What sends the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Client {
    /// The harness's own: every transport, framing and batch size, open loops.
    Harness,
    /// `wrk`, faster: single messages of one size over HTTP/TCP in a closed loop.
    Wrk,
}

/// `--layout` of the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Message,
    Batch,
}

/// Where the sidecar commits, and so where the read-back looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// `dir:` under the work directory, or at the path given.
    Dir(Option<PathBuf>),
    /// A named pipe under the work directory (created), or at the path given; read
    /// by the harness as a Pachyderm worker would.
    Fifo(Option<PathBuf>),
    /// `stdout:`: the sidecar's standard output goes into a named pipe the harness
    /// reads like a `fifo:` sink.
    Stdout,
}

impl std::str::FromStr for Sink {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let path = |p: &str| (!p.is_empty()).then(|| PathBuf::from(p));
        if s == "stdout" || s == "stdout:" {
            return Ok(Sink::Stdout);
        }
        match s.split_once(':') {
            None if s == "dir" => Ok(Sink::Dir(None)),
            None if s == "fifo" => Ok(Sink::Fifo(None)),
            Some(("dir", p)) => Ok(Sink::Dir(path(p))),
            Some(("fifo", p)) => Ok(Sink::Fifo(path(p))),
            _ => Err(format!("`{s}`: expected dir, fifo, dir:PATH, fifo:PATH or stdout")),
        }
    }
}

impl Serialize for Sink {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (kind, path) = match self {
            Sink::Dir(p) => ("dir", p),
            Sink::Fifo(p) => ("fifo", p),
            Sink::Stdout => ("stdout", &None),
        };
        match path {
            Some(p) => s.serialize_str(&format!("{kind}:{}", p.display())),
            None => s.serialize_str(kind),
        }
    }
}

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn opt_secs<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

pub(crate) fn size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>().map(|b| b.as_u64()).map_err(|e| format!("`{s}`: {e}"))
}

/// One load run against the sidecar.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Scenario {
    /// Name of the run in the report.
    #[arg(long, default_value = "run")]
    pub name: String,

    #[arg(long, value_enum, default_value = "http")]
    pub transport: Transport,

    /// How messages are framed in a request body (or on the raw socket: ndjson for
    /// lines, frames for length-prefixed frames).
    #[arg(long, value_enum, default_value = "raw")]
    pub framing: Framing,

    /// Messages per request (per write on the raw socket). `--framing raw` holds one.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,

    /// Message size: fixed (`100`, `1MiB`) or uniform over a range (`100..4KiB`).
    /// At least 43 bytes, which carry the message's id and checksum.
    #[arg(long, default_value = "100")]
    pub size: Sizes,

    /// Keep-alive connections (raw-socket streams), each a worker.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,

    /// Open loop at this many requests per second (latency counted from when each
    /// request was due); without it, a closed loop: each connection sends its next
    /// request as soon as the last is answered.
    #[arg(long, value_name = "REQ_PER_SEC")]
    pub rate: Option<f64>,

    /// With --rate over HTTP: the most connections the load grows to when a request
    /// falls due and every connection is still waiting for an answer, so that requests
    /// go out on time rather than queue in the harness (default: 4 x --connections).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// How long the load lasts.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "secs")]
    pub duration: Duration,

    /// What sends the load: `wrk` for ceilings and single-message POSTs, where the
    /// harness's own client would be the bottleneck.
    #[arg(long, value_enum, default_value = "harness")]
    pub client: Client,

    /// Send `?wait=commit`: each answer waits for its batch to be committed.
    #[arg(long)]
    pub wait_commit: bool,

    /// The sink: `fifo` or `dir` (in the work directory), `fifo:PATH` / `dir:PATH`,
    /// or `stdout` (the sidecar's tar stream on standard output, read by the harness).
    #[arg(long, default_value = "fifo")]
    pub sink: Sink,

    /// The sidecar's `--layout`.
    #[arg(long, value_enum, default_value = "message")]
    pub layout: Layout,

    /// The sidecar's `--max-batch-bytes` (its default if not given).
    #[arg(long, value_parser = size, value_name = "SIZE")]
    pub max_batch_bytes: Option<u64>,

    /// The sidecar's `--max-batch-messages`.
    #[arg(long, value_name = "N")]
    pub max_batch_messages: Option<u64>,

    /// The sidecar's `--max-batch-age`.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DUR")]
    #[serde(serialize_with = "opt_secs")]
    pub max_batch_age: Option<Duration>,

    /// The sidecar's `--max-buffer-bytes`.
    #[arg(long, value_parser = size, value_name = "SIZE")]
    pub max_buffer_bytes: Option<u64>,

    /// Any other sidecar option, passed as is (repeat: `--sidecar-arg=--when-full=reject`).
    #[arg(long = "sidecar-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub sidecar_args: Vec<String>,

    /// Read the FIFO no faster than this many MB/s: a slow consumer, so the sidecar's
    /// buffer fills.
    #[arg(long, value_name = "MB_PER_SEC")]
    pub reader_rate: Option<f64>,

    /// Read nothing from the FIFO for this long after the run starts (the pipe held
    /// open meanwhile): a stalled consumer, so a backlog builds while load goes on.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DUR")]
    #[serde(serialize_with = "opt_secs")]
    pub reader_delay: Option<Duration>,

    /// Load an already running sidecar's HTTP API (`tcp:HOST:PORT` or `unix:PATH`)
    /// instead of starting one; `--sink` must then name the path it commits to.
    #[arg(long, value_name = "ENDPOINT")]
    #[serde(skip)]
    pub connect: Option<Endpoint>,

    /// With `--connect` and `--transport raw`: the running sidecar's raw socket.
    #[arg(long, value_name = "PATH")]
    #[serde(skip)]
    pub raw_socket: Option<PathBuf>,

    /// With `--connect`: the running sidecar's pid, to report its peak RSS.
    #[arg(long, value_name = "PID")]
    #[serde(skip)]
    pub sidecar_pid: Option<u32>,
}

/// Settings of the harness itself, shared by every command.
#[derive(Debug, Clone, clap::Args)]
pub struct Harness {
    /// The sidecar binary. Default: built by `cargo build --release` in this
    /// workspace (so never a stale one).
    #[arg(long, global = true, value_name = "PATH")]
    pub sidecar: Option<PathBuf>,

    /// Without `--sidecar`, build and run the debug binary (correctness only).
    #[arg(long, global = true)]
    pub debug: bool,

    /// Where FIFOs, sockets, `dir:` sinks and server logs go (default: a temporary
    /// directory, removed afterwards unless `--keep`).
    #[arg(long, global = true, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// Keep the work directory.
    #[arg(long, global = true)]
    pub keep: bool,

    /// Also write the report as JSON to this file.
    #[arg(long, global = true, value_name = "FILE")]
    pub json: Option<PathBuf>,

    #[command(flatten)]
    pub pin: PinOptions,
}

impl Harness {
    /// How servers and harness are pinned on this machine.
    pub fn pinning(&self) -> Pinning {
        Pinning::chosen(&self.pin, crate::pin::cores())
    }
}

impl Scenario {
    /// A scenario with every option at its default, for the suite and tests to adjust.
    pub fn named(name: &str) -> Scenario {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            scenario: Scenario,
        }
        let mut scenario = <Defaults as clap::Parser>::parse_from(["loadtest"]).scenario;
        scenario.name = name.to_owned();
        scenario
    }

    /// The load this scenario sends to `target`, its messages tagged `run`.
    pub fn load(&self, target: Target, run: u32, check_accepted: bool) -> Load {
        Load {
            target,
            framing: self.framing,
            batch: self.batch,
            sizes: self.size,
            connections: self.connections,
            rate: self.rate,
            max_connections: self.max_connections.unwrap_or(4 * self.connections).max(self.connections),
            duration: self.duration,
            wait_commit: self.wait_commit,
            run,
            check_accepted,
        }
    }

    /// How the read-back splits a committed file into messages.
    pub fn separator(&self) -> crate::verify::Separator {
        if self.layout == Layout::Batch && self.framing.is_line_oriented() {
            crate::verify::Separator::Newline
        } else {
            crate::verify::Separator::None
        }
    }
}
