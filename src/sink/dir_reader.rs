//! Reading the `dir:` sink's commits back: `ROOT/<commit-id>/` is a commit, its
//! files are the files under it. Only committed directories are read: a commit id
//! starting with `.` (a `.tmp-*` directory being written) is refused, as is a path
//! that would leave the commit. Files stream in pieces, never read whole.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use tokio_util::io::ReaderStream;

use crate::encode::checkpoint;

use super::reader::{check_path, CommitReader, Downstream, FileChunks, FileEntry, FileList, ReadError};

/// How much of a file is read at a time.
const PIECE: usize = 64 * 1024;

#[derive(Debug)]
pub struct DirReader {
    root: PathBuf,
}

impl DirReader {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn sink(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    /// The commit's directory, if the id can name one and no other repo is asked for.
    fn commit_dir(&self, repo: Option<&str>, commit: &str) -> Result<PathBuf, ReadError> {
        if let Some(repo) = repo {
            return Err(ReadError::NoOtherRepos { sink: self.sink(), repo: repo.to_owned() });
        }
        if commit.is_empty() || commit.starts_with('.') || commit.contains(['/', '\0']) {
            return Err(ReadError::BadCommitId(commit.to_owned()));
        }
        Ok(self.root.join(commit))
    }

    fn failed(&self, error: &io::Error) -> ReadError {
        ReadError::Failed { place: self.sink(), message: error.to_string() }
    }

    fn not_found(&self, commit: &str) -> ReadError {
        ReadError::CommitNotFound { commit: commit.to_owned(), place: self.sink() }
    }
}

impl CommitReader for DirReader {
    /// A commit of the `dir:` sink is one batch, so its files are listed at once.
    fn list<'a>(&'a self, repo: Option<&'a str>, commit: &'a str) -> BoxFuture<'a, Result<FileList, ReadError>> {
        async move {
            let dir = self.commit_dir(repo, commit)?;
            match blocking(move || walk(&dir)).await {
                Ok(files) => Ok(futures_util::stream::iter(files.into_iter().map(Ok)).boxed()),
                Err(error) if is_absent(&error) => Err(self.not_found(commit)),
                Err(error) => Err(self.failed(&error)),
            }
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
            let dir = self.commit_dir(repo, commit)?;
            check_path(path)?;
            let file_not_found = || ReadError::FileNotFound { commit: commit.to_owned(), path: path.to_owned() };
            let file = match tokio::fs::File::open(dir.join(path)).await {
                Ok(file) => file,
                Err(error) if is_absent(&error) => {
                    return Err(match tokio::fs::metadata(&dir).await {
                        Ok(_) => file_not_found(),
                        Err(_) => self.not_found(commit),
                    })
                }
                Err(error) => return Err(self.failed(&error)),
            };
            match file.metadata().await {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => return Err(file_not_found()),
                Err(error) => return Err(self.failed(&error)),
            }
            let place = self.sink();
            let chunks = ReaderStream::with_capacity(file, PIECE)
                .map_err(move |error| ReadError::Failed { place: place.clone(), message: error.to_string() });
            Ok(chunks.boxed())
        }
        .boxed()
    }

    fn follows_downstream(&self) -> Result<(), ReadError> {
        Err(ReadError::NoDownstream { sink: self.sink() })
    }

    fn downstream<'a>(&'a self, _: &'a str, _: Option<Duration>) -> BoxFuture<'a, Result<Downstream, ReadError>> {
        std::future::ready(Err(ReadError::NoDownstream { sink: self.sink() })).boxed()
    }

    /// A `dir:` commit holds its own batch's files only, so each checkpoint file is
    /// taken from the newest commit that has it.
    fn checkpoints(&self) -> BoxFuture<'_, Result<Vec<(String, Bytes)>, ReadError>> {
        let root = self.root.clone();
        async move { blocking(move || newest_checkpoints(&root)).await.map_err(|error| self.failed(&error)) }.boxed()
    }
}

/// Each file under the checkpoint directory of the commits in `root`, from the
/// newest commit that holds it (commit ids sort as text in commit order).
fn newest_checkpoints(root: &Path) -> io::Result<Vec<(String, Bytes)>> {
    let mut commits = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            commits.push(name);
        }
    }
    commits.sort_unstable_by(|a, b| b.cmp(a));
    let mut newest: std::collections::BTreeMap<String, Bytes> = Default::default();
    for commit in commits {
        for (name, bytes) in checkpoint_files(&root.join(&commit).join(checkpoint::DIR))? {
            newest.entry(name).or_insert(bytes);
        }
    }
    Ok(newest.into_iter().collect())
}

