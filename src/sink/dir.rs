//! The `dir:` sink: each commit becomes one directory `ROOT/<commit-id>/` holding the
//! batch's files; a `/` in a name makes subdirectories.
//!
//! Atomic: a commit is written into `ROOT/.tmp-<id>/`, every file in it fsynced, then
//! every directory (a commit of many files syncs its file system once instead), then
//! renamed to `ROOT/<id>`, and `ROOT` fsynced. A reader sees a
//! commit whole or not at all, and once it has appeared a crash does not take it back.
//! Readers must skip names starting with `.`: a `.tmp-*` directory is a commit being
//! written, or one a crash interrupted (removed when the sink next opens).
//!
//! A commit's id is its batch's first sequence number, 20 digits zero-padded, so ids
//! sort as text in commit order. Sequence numbers start from the clock and past the
//! largest id already in `ROOT` ([`Sink::seq_floor`]), so a fresh batch never finds its
//! id taken: for a batch replayed from the disk spool, an id already in place is that
//! very batch, committed by a run that crashed before it could record so, and is not
//! written twice. Should any other batch find its id taken (a spool whose seal records
//! were lost, so that batches were formed afresh), it takes the next free id instead:
//! committed again, never lost. One sidecar per directory: two would number batches
//! independently.
//!
//! Within one commit, files of the same name are appended in arrival order; with
//! `--overwrite` the last one wins. Failures of the file system (full, read-only,
//! permissions) are retried with backoff until they pass or shutdown gives up, the
//! half-written temp directory removed each time. A batch that can never be laid out
//! as a tree (a name that is both a file and a directory) fails at once.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rustix::io::Errno;

use super::backoff::Backoff;
use super::commit_id::{self, CommitIds};
use super::dir_reader::DirReader;
use super::reader::CommitReader;
use super::spec::{BadSinkUri, PathKind, PathSink, Scheme, SinkSettings, SinkSpec};
use super::vectored::{self, Cursor};
use super::{Commit, Sink, SinkContext, SinkState};
use crate::batch::SealReason;
use crate::encode::{self, CommitFile};
use crate::message::{file_name, Payload};
use crate::metrics::METRICS;

pub const SCHEME: Scheme = Scheme { prefix: "dir:", form: "dir:PATH", parse };

const KIND: PathKind = PathKind { scheme: "dir", open, read: Some(reader) };

fn parse(uri: &str) -> Result<SinkSpec, BadSinkUri> {
    PathSink::parse(uri, &KIND)
}

/// `dir:PATH`.
pub fn spec(path: PathBuf) -> SinkSpec {
    PathSink::spec(&KIND, path)
}

fn open(path: PathBuf, _: &SinkSettings) -> io::Result<Box<dyn Sink>> {
    Ok(Box::new(DirSink::open(path)?))
}

fn reader(path: PathBuf) -> Arc<dyn CommitReader> {
    Arc::new(DirReader::new(path))
}

/// Directories in `ROOT` with this prefix are commits not yet renamed into place.
pub const TEMP_PREFIX: &str = ".tmp-";
/// Commits of up to this many files fsync each file and directory. Larger ones
/// make everything durable with one `syncfs`: on a virtual disk each fsync costs a
/// cache flush of milliseconds (1000 files: ~3 s fsyncing each, ~0.1-1 s one
/// `syncfs`), at the price of also flushing whatever else is dirty on that file
/// system. `--layout batch` (one file per commit) avoids both.
const FSYNC_EACH_UP_TO: usize = 32;

pub struct DirSink {
    root: PathBuf,
    /// The largest commit id in `ROOT` when the sink opened.
    floor: u64,
    backoff: Backoff,
}

