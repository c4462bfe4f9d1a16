//! The disk spool (`--spool-dir`): what makes a 202 survive a crash.
//!
//! It sits between ingest's admission and the batcher. The batcher numbers a
//! request's messages and, under the same lock, appends them here ([`Journal`]) as one
//! [`record`] (a length and a CRC32C) with one vectored write: the lines of an NDJSON
//! body as the stretch of it they arrived in, other payloads past 1 KiB as the slices
//! they arrived in, smaller ones copied (see [`request`]); it appends a `sealed` record
//! when it seals a batch, so that a restart rebuilds batches exactly as they were.
//! Ingest answers 202 once the records are as durable as `--spool-sync` asks: with
//! `always`, the [`syncer`] thread runs one `fdatasync` for every request written
//! while the previous one ran (group commit).
//!
//! Records go into append-only segment files `DIR/<n>.seg`, a new one past a size.
//! Each committed batch appends a `committed` mark, and a segment whose every message
//! and seal is at or below the mark is deleted, or kept as a spare (`DIR/<n>.spare`,
//! [`SPARES`]) that a later segment writes over; each record names its segment, so
//! what a spare held before is not read as the new segment's. `--max-spool-bytes`
//! bounds the message records held: admission waits or answers 503 past it, as for
//! the memory budget.
//!
//! A sealed batch waiting for a lagging sink need not stay in memory: the spool notes
//! where each request's records start, and [`Journal::read_back`] reads a batch from
//! there ([`read_back`]) when the sink takes it.
//!
//! At start-up ([`Spool::open`]) every segment is read back ([`found`], [`salvage`]: a
//! torn tail is cut, damaged bytes are quarantined to `DIR/quarantine/`), and [`replay`] turns
//! what is not committed into the batches to commit first. `DIR/lock` ([`lock`]) keeps a
//! second sidecar out. `DIR/writer-id` ([`writer_id`]) names the sidecar as a `pfs://`
//! writer across restarts.

mod config;
mod found;
pub mod lock;
mod read_back;
pub mod record;
pub mod replay;
mod request;
pub mod salvage;
mod syncer;
mod writer_id;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::watch;

pub use self::config::{SpoolConfig, SpoolSync};
use self::found::Found;
use self::lock::SpoolLock;
use self::read_back::Extent;
use self::record::{Kind, Unplaced};
pub use self::replay::Recovered;
pub use self::writer_id::writer_id;
use crate::batch::{Journal, JournalError};
use crate::buffer::Budget;
use crate::message::{Incoming, Message};
use crate::metrics::METRICS;
use crate::sink::vectored::{self, Cursor};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool {} is in use by another sidecar (pid {holder}); give each sidecar a --spool-dir of its own", dir.display())]
    Locked { dir: PathBuf, holder: String },
    #[error("{doing} {}: {source}", path.display())]
    Io {
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("syncing the spool failed: {0}")]
    Sync(Arc<str>),
}

/// How far the syncer has got; what requests waiting for durability watch.
#[derive(Debug, Clone, Default)]
struct Synced {
    /// Every message up to this seq is on stable storage.
    seq: u64,
    /// The last sync failed: the messages up to `.0` it covered may not be.
    failed: Option<(u64, Arc<str>)>,
}

#[derive(Debug)]
struct Segment {
    number: u64,
    path: PathBuf,
    len: u64,
    /// Bytes of its message records: what it holds of `--max-spool-bytes`.
    charged: u64,
    /// The highest seq its messages and seals name: it goes once that is committed.
    max_seq: u64,
}

