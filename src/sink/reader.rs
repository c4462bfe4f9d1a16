//! Reading commits back out of where a sink put them, for the HTTP API's
//! `GET /commits/...` routes and `wait=downstream`: a commit's files, one file's
//! bytes as a stream, and the state of the commits downstream of it.
//!
//! The HTTP layer holds a [`CommitReader`] the pipeline wiring hands it, so it never
//! names a sink. `pfs://` reads from pachd (and follows a commit's commit set into
//! the pipelines' output repos), `dir:` from its directories; the other sinks keep
//! nothing they could read back and answer every read with [`ReadError::Unreadable`].

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde::Serialize;

/// One file's bytes, in the pieces they arrive in; an error ends the stream.
pub type FileChunks = BoxStream<'static, Result<Bytes, ReadError>>;

/// A commit's files, as they are found (a Pachyderm repo may hold millions).
pub type FileList = BoxStream<'static, Result<FileEntry, ReadError>>;

/// A file of a commit: its path inside the commit and its size in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
}

/// Where one commit of a commit set has got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommitProgress {
    /// The repo, as pachctl shows it (`edges`, or `edges.meta` for a repo of another type).
    pub repo: String,
    pub commit: String,
    pub finished: bool,
    /// pachd's error, if it finished the commit with one.
    pub error: Option<String>,
}

/// A commit and the commits downstream of it, as far as they have got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downstream {
    pub commit: CommitProgress,
    pub downstream: Vec<CommitProgress>,
}

impl Downstream {
    /// Whether the commit and every commit downstream of it are finished.
    pub fn finished(&self) -> bool {
        self.commit.finished && self.downstream.iter().all(|c| c.finished)
    }
}

/// Why a read was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("commit {commit} not found in {place}")]
    CommitNotFound { commit: String, place: String },
    #[error("file {path} not found in commit {commit}")]
    FileNotFound { commit: String, path: String },
    #[error("`{path}` is not a path of a file inside a commit: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("`{0}` is not a commit id")]
    BadCommitId(String),
    #[error("the {sink} sink keeps nothing it could read back; only pfs:// and dir: sinks answer reads")]
    Unreadable { sink: String },
    #[error("the {sink} sink has no pipelines downstream to wait for; only a pfs:// sink has")]
    NoDownstream { sink: String },
    #[error("the {sink} sink holds one repo, so `{repo}@` names none of its commits")]
    NoOtherRepos { sink: String, repo: String },
    #[error("reading from {place} failed: {message}")]
    Failed { place: String, message: String },
}

/// Reads back what a sink committed. Each call is independent; `repo` of `None` is
/// the sink's own repo.
pub trait CommitReader: Send + Sync + fmt::Debug {
    /// Every file of the commit, by name; a refusal (not found) comes before any.
    fn list<'a>(&'a self, repo: Option<&'a str>, commit: &'a str) -> BoxFuture<'a, Result<FileList, ReadError>>;

    /// One file's bytes; a refusal (not found, bad path) comes before any byte.
    fn open<'a>(
        &'a self,
        repo: Option<&'a str>,
        commit: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, Result<FileChunks, ReadError>>;

    /// Whether [`CommitReader::downstream`] can work here, so that a request can be
    /// refused before its messages are taken.
    fn follows_downstream(&self) -> Result<(), ReadError>;

    /// Waits, at most `limit` if given, until the commit and every commit
    /// downstream of it are finished; how far they got.
    fn downstream<'a>(
        &'a self,
        commit: &'a str,
        limit: Option<Duration>,
    ) -> BoxFuture<'a, Result<Downstream, ReadError>>;

    /// The newest version of every file under the checkpoint directory
    /// (`encode::checkpoint::DIR`), by its name inside a commit: where the sources
    /// resume from.
    fn checkpoints(&self) -> BoxFuture<'_, Result<Vec<(String, Bytes)>, ReadError>>;
}

/// The reader of a sink that keeps nothing readable (`stdout:`, object stores; `fifo:`
/// but for its checkpoints, `fifo_marker`).
#[derive(Debug)]
pub struct Unreadable {
    pub sink: String,
}

impl Unreadable {
    fn refusal(&self) -> ReadError {
        ReadError::Unreadable { sink: self.sink.clone() }
    }
}

impl CommitReader for Unreadable {
    fn list<'a>(&'a self, _: Option<&'a str>, _: &'a str) -> BoxFuture<'a, Result<FileList, ReadError>> {
        Box::pin(std::future::ready(Err(self.refusal())))
    }

    fn open<'a>(&'a self, _: Option<&'a str>, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<FileChunks, ReadError>> {
        Box::pin(std::future::ready(Err(self.refusal())))
    }

    fn follows_downstream(&self) -> Result<(), ReadError> {
        Err(ReadError::NoDownstream { sink: self.sink.clone() })
    }

    fn downstream<'a>(&'a self, _: &'a str, _: Option<Duration>) -> BoxFuture<'a, Result<Downstream, ReadError>> {
        Box::pin(std::future::ready(Err(self.follows_downstream().unwrap_err())))
    }

    fn checkpoints(&self) -> BoxFuture<'_, Result<Vec<(String, Bytes)>, ReadError>> {
        Box::pin(std::future::ready(Err(self.refusal())))
    }
}

/// Checks a file path of a read: relative, and no empty, `.` or `..` component, so
/// that it stays inside the commit whatever the sink does with it.
pub fn check_path(path: &str) -> Result<(), ReadError> {
    let bad = |why| Err(ReadError::BadPath { path: path.to_owned(), why });
    if path.is_empty() {
        return bad("it is empty");
    }
    if path.starts_with('/') {
        return bad("it is absolute");
    }
    for component in path.split('/') {
        match component {
            "" => return bad("it has an empty component (`//` or a trailing `/`)"),
            "." | ".." => return bad("`.` and `..` are not allowed"),
            _ if component.contains('\0') => return bad("it holds a NUL byte"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_commit() {
        for good in ["a.txt", "users/42.json", "a/b/c", "..hidden", "x.."] {
            assert_eq!(check_path(good), Ok(()), "{good}");
        }
        let why = |path: &str| match check_path(path) {
            Err(ReadError::BadPath { why, .. }) => why,
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(why(""), "it is empty");
        assert_eq!(why("/etc/passwd"), "it is absolute");
        assert_eq!(why("../x"), "`.` and `..` are not allowed");
        assert_eq!(why("a/../../x"), "`.` and `..` are not allowed");
        assert_eq!(why("a/./b"), "`.` and `..` are not allowed");
        assert_eq!(why("a//b"), "it has an empty component (`//` or a trailing `/`)");
        assert_eq!(why("a/"), "it has an empty component (`//` or a trailing `/`)");
        assert_eq!(why("a\0b"), "it holds a NUL byte");
        assert_eq!(
            check_path("../x").unwrap_err().to_string(),
            "`../x` is not a path of a file inside a commit: `.` and `..` are not allowed"
        );
    }
}
