//! Command-line options. Every option also reads `SPOUT_<NAME>` from the environment.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::encode::Layout;
use crate::ingest::raw_socket::RawFraming;
use crate::ingest::source::SourceSpec;
use crate::ingest::WhenFull;
use crate::sink::object::{Compression, ObjectFormat};
use crate::sink::SinkSpec;
use crate::spool::SpoolSync;

/// Streams messages into Pachyderm spouts, committing batches to a named pipe
/// (fifo:), a Pachyderm 2.x repo (pfs://), a directory (dir:), standard output
/// (stdout:) or an object store (s3://, gs://, wasb://).
///
/// Producers send messages with `POST /messages` (TCP or a Unix socket) or write
/// them to a raw Unix socket; the sidecar batches them by size, count and age and
/// commits each batch to the sink: one tar archive into a spout's named pipe
/// (fifo:PATH) or onto standard output (stdout:), one Pachyderm 2.x commit over
/// gRPC (pfs://HOST:PORT/REPO@BRANCH), one directory per commit (dir:PATH), or
/// objects under one prefix per commit in a bucket, with a manifest written last
/// (s3://[ENDPOINT/]BUCKET/DIR, gs://BUCKET/DIR, wasb://CONTAINER@ACCOUNT/DIR).
/// Every option also reads the environment variable shown with it.
///
/// With `-- CMD [ARGS...]` it also runs CMD (the producer) with SPOUT_URL,
/// SPOUT_SOCKET, SPOUT_RAW_SOCKET and SPOUT_AUTH_TOKEN_FILE set as configured,
/// forwards SIGTERM and SIGINT to it, and when CMD ends, commits what it sent and
/// exits with CMD's exit code.
#[derive(Debug, Clone, Parser)]
#[command(version, long_about, max_term_width = 100)]
pub struct Options {
    /// HTTP on TCP; `none` turns it off.
    #[arg(long, env = "SPOUT_LISTEN", default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: Listen,

    /// HTTP on a Unix socket (created with mode 0660).
    #[arg(long, env = "SPOUT_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Raw stream on a Unix socket: newline-delimited messages, or length-prefixed
    /// frames with `--raw-framing frames`.
    #[arg(long, env = "SPOUT_RAW_SOCKET", value_name = "PATH")]
    pub raw_socket: Option<PathBuf>,

    /// How the raw socket's stream is cut into messages.
    #[arg(long, env = "SPOUT_RAW_FRAMING", value_enum, default_value = "lines")]
    pub raw_framing: RawFraming,

    /// Where batches go: fifo:PATH, dir:PATH, stdout:, pfs://HOST:PORT/REPO@BRANCH
    /// (?project=P&writer=NAME; writer names this sidecar among several writing the
    /// branch, default the spool's writer id with --spool-dir, else HOST-PID), s3://[ENDPOINT/]BUCKET/DIR, gs://BUCKET/DIR,
    /// wasb://CONTAINER@ACCOUNT/DIR or auto (fifo:/pfs/out when that is a named
    /// pipe, else pachd inside a Pachyderm 2.x worker, else dir:./spout-out; never
    /// an object store).
    #[arg(long, env = "SPOUT_SINK", default_value = "auto", value_name = "URI")]
    pub sink: SinkSpec,

    /// Read messages from a broker as well: kafka://, amqp:// or sqs:// (repeat for
    /// several; SPOUT_SOURCE holds one). Where each source had got is committed
    /// with the data, in .spout/checkpoints/, and read back at start-up to resume
    /// there. See docs/sources.md.
    #[arg(long = "source", env = "SPOUT_SOURCE", value_name = "URI")]
    pub sources: Vec<SourceSpec>,

    /// What names this sidecar's checkpoint files among replicas reading the same
    /// source into one place; it must stay the same across restarts (a
    /// StatefulSet's pod name does). Default: the host name.
    #[arg(long, env = "SPOUT_SOURCE_REPLICA", value_name = "NAME", value_parser = parse_replica)]
    pub source_replica: Option<String>,

    /// Commit a batch once it holds this many payload bytes.
    #[arg(long, env = "SPOUT_MAX_BATCH_BYTES", default_value = "8MiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_batch_bytes: u64,

    /// Commit a batch once it holds this many messages.
    #[arg(long, env = "SPOUT_MAX_BATCH_MESSAGES", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub max_batch_messages: u64,

    /// Commit a batch once its first message is this old.
    #[arg(long, env = "SPOUT_MAX_BATCH_AGE", default_value = "1s", value_parser = humantime::parse_duration, value_name = "DUR")]
    pub max_batch_age: Duration,