#[derive(Debug)]
struct State {
    /// Oldest first; with `active`, the last one is being appended to.
    segments: VecDeque<Segment>,
    active: Option<Arc<File>>,
    /// Segments closed since the last sync, still to be synced.
    /// Dropped with their segment when it is deleted: an open descriptor would keep a
    /// deleted file's space taken, and a full disk full.
    to_sync: Vec<(PathBuf, Arc<File>)>,
    /// Emptied segment files kept to be written over by new segments (see [`SPARES`]).
    spares: Vec<PathBuf>,
    /// A segment was created since the last sync: its directory entry needs one too.
    dir_dirty: bool,
    written_seq: u64,
    /// Bytes appended this run, and how many of them the syncer has made durable.
    appended: u64,
    synced_appended: u64,
    /// The last sync failed (the syncer logged it and keeps trying).
    sync_failing: bool,
    committed: u64,
    /// Where each request's records written this run start (by its first seq), not
    /// yet committed: where a batch is read back from.
    starts: std::collections::BTreeMap<u64, (PathBuf, u64)>,
    next_number: u64,
    /// The spool is being dropped: the syncer ends.
    closing: bool,
    /// Why the last write failed, while it keeps failing (one log line per change).
    failure: Option<String>,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    sync: SpoolSync,
    segment_bytes: u64,
    shared: Arc<Shared>,
    budget: Budget,
    /// Joined on drop, so the lock is let go only once nothing touches the files.
    syncer: Option<std::thread::JoinHandle<()>>,
    _lock: SpoolLock,
}

/// What the syncer thread shares with the spool.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    sync: SpoolSync,
    state: Mutex<State>,
    /// Tells the syncer something was written (or that the spool is closing).
    wrote: Condvar,
    /// Tells [`Spool::wait_synced`] the syncer has made progress.
    sync_done: Condvar,
    synced: watch::Sender<Synced>,
}

/// The spool's line of `/status`.
#[derive(Debug, Serialize)]
pub struct SpoolStatus {
    pub dir: PathBuf,
    pub sync: String,
    pub used_bytes: u64,
    pub limit_bytes: u64,
    pub segments: usize,
    pub written_seq: u64,
    pub synced_seq: u64,
    pub committed_seq: u64,
    pub error: Option<String>,
}

const SEGMENT_SUFFIX: &str = ".seg";
const SPARE_SUFFIX: &str = ".spare";

/// Emptied segment files kept for new segments to write over. Writing over a file's
/// cached, allocated pages costs the page cache and the file system about half of
/// filling a new file, and an `fdatasync` that need not change the file's size or
/// extents about half as much too; deleting a file has a cost of its own. The spares
/// take disk room besides `--max-spool-bytes`: at most this many segments.
const SPARES: usize = 2;

