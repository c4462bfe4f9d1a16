//! `GET /commits/...`: reading back what the sink committed, through the sink's
//! [`CommitReader`](crate::sink::reader::CommitReader): `/commits/{id}` lists a commit's files (or, with
//! `wait=downstream`, waits for the pipelines downstream of it),
//! `/commits/{id}/files/{path}` streams one file, and `{repo}@{id}` in place of
//! `{id}` reads a commit of another repo, as `pachctl get file repo@commit:path`.
//! The `wait=downstream` answer of `POST /messages` is built here too.

use std::future::ready;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use hyper::StatusCode;
use percent_encoding::percent_decode_str;
use serde::Serialize;
use serde_json::Value;

use super::query::{RequestOptions, Wait};
use super::reply::{self, Reply};
use super::Api;
use crate::sink::reader::{CommitProgress, Downstream, FileList, ReadError};

/// What a `/commits/` path names.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    repo: Option<String>,
    commit: String,
    /// `None` for the commit itself, else the file under `/files/`.
    file: Option<String>,
}

/// A `/commits/` path that names nothing.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum BadTarget {
    #[error("expected /commits/{{id}}, /commits/{{id}}/files/{{path}} or /commits/{{repo}}@{{id}}/files/{{path}}")]
    Shape,
    #[error("the path is not valid UTF-8 once percent-decoded")]
    NotUtf8,
}

impl Target {
    /// Parses the path after `/commits/`, percent-decoding each part once.
    fn parse(rest: &str) -> Result<Self, BadTarget> {
        let decode =
            |part: &str| percent_decode_str(part).decode_utf8().map(|s| s.into_owned()).map_err(|_| BadTarget::NotUtf8);
        let (reference, file) = match rest.split_once('/') {
            None => (rest, None),
            Some((reference, tail)) => match tail.strip_prefix("files/") {
                Some(path) => (reference, Some(decode(path)?)),
                None => return Err(BadTarget::Shape),
            },
        };
        let reference = decode(reference)?;
        let (repo, commit) = match reference.split_once('@') {
            Some((repo, commit)) => (Some(repo.to_owned()), commit.to_owned()),
            None => (None, reference),
        };
        if commit.is_empty() || repo.as_deref() == Some("") {
            return Err(BadTarget::Shape);
        }
        Ok(Self { repo, commit, file })
    }
}

/// The answer to `GET /commits/{id}?wait=downstream`.
#[derive(Serialize)]
struct DownstreamAnswer<'a> {
    commit: &'a str,
    repo: &'a str,
    finished: bool,
    /// pachd's error, if it finished the commit itself with one.
    commit_error: Option<&'a str>,
    downstream: &'a [CommitProgress],
}

pub async fn get(api: &Api, path: &str, query: Option<&str>) -> Reply {
    let target = match Target::parse(path.trim_start_matches("/commits/")) {
        Ok(target) => target,
        Err(bad) => return reply::error(StatusCode::NOT_FOUND, "not_found", format!("no route {path}: {bad}")),
    };
    let options = match RequestOptions::parse(query, &Default::default()) {
        Ok(options) => options,
        Err(bad) => return reply::error(StatusCode::BAD_REQUEST, "bad_request", bad.to_string()),
    };
    let reader = &api.reader;
    let Target { repo, commit, file } = target;
    let repo = repo.as_deref();
    match (file, options.wait) {
        (Some(file), Wait::None) => match reader.open(repo, &commit, &file).await {
            Ok(chunks) => reply::stream("application/octet-stream", chunks),
            Err(error) => refusal(&error),
        },
        (None, Wait::None) => match reader.list(repo, &commit).await {
            Ok(files) => listing(&commit, files),
            Err(error) => refusal(&error),
        },
        (None, Wait::Downstream) if repo.is_none() => match reader.downstream(&commit, options.timeout).await {
            Ok(report) => {
                let answer = DownstreamAnswer {
                    commit: &commit,
                    repo: &report.commit.repo,
                    finished: report.commit.finished,
                    commit_error: report.commit.error.as_deref(),
                    downstream: &report.downstream,
                };
                waited(&report, answer, options.timeout)
            }
            Err(error) => refusal(&error),
        },
        _ => reply::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "wait=downstream applies to /commits/{id} only, and wait=commit to none of /commits/",
        ),
    }
}

