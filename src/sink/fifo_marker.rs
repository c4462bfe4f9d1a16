//! What a `fifo:` sink can read back: the sources' checkpoints, from where
//! Pachyderm 1.x gives a spout its marker back.
//!
//! A 1.x spout whose pipeline sets `"spout": {"marker": ".spout"}` sends every file of
//! an archive under `.spout` to the pipeline's marker branch (overwriting the one
//! before), so the checkpoint files a batch carries land there in the batch's own
//! commit. When the worker starts again it downloads the marker to `/pfs/.spout`,
//! beside the pipe at `/pfs/out`. So the checkpoints are read from the directory
//! `.spout/checkpoints` beside the pipe; none there (a first start, or no marker
//! set) means no checkpoint. Commits themselves are not readable: the pipe keeps
//! nothing, and every other read is refused as for any sink that keeps nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::dir_reader::{blocking, checkpoint_files};
use super::reader::{CommitReader, Downstream, FileChunks, FileList, ReadError, Unreadable};
use crate::encode::checkpoint;

#[derive(Debug)]
pub struct MarkerReader {
    /// The directory the pipe is in (`/pfs`).
    beside: PathBuf,
    refuse: Unreadable,
}

/// The reader of the `fifo:` sink whose pipe is `pipe`.
pub fn reader(pipe: PathBuf) -> Arc<dyn CommitReader> {
    let sink = format!("fifo:{}", pipe.display());
    let beside = pipe.parent().map_or_else(|| PathBuf::from("."), Path::to_owned);
    Arc::new(MarkerReader { beside, refuse: Unreadable { sink } })
}

impl CommitReader for MarkerReader {
    fn list<'a>(&'a self, repo: Option<&'a str>, commit: &'a str) -> BoxFuture<'a, Result<FileList, ReadError>> {
        self.refuse.list(repo, commit)
    }

    fn open<'a>(
        &'a self,
        repo: Option<&'a str>,
        commit: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, Result<FileChunks, ReadError>> {
        self.refuse.open(repo, commit, path)
    }

    fn follows_downstream(&self) -> Result<(), ReadError> {
        self.refuse.follows_downstream()
    }

    fn downstream<'a>(
        &'a self,
        commit: &'a str,
        limit: Option<Duration>,
    ) -> BoxFuture<'a, Result<Downstream, ReadError>> {
        self.refuse.downstream(commit, limit)
    }

    fn checkpoints(&self) -> BoxFuture<'_, Result<Vec<(String, Bytes)>, ReadError>> {
        let dir = self.beside.join(checkpoint::DIR);
        async move {
            let read = blocking({
                let dir = dir.clone();
                move || checkpoint_files(&dir)
            });
            read.await
                .map_err(|error| ReadError::Failed { place: dir.display().to_string(), message: error.to_string() })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checkpoints_come_from_the_marker_beside_the_pipe_and_commits_are_not_readable() {
        let pfs = tempfile::tempdir().unwrap();
        let reader = reader(pfs.path().join("out"));
        assert_eq!(reader.checkpoints().await.unwrap(), [], "no marker yet: no checkpoint");
        let dir = pfs.path().join(".spout/checkpoints");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("kafka.t.r1.json"), "{}").unwrap();
        std::fs::create_dir(dir.join("not-a-file")).unwrap();
        let found = reader.checkpoints().await.unwrap();
        assert_eq!(found, [(".spout/checkpoints/kafka.t.r1.json".to_owned(), Bytes::from_static(b"{}"))]);
        assert!(matches!(reader.list(None, "x").await.err(), Some(ReadError::Unreadable { .. })));
    }
}
