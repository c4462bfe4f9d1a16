//! Reading commits back from pachd for the HTTP API: a commit's files (WalkFile),
//! one file's bytes (GetFile, passed on piece by piece as the HTTP client takes
//! them), and `wait=downstream`, which follows the commit's commit set.
//!
//! In Pachyderm 2.x every commit a run makes shares the input commit's id: the
//! commit set (`pachctl flush commit` of 1.x). `InspectCommitSet` without `wait`
//! lists them at once; with `wait` it streams each one once pachd has finished it,
//! those finished already first. The first call gives the set's members, the second
//! moves each to finished as it comes, so a wait cut short by its limit still tells
//! which finished.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use tonic::Status;

use super::client::{is_not_found, BadAddress, Pachd};
use super::proto::pfs_v2::{CommitInfo, FileType, Repo};
use super::target::{Target, DEFAULT_PROJECT};
use crate::encode::checkpoint;
use crate::sink::reader::{
    check_path, CommitProgress, CommitReader, Downstream, FileChunks, FileEntry, FileList, ReadError,
};

/// The most of a checkpoint file read back: far more than any window of ids.
const CHECKPOINT_LIMIT: usize = 64 << 20;

#[derive(Debug)]
pub struct PfsReader {
    pachd: Result<PachdHandle, BadAddress>,
    project: String,
    repo: String,
    address: String,
}

/// The client, kept out of `Debug`.
struct PachdHandle(Pachd);

impl std::fmt::Debug for PachdHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pachd")
    }
}

impl PfsReader {
    /// A reader over a channel of its own; must run inside a tokio runtime.
    pub fn new(target: &Target) -> Self {
        Self {
            pachd: Pachd::new(target).map(PachdHandle),
            project: target.project.clone(),
            repo: target.repo.clone(),
            address: target.address.clone(),
        }
    }

    /// A client with the token as its source holds it now.
    fn pachd(&self) -> Result<Pachd, ReadError> {
        let mut pachd = self.pachd.as_ref().map_err(|bad| self.failed(bad.to_string()))?.0.clone();
        pachd.reload_token().map_err(|bad| self.failed(bad.to_string()))?;
        Ok(pachd)
    }

    fn place(&self, repo: Option<&str>) -> String {
        format!("repo {}/{} on pachd {}", self.project, repo.unwrap_or(&self.repo), self.address)
    }

    fn failed_place(&self) -> String {
        format!("pachd {}", self.address)
    }

    fn failed(&self, message: String) -> ReadError {
        ReadError::Failed { place: self.failed_place(), message }
    }

    /// A failed call about `commit`: not found, or failed.
    fn refusal(&self, status: Status, repo: Option<&str>, commit: &str) -> ReadError {
        match is_not_found(&status) {
            true => ReadError::CommitNotFound { commit: commit.to_owned(), place: self.place(repo) },
            false => self.failed(status.message().to_owned()),
        }
    }

    /// How pachctl names a repo: `name`, `name.meta` for one of another type, with
    /// its project first if it is not this sink's.
    fn repo_name(&self, repo: Option<&Repo>) -> String {
        let Some(repo) = repo else { return String::new() };
        let project = repo.project.as_ref().map_or(DEFAULT_PROJECT, |p| p.name.as_str());
        let name = match repo.r#type.as_str() {
            "" | "user" => repo.name.clone(),
            kind => format!("{}.{kind}", repo.name),
        };
        match project == self.project {
            true => name,
            false => format!("{project}/{name}"),
        }
    }

    fn progress(&self, info: &CommitInfo) -> CommitProgress {
        let commit = info.commit.as_ref();
        CommitProgress {
            repo: self.repo_name(commit.and_then(|c| c.repo.as_ref().or(c.branch.as_ref()?.repo.as_ref()))),
            commit: commit.map(|c| c.id.clone()).unwrap_or_default(),
            finished: info.finished.is_some(),
            error: (!info.error.is_empty()).then(|| info.error.clone()),
        }
    }

    async fn read_downstream(&self, commit: &str, limit: Option<Duration>) -> Result<Downstream, ReadError> {
        let deadline = limit.map(|limit| tokio::time::Instant::now() + limit);
        let mut pachd = self.pachd()?;
        let refusal = |status| self.refusal(status, None, commit);
        let mut members = pachd.commit_set(commit, false).await.map_err(refusal)?;
        let mut own = None;
        let mut downstream = Vec::new();
        while let Some(info) = members.message().await.map_err(refusal)? {
            let progress = self.progress(&info);
            match progress.repo == self.repo && own.is_none() {
                true => own = Some(progress),
                false => downstream.push(progress),
            }
        }
        let Some(own) = own else {
            return Err(ReadError::CommitNotFound { commit: commit.to_owned(), place: self.place(None) });
        };
        let mut report = Downstream { commit: own, downstream };
        if report.finished() {
            return Ok(report);
        }
        let wait = async {
            let mut finished = pachd.commit_set(commit, true).await?;
            while let Some(info) = finished.message().await? {
                let progress = self.progress(&info);
                let mut all = std::iter::once(&mut report.commit).chain(report.downstream.iter_mut());
                if let Some(entry) = all.find(|e| e.repo == progress.repo && e.commit == progress.commit) {
                    *entry = progress;
                }
            }
            Ok::<(), Status>(())
        };
        let waited = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, wait).await.unwrap_or(Ok(())),
            None => wait.await,
        };
        waited.map_err(refusal)?;
        Ok(report)
    }
}