/// The `wait=downstream` answer of `POST /messages` once its commit is in:
/// `committed` (the `wait=commit` answer) with `downstream` added.
pub async fn downstream_of_post(
    api: &Api,
    committed: &impl Serialize,
    commit: &str,
    options: &RequestOptions,
) -> Reply {
    let mut answer = serde_json::to_value(committed).expect("answers serialize");
    match api.reader.downstream(commit, options.timeout).await {
        Ok(report) => {
            answer["downstream"] = serde_json::to_value(&report.downstream).expect("answers serialize");
            waited(&report, answer, options.timeout)
        }
        Err(error) => {
            // Committed all the same: the answer says so beside why it cannot tell more.
            let (status, kind) = status_of(&error);
            let status = if status.is_server_error() { status } else { StatusCode::BAD_GATEWAY };
            with_error(status, answer, kind, error.to_string())
        }
    }
}

/// 200 with `{"commit": ID, "files": [...]}`, sent as the files are found, so that
/// the answer for a repo of millions of files is never held whole.
fn listing(commit: &str, files: FileList) -> Reply {
    let head = serde_json::to_string(commit).expect("a string serializes");
    let head = Bytes::from(format!("{{\"commit\":{head},\"files\":["));
    let entries = files.enumerate().map(|(i, entry)| {
        let mut json = if i == 0 { Vec::new() } else { vec![b','] };
        serde_json::to_writer(&mut json, &entry?).expect("a file entry serializes");
        Ok::<_, ReadError>(Bytes::from(json))
    });
    let tail = Bytes::from_static(b"]}");
    let body = stream::once(ready(Ok(head))).chain(entries).chain(stream::once(ready(Ok(tail))));
    reply::stream("application/json", body)
}

/// 200 if everything finished, else 504 with how far it got.
fn waited(report: &Downstream, answer: impl Serialize, limit: Option<Duration>) -> Reply {
    if report.finished() {
        return reply::json(StatusCode::OK, &answer);
    }
    let message = match limit {
        Some(limit) => format!(
            "not every commit downstream was finished within timeout={}; see `downstream`",
            humantime::format_duration(limit)
        ),
        None => "pachd ended the wait before every commit downstream was finished; see `downstream`".to_owned(),
    };
    let answer = serde_json::to_value(answer).expect("answers serialize");
    with_error(StatusCode::GATEWAY_TIMEOUT, answer, "timeout", message)
}

fn with_error(status: StatusCode, mut answer: Value, kind: &str, message: String) -> Reply {
    answer["error"] = kind.into();
    answer["message"] = message.into();
    reply::json(status, &answer)
}

/// The status and error kind of a read refused or failed.
fn status_of(error: &ReadError) -> (StatusCode, &'static str) {
    match error {
        ReadError::CommitNotFound { .. }
        | ReadError::FileNotFound { .. }
        | ReadError::Unreadable { .. }
        | ReadError::NoOtherRepos { .. } => (StatusCode::NOT_FOUND, "not_found"),
        ReadError::BadPath { .. } | ReadError::BadCommitId(_) | ReadError::NoDownstream { .. } => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        ReadError::Failed { .. } => (StatusCode::BAD_GATEWAY, "read_failed"),
    }
}

fn refusal(error: &ReadError) -> Reply {
    let (status, kind) = status_of(error);
    reply::error(status, kind, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(rest: &str) -> Result<Target, BadTarget> {
        Target::parse(rest)
    }

    fn target(repo: Option<&str>, commit: &str, file: Option<&str>) -> Target {
        Target { repo: repo.map(Into::into), commit: commit.into(), file: file.map(Into::into) }
    }

    #[test]
    fn names_commits_files_and_other_repos() {
        assert_eq!(parsed("abc"), Ok(target(None, "abc", None)));
        assert_eq!(parsed("abc/files/users/42.json"), Ok(target(None, "abc", Some("users/42.json"))));
        assert_eq!(parsed("edges@abc/files/a%20b.txt"), Ok(target(Some("edges"), "abc", Some("a b.txt"))));
        assert_eq!(parsed("edges%40abc"), Ok(target(Some("edges"), "abc", None)));
        // Decoded once: `%2F` is a `/` of the path, `%252F` a literal `%2F`.
        assert_eq!(parsed("abc/files/a%2Fb"), Ok(target(None, "abc", Some("a/b"))));
        assert_eq!(parsed("abc/files/%2E%2E/x"), Ok(target(None, "abc", Some("../x"))));
        assert_eq!(parsed("abc/files/"), Ok(target(None, "abc", Some(""))));
        assert_eq!(parsed(""), Err(BadTarget::Shape));
        assert_eq!(parsed("abc/other"), Err(BadTarget::Shape));
        assert_eq!(parsed("@abc"), Err(BadTarget::Shape));
        assert_eq!(parsed("edges@"), Err(BadTarget::Shape));
        assert_eq!(parsed("abc/files/%FF"), Err(BadTarget::NotUtf8));
    }
}