impl Spool {
    /// Locks and reads the spool, salvaging what a crash left, and starts the syncer.
    /// Returns the spool and what is to be committed again.
    pub fn open(config: &SpoolConfig) -> Result<(Arc<Self>, Recovered), SpoolError> {
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(io_error("creating", &dir))?;
        let lock = SpoolLock::acquire(&dir)?;
        let Found { segments, records, spares, next_number } = found::read(&dir)?;
        let recovered = replay::recover(records);
        let budget = Budget::with_gauges(config.max_bytes, &METRICS.spool_bytes, &METRICS.spool_limit_bytes);
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            sync: config.sync,
            state: Mutex::new(State {
                segments: VecDeque::new(),
                active: None,
                to_sync: Vec::new(),
                spares,
                dir_dirty: false,
                written_seq: recovered.max_seq,
                appended: 0,
                synced_appended: 0,
                sync_failing: false,
                committed: recovered.committed,
                starts: Default::default(),
                next_number,
                closing: false,
                failure: None,
            }),
            wrote: Condvar::new(),
            sync_done: Condvar::new(),
            synced: watch::Sender::new(Synced { seq: recovered.max_seq, failed: None }),
        });
        let syncer = match config.sync {
            SpoolSync::Never => None,
            _ => Some(syncer::start(shared.clone()).map_err(io_error("starting the syncer thread for", &dir))?),
        };
        let spool = Arc::new(Self {
            dir,
            sync: config.sync,
            segment_bytes: config.segment_bytes(),
            shared,
            budget,
            syncer,
            _lock: lock,
        });
        for segment in &segments {
            spool.budget.force(segment.charged);
        }
        spool.shared.state.lock().unwrap().segments = segments;
        spool.delete_committed(spool.shared.state.lock().unwrap());
        METRICS.spool_replayed_messages.inc_by(recovered.messages());
        if recovered.messages() > 0 {
            tracing::info!(
                sealed_batches = recovered.sealed.len(),
                messages = recovered.messages(),
                "the spool holds messages a previous run accepted and did not commit: committing them first"
            );
        }
        Ok((spool, recovered))
    }

    /// Disk room for admitted messages, `--max-spool-bytes`.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// What `messages` take in the spool: the bytes to reserve before admitting them.
    pub fn record_bytes(messages: &[Incoming]) -> u64 {
        request::spooled_len(messages)
    }

    /// Waits until messages up to `seq` are as durable as `--spool-sync` promises.
    pub async fn durable(&self, seq: u64) -> Result<(), SpoolError> {
        if self.sync != SpoolSync::Always {
            return Ok(());
        }
        let mut synced = self.shared.synced.subscribe();
        let covered = |s: &Synced| s.seq >= seq || s.failed.as_ref().is_some_and(|(through, _)| *through >= seq);
        // The sender lives in `self`, so waiting cannot fail while we borrow it.
        let state = synced.wait_for(covered).await.expect("the spool outlives its waiters").clone();
        match state.failed {
            Some((_, why)) if state.seq < seq => Err(SpoolError::Sync(why)),
            _ => Ok(()),
        }
    }

    /// Blocks until everything appended so far (a batch's seal included) is synced,
    /// with `--spool-sync` other than `never`: the sink thread calls it before
    /// committing a batch, so a batch the sink holds is always rebuilt as it was.
    pub fn wait_synced(&self) {
        if self.sync == SpoolSync::Never {
            return;
        }
        let state = self.shared.state.lock().unwrap();
        let target = state.appended;
        // A failing sync does not hold commits back: the batch is in memory and the
        // failure is logged; only rebuilding it exactly after a power cut is at stake.
        drop(self.shared.sync_done.wait_while(state, |s| s.synced_appended < target && !s.sync_failing));
    }

    /// The spool cannot be written at the moment (disk full, read-only, I/O errors).
    pub fn failure(&self) -> Option<String> {
        self.shared.state.lock().unwrap().failure.clone()
    }

    pub fn status(&self) -> SpoolStatus {
        let state = self.shared.state.lock().unwrap();
        SpoolStatus {
            dir: self.dir.clone(),
            sync: self.sync.to_string(),
            used_bytes: self.budget.used(),
            limit_bytes: self.budget.limit(),
            segments: state.segments.len(),
            written_seq: state.written_seq,
            synced_seq: self.shared.synced.borrow().seq,
            committed_seq: state.committed,
            error: state.failure.clone(),
        }
    }

    /// Every message up to `seq` is committed: marks it, and deletes the segments
    /// that hold nothing past it. Called by the ledger as each batch commits.
    pub fn committed(&self, seq: u64) {
        let mut state = self.shared.state.lock().unwrap();
        if seq <= state.committed {
            return;
        }
        state.committed = seq;
        let mark = Unplaced::mark(Kind::Committed, seq, &[]);
        // A mark lost to a failing disk means a restart replays batches already
        // committed (dir: and pfs:// recognise them); the failure is logged and
        // shows in /status.
        let _ = self.write(&mut state, vec![mark], 0, 0);
        if state.active.is_some() && state.segments.back().is_some_and(|s| s.max_seq <= seq && s.charged > 0) {
            // Everything in it is committed: close it so it can go now, not when full.
            self.close_active(&mut state);
        }
        self.delete_committed(state);
    }

    fn delete_committed(&self, mut state: MutexGuard<'_, State>) {
        let committed = state.committed;
        state.starts = state.starts.split_off(&(committed + 1));
        let keep_active = state.active.is_some();
        let last = state.segments.len();
        let mut gone = Vec::new();
        let mut index = 0;
        state.segments.retain(|segment| {
            index += 1;
            let keep = (keep_active && index == last) || segment.max_seq > committed;
            if !keep {
                gone.push((segment.path.clone(), segment.charged));
            }
            keep
        });
        METRICS.spool_segments.set(state.segments.len() as i64);
        state.to_sync.retain(|(path, _)| !gone.iter().any(|(deleted, _)| deleted == path));
        // Kept under the lock: the next segment may take a spare at once.
        gone.retain(|(path, charged)| {
            if state.spares.len() >= SPARES {
                return true;
            }
            let spare = path.with_extension(&SPARE_SUFFIX[1..]);
            match fs::rename(path, &spare) {
                Ok(()) => {
                    state.spares.push(spare);
                    self.budget.release(*charged);
                    false
                }
                Err(error) => {
                    tracing::warn!("cannot keep the committed spool segment {} for reuse: {error}", path.display());
                    true
                }
            }
        });
        drop(state);
        for (path, charged) in gone {
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!("cannot delete the committed spool segment {}: {error}", path.display());
            }
            self.budget.release(charged);
        }
    }

    /// Appends `records` (`charged` of their bytes message records up to `max_seq`) to
    /// the active segment, opening one if needed. On failure the segment is cut back,
    /// so a half-written record never precedes the next one.
    fn write(&self, state: &mut State, records: Vec<Unplaced>, charged: u64, max_seq: u64) -> Result<(), SpoolError> {
        let file = match self.active(state) {
            Ok(file) => file,
            Err(error) => return Err(self.failing(state, error)),
        };
        let segment = state.segments.back_mut().expect("the active segment is listed");
        let mut chunks = Vec::with_capacity(records.len() * 2);
        for record in records {
            record.place(segment.number, &mut chunks);
        }
        let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        if let Err(source) = vectored::write_from(&mut &*file, &chunks, &mut Cursor::default()) {
            let error = SpoolError::Io { doing: "writing", path: segment.path.clone(), source };
            if file.set_len(segment.len).and_then(|()| (&*file).seek(SeekFrom::Start(segment.len))).is_err() {
                self.close_active(state);
            }
            // A full disk is not kept full by files kept only to be written over.
            state.spares.retain(|spare| fs::remove_file(spare).is_err());
            return Err(self.failing(state, error));
        }
        segment.len += len;
        segment.charged += charged;
        segment.max_seq = segment.max_seq.max(max_seq);
        if segment.len >= self.segment_bytes {
            self.close_active(state);
        }
        state.written_seq = state.written_seq.max(max_seq);
        state.appended += len;
        if state.failure.take().is_some() {
            tracing::info!("the spool {} is writable again", self.dir.display());
        }
        self.shared.wrote.notify_one();
        Ok(())
    }

    /// Where the records of the batch `first..=last` lie: from where its first
    /// request's records start to where the next request's do (or to the end of
    /// what is written), as the segments have them now.
    fn extents(&self, first: u64, last: u64) -> Result<Vec<Extent>, String> {
        let state = self.shared.state.lock().unwrap();
        let Some((path, start)) = state.starts.get(&first) else {
            return Err(format!("the spool does not know where message {first} is"));
        };
        let next = state.starts.range(last + 1..).next().map(|(_, at)| at);
        let mut extents = Vec::new();
        for segment in state.segments.iter().skip_while(|s| &s.path != path) {
            let from = if extents.is_empty() { *start } else { 0 };
            match next {
                Some((next_path, to)) if *next_path == segment.path => {
                    extents.push(Extent { path: segment.path.clone(), from, to: *to });
                    break;
                }
                _ => extents.push(Extent { path: segment.path.clone(), from, to: segment.len }),
            }
        }
        Ok(extents)
    }

    fn failing(&self, state: &mut State, error: SpoolError) -> SpoolError {
        if state.failure.is_none() {
            tracing::error!("the spool cannot be written, refusing messages (503) until it can: {error}");
        }
        state.failure = Some(error.to_string());
        error
    }

    fn active(&self, state: &mut State) -> Result<Arc<File>, SpoolError> {
        if let Some(file) = &state.active {
            return Ok(file.clone());
        }
        let number = state.next_number;
        let path = self.dir.join(format!("{number:020}{SEGMENT_SUFFIX}"));
        // A spare is written over from its start: its records name their segment, so
        // what it held before is not taken for this one's (see `salvage`).
        let file = match state.spares.pop() {
            Some(spare) => fs::rename(&spare, &path)
                .and_then(|()| fs::OpenOptions::new().write(true).open(&path))
                .inspect_err(|_| {
                    // Kept for the next try (a read-only file system comes back), unless gone.
                    if spare.exists() {
                        state.spares.push(spare);
                    }
                }),
            None => fs::OpenOptions::new().write(true).create_new(true).open(&path),
        }
        .map_err(|source| SpoolError::Io { doing: "creating", path: path.clone(), source })?;
        state.next_number += 1;
        let file = Arc::new(file);
        state.segments.push_back(Segment { number, path, len: 0, charged: 0, max_seq: 0 });
        METRICS.spool_segments.set(state.segments.len() as i64);
        state.active = Some(file.clone());
        state.dir_dirty = true;
        Ok(file)
    }

    fn close_active(&self, state: &mut State) {
        if let Some(file) = state.active.take() {
            if self.sync != SpoolSync::Never {
                let path = state.segments.back().expect("the active segment is listed").path.clone();
                state.to_sync.push((path, file));
            }
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().closing = true;
        self.shared.wrote.notify_all();
        if let Some(syncer) = self.syncer.take() {
            let _ = syncer.join();
        }
    }
}