impl DirSink {
    /// Opens (creating) `root`, removes temp directories a crash left, and notes the
    /// largest id of the commits already there.
    pub fn open(root: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&root)?;
        let mut floor = 0;
        let mut removed_any = false;
        for entry in fs::read_dir(&root)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TEMP_PREFIX) {
                tracing::info!("removing {}, a commit a previous run did not finish", entry.path().display());
                if entry.file_type()?.is_dir() {
                    fs::remove_dir_all(entry.path())?;
                } else {
                    fs::remove_file(entry.path())?;
                }
                removed_any = true;
            } else if let Some(id) = CommitIds::parse(name) {
                floor = floor.max(id);
            }
        }
        if removed_any {
            sync_dir(&root).map_err(|f| f.error)?;
        }
        Ok(Self { root, floor, backoff: Backoff::default() })
    }

    /// One attempt at `tree` as commit `id`. `placed` remembers a commit already in
    /// place, so a retry after a failed fsync of `ROOT` does not write it a second time.
    fn attempt(
        &mut self,
        id: &mut String,
        tree: &Tree<'_>,
        placed: &mut bool,
        replayed: bool,
    ) -> Result<(), FsStepError> {
        if !*placed {
            let mut target = self.root.join(&*id);
            if target.exists() && !replayed {
                let taken = std::mem::replace(id, self.next_free_id()?);
                tracing::warn!(
                    "commit id {taken} is taken by a batch this one was not rebuilt from; committing as {id}"
                );
                target = self.root.join(&*id);
            }
            if target.exists() {
                tracing::info!("commit {id} is in place already: a previous run committed this batch");
            } else {
                let temp = self.root.join(format!("{TEMP_PREFIX}{}", id));
                let written =
                    tree.write(&temp).and_then(|()| fs::rename(&temp, &target).doing("renaming into place", &target));
                if let Err(failure) = written {
                    if let Err(e) = fs::remove_dir_all(&temp) {
                        if e.kind() != io::ErrorKind::NotFound {
                            tracing::warn!("cannot remove {}: {e}", temp.display());
                        }
                    }
                    return Err(failure);
                }
            }
            *placed = true;
        }
        sync_dir(&self.root)
    }

    /// The id after the largest in `ROOT`.
    fn next_free_id(&self) -> Result<String, FsStepError> {
        let entries = fs::read_dir(&self.root).doing("listing", &self.root)?;
        let largest =
            entries.filter_map(|e| e.ok()?.file_name().to_str().and_then(CommitIds::parse)).max().unwrap_or(self.floor);
        Ok(commit_id::id_of(largest + 1))
    }
}

impl Sink for DirSink {
    fn describe(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    fn seq_floor(&self) -> u64 {
        self.floor
    }

    fn submit(&mut self, commit: Commit, ctx: &SinkContext) {
        let Commit { files, ack } = commit;
        let tree = match Tree::plan(&files, ctx.overwrite) {
            Ok(tree) => tree,
            Err(why) => return ack.failed(format_args!("the batch cannot be written as a directory: {why}")),
        };
        let mut id = commit_id::id_of(ack.first_seq);
        let replayed = ack.reason == SealReason::Replay;
        let mut placed = false;
        loop {
            match self.attempt(&mut id, &tree, &mut placed, replayed) {
                Ok(()) => {
                    self.backoff.reset();
                    ctx.health.up();
                    return ack.committed(ctx.receipt(id, &files));
                }
                Err(failure) => {
                    ctx.health.failing(SinkState::Retrying, failure.kind(), &failure);
                    if !ctx.pause(self.backoff.next_delay()) {
                        return ack.failed(format_args!("gave up writing the commit: {failure}"));
                    }
                    METRICS.sink_retries.inc();
                }
            }
        }
    }
}

/// A batch's files as the tree they become: each name once, with the payloads that
/// make it up in order, and the directories to create, parents first.
struct Tree<'a> {
    files: Vec<(&'a str, Vec<&'a Payload>)>,
    dirs: Vec<&'a str>,
}

impl<'a> Tree<'a> {
    fn plan(files: &'a [CommitFile], overwrite: bool) -> Result<Self, NotATree> {
        for file in files {
            // Ingest checked client names already; this keeps every path inside the commit.
            file_name::validate(&file.name)?;
        }
        let merged = encode::merge_by_name(files, overwrite);
        let names: HashSet<&str> = merged.iter().map(|(name, _)| *name).collect();
        let mut dirs = Vec::new();
        let mut seen = HashSet::new();
        for (name, _) in &merged {
            for (slash, _) in name.match_indices('/') {
                let dir = &name[..slash];
                if names.contains(dir) {
                    return Err(NotATree::FileAndDirectory { dir: dir.to_owned(), file: name.to_string() });
                }
                if seen.insert(dir) {
                    dirs.push(dir);
                }
            }
        }
        Ok(Self { files: merged, dirs })
    }

