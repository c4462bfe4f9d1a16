//! `--sink`: the URI that names a sink, the table of the kinds there are, and how
//! `auto` picks one.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use super::reader::{CommitReader, Unreadable};
use super::{dir, fifo, object, pfs, stdout, Sink};

/// One kind of sink as `--sink` names it.
pub struct Scheme {
    /// What its URIs start with, e.g. `fifo:`.
    pub prefix: &'static str,
    /// Its form in errors and help, e.g. `fifo:PATH`.
    pub form: &'static str,
    /// Parses a whole URI that starts with `prefix`.
    pub parse: fn(uri: &str) -> Result<SinkSpec, BadSinkUri>,
}

/// Every kind of sink, in the order errors list them.
pub const SCHEMES: &[Scheme] =
    &[fifo::SCHEME, dir::SCHEME, stdout::SCHEME, pfs::SCHEME, object::S3, object::GS, object::WASB];

/// A sink a URI described, ready to be opened.
pub trait OpenSink: fmt::Debug + fmt::Display + Send + Sync {
    fn open(&self, settings: &SinkSettings) -> std::io::Result<Box<dyn Sink>>;

    /// What reads this sink's commits back for the HTTP API; called inside the
    /// tokio runtime. A sink that keeps nothing readable refuses every read.
    fn reader(&self, _settings: &SinkSettings) -> Arc<dyn CommitReader> {
        Arc::new(Unreadable { sink: self.to_string() })
    }

    /// Whether the sink writes to standard output, which a supervised producer
    /// then must not share.
    fn writes_stdout(&self) -> bool {
        false
    }
}

/// What reaches a sink from options other than its URI.
#[derive(Debug, Clone, Default)]
pub struct SinkSettings {
    /// `--pachd-token-file`, for a `pfs://` URI that names no token.
    pub pachd_token_file: Option<PathBuf>,
    /// `SPOUT_PACHD_TOKEN`, likewise.
    pub pachd_token: Option<String>,
    /// `--object-format`, for the object-store sinks.
    pub object_format: object::ObjectFormat,
    /// `--compression`, likewise.
    pub compression: Option<object::Compression>,
    /// The writer name for a `pfs://` URI that names none: the spool's, with
    /// `--spool-dir`, so that a restart recognises the batches it replays.
    pub writer: Option<String>,
    /// Not `--no-fifo-holder`: `fifo:` starts a pipe holder with each open.
    pub fifo_holder: bool,
    /// `--spool-dir`, where the `fifo:` pipe holder hands over to a restarted sidecar.
    pub spool_dir: Option<PathBuf>,
}

/// A parsed `--sink`.
#[derive(Debug, Clone)]
pub enum SinkSpec {
    Auto,
    Uri(Arc<dyn OpenSink>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadSinkUri(pub String);

impl SinkSpec {
    pub fn new(sink: impl OpenSink + 'static) -> Self {
        SinkSpec::Uri(Arc::new(sink))
    }

    /// Opens the sink this names (`auto` resolved here).
    pub fn open(&self, settings: &SinkSettings) -> std::io::Result<Box<dyn Sink>> {
        self.resolve().open(settings)
    }

    /// The sink to open: this one, or the one `auto` resolves to here.
    pub fn resolve(&self) -> Arc<dyn OpenSink> {
        match self {
            SinkSpec::Uri(sink) => sink.clone(),
            // Never `auto` again, so this recursion ends at once.
            SinkSpec::Auto => resolve_auto().resolve(),
        }
    }
}

impl FromStr for SinkSpec {
    type Err = BadSinkUri;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        if uri == "auto" {
            return Ok(SinkSpec::Auto);
        }
        match SCHEMES.iter().find(|scheme| uri.starts_with(scheme.prefix)) {
            Some(scheme) => (scheme.parse)(uri),
            None => {
                let forms: Vec<&str> = SCHEMES.iter().map(|s| s.form).collect();
                Err(BadSinkUri(format!("unknown sink `{uri}`: expected {} or auto", forms.join(", "))))
            }
        }
    }
}

impl fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkSpec::Auto => f.write_str("auto"),
            SinkSpec::Uri(sink) => sink.fmt(f),
        }
    }
}