/// The files in `dir`, a commit's (or a 1.x marker's) checkpoint directory, named as
/// inside a commit and sorted; none if there is no such directory.
pub(super) fn checkpoint_files(dir: &Path) -> io::Result<Vec<(String, Bytes)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if is_absent(&error) => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let name = format!("{}/{}", checkpoint::DIR, entry.file_name().to_string_lossy());
            files.push((name, Bytes::from(std::fs::read(entry.path())?)));
        }
    }
    files.sort();
    Ok(files)
}

/// Runs file-system work on the runtime's blocking threads; a panic there is an error.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|panic| Err(io::Error::other(panic.to_string())))
}

/// A path through a file (`a.txt/b`) fails with ENOTDIR, a name longer than the
/// file system allows with ENAMETOOLONG: absent all the same.
fn is_absent(error: &io::Error) -> bool {
    use io::ErrorKind::{InvalidFilename, NotADirectory, NotFound};
    matches!(error.kind(), NotFound | NotADirectory | InvalidFilename)
}

/// The files under `dir`, by their paths relative to it, sorted.
fn walk(dir: &Path) -> io::Result<Vec<FileEntry>> {
    let mut files = Vec::new();
    let mut pending = vec![(dir.to_owned(), String::new())];
    while let Some((at, prefix)) = pending.pop() {
        for entry in std::fs::read_dir(&at)? {
            let entry = entry?;
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push((entry.path(), format!("{name}/")));
            } else if kind.is_file() {
                files.push(FileEntry { name, size: entry.metadata()?.len() });
            }
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader() -> (tempfile::TempDir, DirReader) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("0001/users")).unwrap();
        std::fs::write(root.path().join("0001/a.txt"), b"hello").unwrap();
        std::fs::write(root.path().join("0001/users/42.json"), b"{}").unwrap();
        std::fs::create_dir_all(root.path().join(".tmp-0002")).unwrap();
        let reader = DirReader::new(root.path().to_owned());
        (root, reader)
    }

    async fn read(reader: &DirReader, commit: &str, path: &str) -> Result<Vec<u8>, ReadError> {
        let chunks: Vec<_> = reader.open(None, commit, path).await?.try_collect().await?;
        Ok(chunks.concat())
    }

    #[tokio::test]
    async fn lists_and_reads_a_commit() {
        let (_root, reader) = reader();
        let files: Vec<_> = reader.list(None, "0001").await.unwrap().try_collect().await.unwrap();
        let entry = |name: &str, size| FileEntry { name: name.into(), size };
        assert_eq!(files, [entry("a.txt", 5), entry("users/42.json", 2)]);
        assert_eq!(read(&reader, "0001", "users/42.json").await.unwrap(), b"{}");
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_committed_file() {
        let (_root, reader) = reader();
        assert!(matches!(reader.list(None, "0003").await.err(), Some(ReadError::CommitNotFound { .. })));
        assert_eq!(reader.list(None, ".tmp-0002").await.err(), Some(ReadError::BadCommitId(".tmp-0002".into())));
        assert!(matches!(read(&reader, "0001", "b.txt").await, Err(ReadError::FileNotFound { .. })));
        assert!(matches!(read(&reader, "0001", "users").await, Err(ReadError::FileNotFound { .. })));
        assert!(matches!(read(&reader, "0001", "a.txt/x").await, Err(ReadError::FileNotFound { .. })));
        assert!(matches!(read(&reader, "0003", "a.txt").await, Err(ReadError::CommitNotFound { .. })));
        assert!(matches!(read(&reader, "0001", "../0001/a.txt").await, Err(ReadError::BadPath { .. })));
        assert!(matches!(reader.list(Some("edges"), "0001").await.err(), Some(ReadError::NoOtherRepos { .. })));
        assert!(matches!(reader.downstream("0001", None).await, Err(ReadError::NoDownstream { .. })));
    }

    #[tokio::test]
    async fn checkpoints_come_from_the_newest_commit_holding_each() {
        let (root, reader) = reader();
        assert_eq!(reader.checkpoints().await.unwrap(), []);
        let put = |commit: &str, file: &str, text: &'static str| {
            let dir = root.path().join(commit).join(checkpoint::DIR);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file), text).unwrap();
        };
        put("0002", "k.a.json", "old a");
        put("0002", "k.b.json", "only b");
        put("0003", "k.a.json", "new a");
        put(".tmp-0004", "k.a.json", "not committed");
        let name = |file: &str| format!("{}/{file}", checkpoint::DIR);
        assert_eq!(
            reader.checkpoints().await.unwrap(),
            [(name("k.a.json"), Bytes::from("new a")), (name("k.b.json"), Bytes::from("only b"))]
        );
    }
}
