//! The object-store sinks, `s3://`, `gs://` and `wasb://`: each batch becomes one
//! commit, the objects `DIR/<commit id>/<file>` (or one tar object) and, written
//! last, the manifest `DIR/<commit id>/_SPOUT_COMMIT.json`; a commit exists once
//! its manifest does.
//!
//! One client crate, `object_store`, speaks to all three stores. Commits run on a
//! committer thread ([`super::committer_thread`]), one batch after the other; the
//! objects of a batch are uploaded several at once. `uri` parses the URI and opens
//! the client, `body` cuts a batch into objects and parts, `committer` uploads and
//! retries, `requests` times and counts each request, `manifest` is the manifest.

mod body;
mod committer;
mod manifest;
mod requests;
pub mod uri;

use std::time::Duration;

use self::committer::ObjectCommitter;
use self::uri::ObjectUri;
use super::committer_thread::CommitterThread;
use super::spec::{BadSinkUri, OpenSink, Scheme, SinkSettings, SinkSpec};
use super::{Commit, Sink, SinkContext};

pub const S3: Scheme = Scheme { prefix: "s3:", form: uri::S3_FORM, parse };
pub const GS: Scheme = Scheme { prefix: "gs:", form: uri::GS_FORM, parse };
pub const WASB: Scheme = Scheme { prefix: "wasb:", form: uri::WASB_FORM, parse };

fn parse(uri: &str) -> Result<SinkSpec, BadSinkUri> {
    ObjectUri::parse(uri).map(SinkSpec::new).map_err(|e| BadSinkUri(e.to_string()))
}

/// `--object-format`: how a commit's files become objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ObjectFormat {
    /// One object per file: `DIR/<commit id>/<file name>`.
    #[default]
    Files,
    /// One tar archive per commit, as the `fifo:` sink writes it.
    Tar,
}

/// `--compression`: what is applied to every object's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// gzip (`.gz`, `Content-Encoding: gzip`).
    Gzip,
    /// Zstandard (`.zst`, `Content-Encoding: zstd`).
    Zstd,
}

impl ObjectFormat {
    fn as_str(self) -> &'static str {
        match self {
            ObjectFormat::Files => "files",
            ObjectFormat::Tar => "tar",
        }
    }
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }
}

impl OpenSink for ObjectUri {
    fn open(&self, settings: &SinkSettings) -> std::io::Result<Box<dyn Sink>> {
        // A client that cannot be configured (no region, a bad key) is refused here,
        // at start, rather than retried forever.
        let store =
            self.open_client().map_err(|e| std::io::Error::other(format!("cannot configure the client: {e}")))?;
        let (uri, shape) = (self.clone(), (settings.object_format, settings.compression));
        let thread = CommitterThread::new("object-commit", PROBE_EVERY, move |ctx: &SinkContext| {
            ObjectCommitter::new(uri, store, shape, ctx.clone())
        });
        Ok(Box::new(ObjectSink { describe: self.to_string(), thread }))
    }
}

/// How often an idle sink checks that the bucket is there and takes the credentials.
const PROBE_EVERY: Duration = Duration::from_secs(2);

pub struct ObjectSink {
    describe: String,
    thread: CommitterThread<ObjectCommitter>,
}

impl Sink for ObjectSink {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn submit(&mut self, commit: Commit, ctx: &SinkContext) {
        self.thread.submit(commit, ctx);
    }

    fn settle(&mut self, wait: Duration, _ctx: &SinkContext) -> usize {
        self.thread.settle(wait)
    }

    fn probe(&mut self, ctx: &SinkContext) {
        self.thread.probe(ctx);
    }
}