impl CommitReader for PfsReader {
    fn list<'a>(&'a self, repo: Option<&'a str>, commit: &'a str) -> BoxFuture<'a, Result<FileList, ReadError>> {
        async move {
            let mut pachd = self.pachd()?;
            let refusal = |status| self.refusal(status, repo, commit);
            let mut walk = pachd.walk_files(&pachd.commit_in(repo, commit), "/").await.map_err(refusal)?;
            // As with GetFile, a missing commit is refused with the first answer.
            let first = walk.message().await.map_err(refusal)?;
            let place = self.failed_place();
            let rest = walk.map(move |info| {
                info.map_err(|status| ReadError::Failed { place: place.clone(), message: status.message().to_owned() })
            });
            let files = futures_util::stream::iter(first.map(Ok)).chain(rest).try_filter_map(|info| async move {
                if info.file_type != FileType::File as i32 {
                    return Ok(None);
                }
                let name = info.file.map(|f| f.path.trim_start_matches('/').to_owned()).unwrap_or_default();
                Ok(Some(FileEntry { name, size: info.size_bytes.max(0) as u64 }))
            });
            Ok(files.boxed())
        }
        .boxed()
    }

    fn open<'a>(
        &'a self,
        repo: Option<&'a str>,
        commit: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, Result<FileChunks, ReadError>> {
        async move {
            check_path(path)?;
            let mut pachd = self.pachd()?;
            let at = pachd.commit_in(repo, commit);
            // pachd refuses a missing file or commit in the answer's trailers, so the
            // first piece is awaited before the answer's status is chosen.
            let first = match pachd.get_file(&at, path).await {
                Ok(mut stream) => stream.message().await.map(|first| (first, stream)),
                Err(status) => Err(status),
            };
            let (first, rest) = match first {
                Ok(read) => read,
                Err(status) if is_not_found(&status) => {
                    return Err(match pachd.inspect_commit(&at).await {
                        Ok(_) => ReadError::FileNotFound { commit: commit.to_owned(), path: path.to_owned() },
                        Err(status) => self.refusal(status, repo, commit),
                    })
                }
                Err(status) => return Err(self.failed(status.message().to_owned())),
            };
            let place = self.failed_place();
            let rest = rest.map(move |piece| match piece {
                Ok(piece) => Ok(piece.value),
                Err(status) => Err(ReadError::Failed { place: place.clone(), message: status.message().to_owned() }),
            });
            let first = futures_util::stream::iter(first.map(|piece| Ok(piece.value)));
            Ok(first.chain(rest).boxed())
        }
        .boxed()
    }

    fn follows_downstream(&self) -> Result<(), ReadError> {
        Ok(())
    }

    /// The files under the checkpoint directory at the head of the sink's branch:
    /// files stay in a Pachyderm 2.x branch until replaced, so the head holds the
    /// newest checkpoint of every replica.
    fn checkpoints(&self) -> BoxFuture<'_, Result<Vec<(String, Bytes)>, ReadError>> {
        async move {
            let mut pachd = self.pachd()?;
            let head = pachd.branch_target();
            let failed = |status: Status| self.failed(status.message().to_owned());
            let mut walk = match pachd.walk_files(&head, &format!("/{}", checkpoint::DIR)).await {
                Ok(walk) => walk,
                Err(status) if is_not_found(&status) => return Ok(Vec::new()),
                Err(status) => return Err(failed(status)),
            };
            let mut names = Vec::new();
            loop {
                match walk.message().await {
                    Ok(Some(info)) if info.file_type == FileType::File as i32 => {
                        names.extend(info.file.map(|f| f.path.trim_start_matches('/').to_owned()))
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    // No head commit yet, or no checkpoint written on it.
                    Err(status) if is_not_found(&status) => return Ok(Vec::new()),
                    Err(status) => return Err(failed(status)),
                }
            }
            let mut files = Vec::new();
            for name in names {
                if let Some(bytes) = pachd.get_small_file(&head, &name, CHECKPOINT_LIMIT).await.map_err(failed)? {
                    files.push((name, bytes));
                }
            }
            Ok(files)
        }
        .boxed()
    }

    fn downstream<'a>(
        &'a self,
        commit: &'a str,
        limit: Option<Duration>,
    ) -> BoxFuture<'a, Result<Downstream, ReadError>> {
        self.read_downstream(commit, limit).boxed()
    }
}