impl Journal for Spool {
    fn append(&self, messages: &[Message]) -> Result<(), JournalError> {
        let records = request::encode(messages).map_err(|e| JournalError(e.to_string()))?;
        // Nothing but message records: all of it is charged.
        let len: u64 = records.iter().map(Unplaced::record_len).sum();
        let max_seq = messages.last().map_or(0, |m| m.seq);
        let mut state = self.shared.state.lock().unwrap();
        self.write(&mut state, records, len, max_seq).map_err(|e| JournalError(e.to_string()))?;
        if let (Some(first), Some(segment)) = (messages.first(), state.segments.back()) {
            let start = (segment.path.clone(), segment.len - len);
            state.starts.insert(first.seq, start);
        }
        Ok(())
    }

    fn holds(&self, first: u64) -> bool {
        self.shared.state.lock().unwrap().starts.contains_key(&first)
    }

    fn read_back(&self, first: u64, last: u64) -> Result<Vec<Message>, JournalError> {
        let extents = self.extents(first, last).map_err(JournalError)?;
        read_back::read_back(&extents, first, last).map_err(|e| JournalError(e.to_string()))
    }

    fn sealed(&self, first: u64, last: u64) {
        let seal = Unplaced::mark(Kind::Sealed, first, &last.to_le_bytes());
        let mut state = self.shared.state.lock().unwrap();
        // Lost, the seal only means a restart batches these messages afresh; the
        // failure is logged and shows in /status.
        let _ = self.write(&mut state, vec![seal], 0, last);
    }
}