    /// Memory budget for accepted, not yet committed payload; past it, back-pressure.
    /// With --spool-dir, a batch sealed while keeping it would leave less room than a
    /// full batch takes waits on disk instead, read back when the sink takes it, so
    /// the backlog is bounded by --max-spool-bytes.
    #[arg(long, env = "SPOUT_MAX_BUFFER_BYTES", default_value = "256MiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_buffer_bytes: u64,

    /// A directory for the disk spool: a request is answered 202 only once its
    /// messages are written there (see --spool-sync), and a restart commits what a
    /// crash left uncommitted, before anything new, exactly once into dir:, pfs://
    /// and the object stores. It keeps the sidecar's pfs:// writer name too
    /// (PATH/writer-id). One sidecar per directory.
    #[arg(long, env = "SPOUT_SPOOL_DIR", value_name = "PATH")]
    pub spool_dir: Option<PathBuf>,

    /// With --spool-dir, how durable messages are before the 202: `always`
    /// fdatasyncs first (survives a power cut; concurrent requests share one sync),
    /// `never` only writes to the page cache (survives the sidecar dying, not the
    /// machine), a duration such as `100ms` syncs that often in the background. The
    /// default is `always`: a node can fail as well as a pod, and sharing syncs keeps
    /// the cost small.
    #[arg(long, env = "SPOUT_SPOOL_SYNC", default_value = "always", value_name = "always|never|DUR")]
    pub spool_sync: SpoolSync,

    /// With --spool-dir, the most bytes of messages the spool holds on disk, which
    /// bounds a lagging sink's backlog; past it, back-pressure as for a full buffer
    /// (--when-full).
    #[arg(long, env = "SPOUT_MAX_SPOOL_BYTES", default_value = "1GiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_spool_bytes: u64,

    /// When the buffer is full: hold requests up to --block-timeout, or 503 at once.
    #[arg(long, env = "SPOUT_WHEN_FULL", value_enum, default_value = "block")]
    pub when_full: WhenFull,

    /// How long --when-full block holds a request before answering 503.
    #[arg(long, env = "SPOUT_BLOCK_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration, value_name = "DUR")]
    pub block_timeout: Duration,

    /// Largest single message (of a compressed body, once decoded); larger ones get 413.
    #[arg(long, env = "SPOUT_MAX_MESSAGE_BYTES", default_value = "64MiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_message_bytes: u64,

    /// Largest request body, compressed and decoded alike; larger ones get 413 before they are read (a compressed one as soon as it decodes past it).
    #[arg(long, env = "SPOUT_MAX_REQUEST_BYTES", default_value = "128MiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_request_bytes: u64,

    /// For s3://, gs:// and wasb:// sinks: one object per file (`files`), or the
    /// whole commit as one tar object (`tar`), as the fifo: sink writes it.
    #[arg(long, env = "SPOUT_OBJECT_FORMAT", value_enum, default_value = "files")]
    pub object_format: ObjectFormat,

    /// For s3://, gs:// and wasb:// sinks: compress every object (suffix `.gz` or
    /// `.zst`, and its Content-Encoding set to match); uncompressed without it.
    #[arg(long, env = "SPOUT_COMPRESSION", value_enum, value_name = "ALGORITHM")]
    pub compression: Option<Compression>,

    /// One file per message, or one file per batch holding all its messages.
    #[arg(long, env = "SPOUT_LAYOUT", value_enum, default_value = "message")]
    pub layout: Layout,

    /// Replace a file already in the repo rather than append to it.
    #[arg(long, env = "SPOUT_OVERWRITE")]
    pub overwrite: bool,

    /// Require `Authorization: Bearer <token>` (the file's first line) on HTTP,
    /// health endpoints excepted.
    #[arg(long, env = "SPOUT_AUTH_TOKEN_FILE", value_name = "PATH")]
    pub auth_token_file: Option<PathBuf>,

    /// For a pfs:// sink: a file whose first line is the pachd auth token (sent as
    /// `authn-token`). Without it, SPOUT_PACHD_TOKEN, else the pachctl config's
    /// session token. Read again before each retry, so a fixed token needs no restart.
    #[arg(long, env = "SPOUT_PACHD_TOKEN_FILE", value_name = "PATH")]
    pub pachd_token_file: Option<PathBuf>,

    /// For a pfs:// sink: the pachd auth token itself (prefer the environment or
    /// --pachd-token-file to keep it out of `ps`).
    #[arg(long, env = "SPOUT_PACHD_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub pachd_token: Option<String>,