    /// Writes the tree under `temp` (which must not exist), everything durable.
    fn write(&self, temp: &Path) -> Result<(), FsStepError> {
        fs::create_dir(temp).doing("creating", temp)?;
        // Opened before anything is written, so `syncfs` on it reports any writeback
        // error of what follows.
        let temp_dir = File::open(temp).doing("opening", temp)?;
        for dir in &self.dirs {
            let path = temp.join(dir);
            fs::create_dir(&path).doing("creating", &path)?;
        }
        let each = self.files.len() <= FSYNC_EACH_UP_TO;
        let mut unsynced = Vec::new();
        for (name, parts) in &self.files {
            let path = temp.join(name);
            let mut file = OpenOptions::new().write(true).create_new(true).open(&path).doing("creating", &path)?;
            // Cloning `Bytes` shares the payload: the chunks go to `writev` as they are.
            let chunks: Vec<Bytes> = parts.iter().flat_map(|p| p.chunks()).cloned().collect();
            vectored::write_from(&mut file, &chunks, &mut Cursor::default()).doing("writing", &path)?;
            if each {
                unsynced.push((file, path));
            }
        }
        if !each {
            return syncfs(&temp_dir).doing("syncing the file system of", temp);
        }
        // All written before any is synced: the first fsync commits the file system's
        // journal for all of them, the others find their data already durable.
        for (file, path) in unsynced {
            file.sync_all().doing("syncing", &path)?;
        }
        for dir in &self.dirs {
            sync_dir(&temp.join(dir))?;
        }
        temp_dir.sync_all().doing("syncing", temp)
    }
}

/// Flushes the whole file system `dir` is on (Linux `syncfs`, which reports writeback
/// errors since 5.8).
fn syncfs(dir: &File) -> io::Result<()> {
    Ok(rustix::fs::syncfs(dir)?)
}

fn sync_dir(path: &Path) -> Result<(), FsStepError> {
    File::open(path).and_then(|dir| dir.sync_all()).doing("syncing", path)
}

/// Why a batch's files cannot be laid out as a directory tree.
#[derive(Debug, thiserror::Error)]
enum NotATree {
    #[error(transparent)]
    BadName(#[from] file_name::BadFileName),
    #[error("{dir:?} is both a file and the directory of {file:?}")]
    FileAndDirectory { dir: String, file: String },
}

/// A failed file-system step: what was done, on which path, and why it failed.
#[derive(Debug, thiserror::Error)]
#[error("{step} {}: {error}", path.display())]
struct FsStepError {
    step: &'static str,
    path: PathBuf,
    error: io::Error,
}

impl FsStepError {
    /// The `kind` label of `spout_sink_errors_total`.
    fn kind(&self) -> &'static str {
        match Errno::from_io_error(&self.error) {
            Some(Errno::NOSPC | Errno::DQUOT) => "no_space",
            Some(Errno::ROFS) => "read_only",
            Some(Errno::ACCESS | Errno::PERM) => "permission",
            _ => "io",
        }
    }
}

trait Doing<T> {
    fn doing(self, step: &'static str, path: &Path) -> Result<T, FsStepError>;
}

impl<T> Doing<T> for io::Result<T> {
    fn doing(self, step: &'static str, path: &Path) -> Result<T, FsStepError> {
        self.map_err(|error| FsStepError { step, path: path.to_owned(), error })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::ack::{BatchAck, Ledger, VerdictReceiver};
    use crate::batch::{SealReason, SeqRange};
    use crate::buffer::Budget;
    use crate::encode::Layout;
    use crate::sink::Health;

    /// A commit of `files` (name, chunks) and the receiver of its verdict, its batch
    /// numbered past every other one this test run makes.
    fn commit(files: &[(&str, &[&[u8]])]) -> (Commit, VerdictReceiver) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_000_000);
        let first = NEXT.fetch_add(1000, std::sync::atomic::Ordering::Relaxed);
        commit_numbered(first, SealReason::Flush, files)
    }