/// A kind of sink named by a file system path: `SCHEME:PATH`.
#[derive(Debug)]
pub struct PathKind {
    pub scheme: &'static str,
    pub open: fn(PathBuf, &SinkSettings) -> std::io::Result<Box<dyn Sink>>,
    /// What reads its commits back, if it keeps them readable.
    pub read: Option<fn(PathBuf) -> Arc<dyn CommitReader>>,
}

/// A sink named by a file system path: `SCHEME:PATH`.
#[derive(Debug, Clone)]
pub struct PathSink {
    kind: &'static PathKind,
    path: PathBuf,
}

impl PathSink {
    pub fn spec(kind: &'static PathKind, path: PathBuf) -> SinkSpec {
        SinkSpec::new(PathSink { kind, path })
    }

    /// Parses `SCHEME:PATH`, refusing an empty path.
    pub fn parse(uri: &str, kind: &'static PathKind) -> Result<SinkSpec, BadSinkUri> {
        let scheme = kind.scheme;
        match uri.strip_prefix(scheme).and_then(|rest| rest.strip_prefix(':')) {
            Some(path) if !path.is_empty() => Ok(Self::spec(kind, path.into())),
            _ => Err(BadSinkUri(format!("`{scheme}:` needs a path, e.g. `{scheme}:/pfs/out`"))),
        }
    }
}

impl fmt::Display for PathSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.scheme, self.path.display())
    }
}

impl OpenSink for PathSink {
    fn open(&self, settings: &SinkSettings) -> std::io::Result<Box<dyn Sink>> {
        (self.kind.open)(self.path.clone(), settings)
    }

    fn reader(&self, _: &SinkSettings) -> Arc<dyn CommitReader> {
        match self.kind.read {
            Some(read) => read(self.path.clone()),
            None => Arc::new(Unreadable { sink: self.to_string() }),
        }
    }
}

/// The path Pachyderm 1.x spouts write to.
pub const PFS_OUT: &str = "/pfs/out";

/// Resolves `auto`: the spout pipe when it is one, else pachd inside a Pachyderm
/// 2.x worker, else a local directory.
fn resolve_auto() -> SinkSpec {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(PFS_OUT) {
        Ok(meta) if meta.file_type().is_fifo() => fifo::spec(PFS_OUT.into()),
        _ => match pfs::detect_worker(|name| std::env::var(name).ok()) {
            Some(target) => SinkSpec::new(target),
            None => dir::spec("./spout-out".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(uri: &str) -> String {
        uri.parse::<SinkSpec>().unwrap().to_string()
    }

    fn refused(uri: &str) -> String {
        uri.parse::<SinkSpec>().unwrap_err().0
    }

    #[test]
    fn parses_sink_uris() {
        assert_eq!(parsed("fifo:/pfs/out"), "fifo:/pfs/out");
        assert_eq!(parsed("dir:out"), "dir:out");
        assert_eq!(parsed("stdout:"), "stdout:");
        assert_eq!(parsed("stdout"), "stdout:");
        assert_eq!(parsed("auto"), "auto");
        assert_eq!(parsed("pfs://pachd:1650/out@master"), "pfs://pachd:1650/out@master");
        assert_eq!(parsed("s3://minio:9000/bucket/dir"), "s3://minio:9000/bucket/dir");
        assert_eq!(parsed("gs://bucket/dir"), "gs://bucket/dir");
        assert_eq!(parsed("wasb://container@account/dir"), "wasb://container@account/dir");
        assert!("stdout:".parse::<SinkSpec>().unwrap().resolve().writes_stdout());
        assert!(!"dir:x".parse::<SinkSpec>().unwrap().resolve().writes_stdout());
    }

    #[test]
    fn refuses_what_names_no_sink() {
        assert_eq!(refused("fifo:"), "`fifo:` needs a path, e.g. `fifo:/pfs/out`");
        assert_eq!(
            refused("kafka://x"),
            "unknown sink `kafka://x`: expected fifo:PATH, dir:PATH, stdout:, pfs://HOST:PORT/REPO@BRANCH, \
             s3://[ENDPOINT/]BUCKET/DIR, gs://BUCKET/DIR, wasb://CONTAINER@ACCOUNT/DIR or auto"
        );
        assert!(refused("pfs:/pachd/out").contains("does not start with pfs://"));
    }
}