/// The error of `doing` something to `path`, for `map_err`.
fn io_error(doing: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SpoolError {
    let path = path.to_owned();
    move |source| SpoolError::Io { doing, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Payload;
    use bytes::Bytes;

    fn config(dir: &Path, max_bytes: u64) -> SpoolConfig {
        SpoolConfig { dir: dir.to_owned(), sync: SpoolSync::Always, max_bytes }
    }

    fn messages(seqs: std::ops::RangeInclusive<u64>, size: usize) -> Vec<Message> {
        seqs.map(|seq| Message {
            seq,
            name: (seq % 2 == 0).then(|| format!("f/{seq}")),
            payload: Payload::from(vec![Bytes::from(vec![b'a'; size / 2]), Bytes::from(vec![b'b'; size - size / 2])]),
            line: seq % 3 == 0,
            origin: None,
        })
        .collect()
    }

    fn seqs(batch: &[Message]) -> Vec<u64> {
        batch.iter().map(|m| m.seq).collect()
    }

    #[tokio::test]
    async fn what_was_written_comes_back_as_it_was_batched() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, recovered) = Spool::open(&config(dir.path(), 1 << 20)).unwrap();
        assert_eq!(recovered.messages(), 0);
        spool.append(&messages(1..=3, 10)).unwrap();
        spool.sealed(1, 3);
        spool.append(&messages(4..=5, 10)).unwrap();
        spool.sealed(4, 5);
        spool.append(&messages(6..=6, 10)).unwrap();
        spool.durable(6).await.unwrap();
        spool.committed(3);
        assert_eq!(spool.status().synced_seq, 6);
        drop(spool);
        let (spool, recovered) = Spool::open(&config(dir.path(), 1 << 20)).unwrap();
        assert_eq!(recovered.sealed.iter().map(|b| seqs(b)).collect::<Vec<_>>(), [vec![4, 5]]);
        assert_eq!(seqs(&recovered.open), [6]);
        let four = &recovered.sealed[0][0];
        assert_eq!(
            (four.name.as_deref(), four.line, four.payload.to_vec()),
            (Some("f/4"), false, b"aaaaabbbbb".to_vec())
        );
        assert!(recovered.open[0].line);
        assert_eq!(recovered.max_seq, 6);
        assert_eq!(spool.status().committed_seq, 3);
    }

    #[test]
    fn a_batch_is_read_back_as_written_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        // Segments of 64 KiB: 1,000-byte messages fill one in about 64.
        let (spool, _) = Spool::open(&config(dir.path(), 512 << 10)).unwrap();
        for first in (1..=200).step_by(10) {
            spool.append(&messages(first..=first + 9, 1000)).unwrap();
            spool.sealed(first, first + 9);
        }
        assert!(spool.status().segments > 2);
        let written = messages(1..=200, 1000);
        let back = spool.read_back(1, 200).unwrap();
        assert_eq!(seqs(&back), seqs(&written));
        for (back, written) in back.iter().zip(&written) {
            assert_eq!(
                (&back.name, back.line, back.payload.to_vec()),
                (&written.name, written.line, written.payload.to_vec())
            );
        }
        assert_eq!(seqs(&spool.read_back(61, 70).unwrap()), (61..=70).collect::<Vec<_>>());
        assert!(spool.holds(61) && !spool.holds(62), "only where a request's records start");
        spool.committed(100);
        assert!(!spool.holds(91) && spool.holds(101));
        assert!(spool.read_back(91, 100).is_err());
    }

    #[test]
    fn committed_segments_are_deleted_and_their_room_given_back() {
        let dir = tempfile::tempdir().unwrap();
        // Segments of 64 KiB: 1,000-byte messages fill one in about 64.
        let (spool, _) = Spool::open(&config(dir.path(), 512 << 10)).unwrap();
        for first in (1..=400).step_by(10) {
            let batch = messages(first..=first + 9, 1000);
            let incoming: Vec<Incoming> = batch
                .iter()
                .map(|m| Incoming { name: m.name.clone(), payload: m.payload.clone(), line: m.line, origin: None })
                .collect();
            spool.budget().force(Spool::record_bytes(&incoming));
            spool.append(&batch).unwrap();
            spool.sealed(first, first + 9);
        }
        let segments = spool.status().segments;
        assert!(segments >= 6, "{segments} segments");
        spool.committed(200);
        let half = spool.status();
        assert!(half.segments < segments && half.segments > 1, "{} of {segments} left", half.segments);
        assert!(half.used_bytes < 300 * 1100 && half.used_bytes > 190 * 1000, "{} bytes left", half.used_bytes);
        spool.committed(400);
        let status = spool.status();
        assert_eq!((status.segments, status.used_bytes), (0, 0));
        let files = || {
            let mut names: Vec<String> =
                fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            names.sort();
            names
        };
        let spares = files();
        assert_eq!(spares.len(), 1 + SPARES, "the lock and the spares kept for reuse: {spares:?}");
        assert!(spares.iter().filter(|n| *n != "lock").all(|n| n.ends_with(SPARE_SUFFIX)), "{spares:?}");
        drop(spool);
        let (spool, recovered) = Spool::open(&config(dir.path(), 512 << 10)).unwrap();
        assert_eq!(recovered.messages(), 0);
        // A new segment writes over a spare, and only its own records come back.
        spool.append(&messages(401..=403, 10)).unwrap();
        let now = files();
        assert_eq!(now.iter().filter(|n| n.ends_with(SPARE_SUFFIX)).count(), SPARES - 1, "{now:?}");
        drop(spool);
        let (_, recovered) = Spool::open(&config(dir.path(), 512 << 10)).unwrap();
        assert_eq!(seqs(&recovered.open), [401, 402, 403]);
        assert!(recovered.sealed.is_empty());
    }
}