    fn commit_numbered(first: u64, reason: SealReason, files: &[(&str, &[&[u8]])]) -> (Commit, VerdictReceiver) {
        let files: Vec<CommitFile> = files
            .iter()
            .map(|(name, chunks)| CommitFile {
                name: name.to_string(),
                data: chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect::<Vec<_>>().into(),
            })
            .collect();
        let bytes = files.iter().map(|f| f.data.len()).sum();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ledger = Ledger::new(Arc::new(Budget::new(1 << 20)));
        let seqs = SeqRange { first, last: first + files.len() as u64 - 1 };
        let ack = BatchAck::new(1, files.len() as u64, bytes, reason, seqs, Instant::now(), vec![tx], ledger);
        (Commit { files, ack }, rx)
    }

    fn context(overwrite: bool) -> SinkContext {
        SinkContext::new(Arc::new(Health::new("dir:test".into())), overwrite)
    }

    fn committed_id(mut verdict: VerdictReceiver) -> String {
        verdict.try_recv().expect("settled").expect("committed").commit.clone()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_commit_is_a_directory_of_its_files_with_subdirectories() {
        let root = tempfile::tempdir().unwrap();
        let mut sink = DirSink::open(root.path().into()).unwrap();
        let (commit, verdict) = commit(&[("a.txt", &[b"hel", b"lo"]), ("logs/2024/x.ndjson", &[b"{}\n"])]);
        sink.submit(commit, &context(false));
        let id = committed_id(verdict);
        assert_eq!((id.len(), id.bytes().all(|b| b.is_ascii_digit())), (20, true));
        assert_eq!(entries(root.path()), std::slice::from_ref(&id), "no temp directory left");
        let dir = root.path().join(&id);
        assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"hello");
        assert_eq!(fs::read(dir.join("logs/2024/x.ndjson")).unwrap(), b"{}\n");
    }

    #[test]
    fn a_commit_of_many_files_is_synced_at_once_and_intact() {
        let names: Vec<String> = (0..FSYNC_EACH_UP_TO * 2).map(|i| format!("d{}/f{i}", i % 3)).collect();
        let chunks: Vec<[&[u8]; 2]> = names.iter().map(|n| [n.as_bytes(), b"!"]).collect();
        let files: Vec<(&str, &[&[u8]])> = names.iter().zip(&chunks).map(|(n, c)| (n.as_str(), &c[..])).collect();
        let root = tempfile::tempdir().unwrap();
        let mut sink = DirSink::open(root.path().into()).unwrap();
        let (commit, verdict) = commit(&files);
        sink.submit(commit, &context(false));
        let dir = root.path().join(committed_id(verdict));
        for name in &names {
            assert_eq!(fs::read(dir.join(name)).unwrap(), format!("{name}!").into_bytes());
        }
    }

    #[test]
    fn same_name_appends_unless_overwrite() {
        let files: &[(&str, &[&[u8]])] = &[("x", &[b"1"]), ("d/y", &[b"2"]), ("x", &[b"3", b"4"])];
        for (overwrite, expected) in [(false, &b"134"[..]), (true, &b"34"[..])] {
            let root = tempfile::tempdir().unwrap();
            let mut sink = DirSink::open(root.path().into()).unwrap();
            let (commit, verdict) = commit(files);
            sink.submit(commit, &context(overwrite));
            let dir = root.path().join(committed_id(verdict));
            assert_eq!(fs::read(dir.join("x")).unwrap(), expected, "overwrite: {overwrite}");
            assert_eq!(fs::read(dir.join("d/y")).unwrap(), b"2");
        }
    }

    #[test]
    fn receipts_name_the_batch_file_under_layout_batch() {
        let root = tempfile::tempdir().unwrap();
        let mut sink = DirSink::open(root.path().into()).unwrap();
        let (commit, mut verdict) = commit(&[("batch-00000000000000000001", &[b"a\n"])]);
        sink.submit(commit, &SinkContext { layout: Layout::Batch, ..context(false) });
        let receipt = verdict.try_recv().unwrap().unwrap();
        assert_eq!(receipt.batch_file.as_deref(), Some("batch-00000000000000000001"));
    }