    /// Serve --listen over TLS (HTTPS, and HTTP/2 offered by ALPN) with this
    /// certificate chain: PEM, the server's certificate first. Needs --tls-key. Both
    /// files are read again on SIGHUP: new connections get the new certificate, open
    /// ones keep theirs, and a pair that fails to load keeps the old one (logged).
    /// TLS is no authentication: a non-loopback --listen still needs --auth-token-file
    /// or --allow-unauthenticated.
    #[arg(long, env = "SPOUT_TLS_CERT", value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert: PEM, PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    #[arg(long, env = "SPOUT_TLS_KEY", value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// fifo: without the pipe holder. By default the sink hands its end of the pipe
    /// to a small helper process too (this binary, started again), so that a
    /// sidecar killed inside an archive cannot leave Pachyderm's reader a clean
    /// end of file there, where it would commit part of the batch; the helper spoils
    /// the broken archive instead, the reader commits none of it, and the spool
    /// replays the batch whole. Turn it off only where a second process cannot run.
    #[arg(long, env = "SPOUT_NO_FIFO_HOLDER")]
    pub no_fifo_holder: bool,

    /// Listen on a non-loopback TCP address without --auth-token-file. A spout
    /// `service` exposes the port to the whole cluster: only do this on purpose.
    #[arg(long, env = "SPOUT_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// How long a client may take to send a request's headers.
    #[arg(long, env = "SPOUT_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, value_name = "DUR")]
    pub header_timeout: Duration,

    /// How long a client may take to send a request's whole body; past it, 408.
    #[arg(long, env = "SPOUT_BODY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration, value_name = "DUR")]
    pub body_timeout: Duration,

    /// Most HTTP connections served at once (TCP and Unix socket each); further
    /// clients wait in the listen backlog (1024 of them). Also the most requests served at once,
    /// HTTP/2 streams included: further streams wait their turn.
    #[arg(long, env = "SPOUT_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub max_connections: u32,

    /// How many `Idempotency-Key`s to remember for retries.
    #[arg(long, env = "SPOUT_IDEMPOTENCY_KEYS", default_value_t = 100_000, value_name = "N")]
    pub idempotency_keys: usize,

    /// How long to remember an `Idempotency-Key`.
    #[arg(long, env = "SPOUT_IDEMPOTENCY_WINDOW", default_value = "10m", value_parser = humantime::parse_duration, value_name = "DUR")]
    pub idempotency_window: Duration,

    /// On SIGTERM, how long to keep committing what was accepted before giving up
    /// and exiting non-zero. Kubernetes waits 30 s by default.
    #[arg(long, env = "SPOUT_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration, value_name = "DUR")]
    pub shutdown_timeout: Duration,

    /// Log filter, e.g. `info` or `spout_sidecar=debug`.
    #[arg(long, env = "SPOUT_LOG", default_value = "info", value_name = "FILTER")]
    pub log: String,

    /// The producer to run under the sidecar.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `--listen`: a TCP address or `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(String),
    None,
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" | "" => Ok(Listen::None),
            addr if addr.contains(':') => Ok(Listen::Tcp(addr.to_owned())),
            other => Err(format!("`{other}` is not HOST:PORT or `none`")),
        }
    }
}

/// Sizes such as `512KiB`, `8MiB`, `1GiB`, `1000`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|e| format!("`{s}` is not a size like 8MiB: {e}"))
}

impl Options {
    /// `--source-replica`, or the host name.
    pub fn source_replica(&self) -> String {
        let host = || crate::message::hostname().unwrap_or_else(|| "spout-sidecar".into());
        self.source_replica.clone().unwrap_or_else(host)
    }
}

/// A replica name becomes part of a file name: letters, digits, `-`, `_` and `.`.
fn parse_replica(name: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !name.is_empty() && name.chars().all(allowed) && !name.starts_with('.') {
        Ok(name.to_owned())
    } else {
        Err(format!("`{name}` is not a replica name: use letters, digits, `-`, `_` and `.`, not first"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_defaults() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
        let opts = Options::try_parse_from(["spout-sidecar"]).unwrap();
        assert_eq!(opts.listen, Listen::Tcp("127.0.0.1:8080".into()));
        assert_eq!(opts.max_batch_age, Duration::from_secs(1));
        let opts = Options::try_parse_from(["spout-sidecar", "--listen", "none", "--", "python3", "-c", "1"]).unwrap();
        assert_eq!((opts.listen, opts.command.len()), (Listen::None, 3));
    }
}