    #[test]
    fn a_commit_is_named_by_its_first_seq_and_a_batch_already_in_place_is_not_written_again() {
        let root = tempfile::tempdir().unwrap();
        let mut first = DirSink::open(root.path().into()).unwrap();
        assert_eq!(first.seq_floor(), 0);
        let (one, verdict) = commit_numbered(41, SealReason::Age, &[("f", &[b"1"])]);
        first.submit(one, &context(false));
        assert_eq!(committed_id(verdict), "00000000000000000041");
        drop(first);
        let mut second = DirSink::open(root.path().into()).unwrap();
        assert_eq!(second.seq_floor(), 41, "new batches are numbered past what is there");
        // The same batch again, as a restart replays it from the spool.
        let (again, verdict) = commit_numbered(41, SealReason::Replay, &[("f", &[b"1"])]);
        second.submit(again, &context(false));
        assert_eq!(committed_id(verdict), "00000000000000000041");
        assert_eq!(entries(root.path()), ["00000000000000000041"]);
        assert_eq!(fs::read(root.path().join("00000000000000000041/f")).unwrap(), b"1");
        // A batch formed afresh that finds its id taken is committed under the next one.
        let (other, verdict) = commit_numbered(41, SealReason::Age, &[("g", &[b"2"])]);
        second.submit(other, &context(false));
        assert_eq!(committed_id(verdict), "00000000000000000042");
        assert_eq!(fs::read(root.path().join("00000000000000000042/g")).unwrap(), b"2");
    }

    #[test]
    fn opening_removes_what_a_crash_left_half_written() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join(".tmp-00000000000000000007/sub")).unwrap();
        fs::write(root.path().join(".tmp-00000000000000000007/sub/f"), b"partial").unwrap();
        fs::write(root.path().join(".tmp-stray"), b"").unwrap();
        fs::create_dir(root.path().join("00000000000000000005")).unwrap();
        DirSink::open(root.path().into()).unwrap();
        assert_eq!(entries(root.path()), ["00000000000000000005"]);
    }

    #[test]
    fn a_name_that_is_also_a_directory_fails_at_once() {
        let root = tempfile::tempdir().unwrap();
        let mut sink = DirSink::open(root.path().into()).unwrap();
        let (commit, mut verdict) = commit(&[("a/b", &[b"1"]), ("a", &[b"2"])]);
        sink.submit(commit, &context(false));
        let error = verdict.try_recv().unwrap().unwrap_err();
        assert!(error.0.contains("\"a\" is both a file and the directory of \"a/b\""), "{error}");
        assert!(entries(root.path()).is_empty());
    }

    /// A sink whose root then turns unusable in a way that stops the root user too: a
    /// file where the directory was.
    fn sink_with_broken_root() -> (tempfile::TempDir, PathBuf, DirSink) {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("out");
        let sink = DirSink::open(root.clone()).unwrap();
        fs::remove_dir(&root).unwrap();
        fs::write(&root, b"not a directory").unwrap();
        (parent, root, sink)
    }

    fn mend_root(root: &Path) {
        fs::remove_file(root).unwrap();
        fs::create_dir(root).unwrap();
    }

    #[test]
    fn file_system_failures_are_retried_until_they_pass() {
        let (_parent, root, mut sink) = sink_with_broken_root();
        let ctx = context(false);
        let retries_before = METRICS.sink_retries.get();
        let (commit, verdict) = commit(&[("kept", &[b"intact"])]);
        let writer = {
            let ctx = ctx.clone();
            std::thread::spawn(move || sink.submit(commit, &ctx))
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while ctx.health.state() != SinkState::Retrying || METRICS.sink_retries.get() == retries_before {
            assert!(Instant::now() < deadline, "the sink never reported the failure");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(ctx.health.last_error().unwrap().contains("Not a directory"), "{:?}", ctx.health.last_error());
        mend_root(&root);
        writer.join().unwrap();
        assert_eq!(ctx.health.state(), SinkState::Up);
        let id = committed_id(verdict);
        assert_eq!(entries(&root), std::slice::from_ref(&id));
        assert_eq!(fs::read(root.join(id).join("kept")).unwrap(), b"intact");
    }

    #[test]
    fn giving_up_fails_the_batch() {
        let (_parent, _root, mut sink) = sink_with_broken_root();
        let ctx = context(false);
        ctx.give_up.cancel();
        let (commit, mut verdict) = commit(&[("lost", &[b"x"])]);
        sink.submit(commit, &ctx);
        let error = verdict.try_recv().unwrap().unwrap_err();
        assert!(error.0.starts_with("gave up writing the commit: creating "), "{error}");
    }
}
