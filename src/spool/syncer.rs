//! The group-commit syncer: one thread that makes what was written durable.
//!
//! With `--spool-sync always` it syncs as soon as something is written and the
//! previous sync has ended, so every request that arrived during one `fdatasync`
//! shares the next: under load a sync covers many requests, and when idle a single
//! request waits for one sync only. With a duration, it syncs that often instead.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Shared, SpoolSync, Synced};
use crate::metrics::METRICS;

/// After a failed sync, a pause so that a broken disk does not spin the thread.
const AFTER_FAILURE: Duration = Duration::from_millis(100);

/// Starts the thread; it ends once the spool is closing.
pub fn start(spool: Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("spool-sync".into()).spawn(move || run(&spool))
}

fn run(spool: &Shared) {
    loop {
        if let SpoolSync::Every(every) = spool.sync {
            let state = spool.state.lock().unwrap();
            // Sleeps `every`, waking early only to close.
            drop(spool.wrote.wait_timeout_while(state, every, |s| !s.closing).unwrap());
        }
        if !sync_once(spool) {
            return;
        }
    }
}

/// Waits for unsynced writes and syncs them; false once the spool is closing.
fn sync_once(spool: &Shared) -> bool {
    let (target, appended, files, dir) = {
        let state = spool.state.lock().unwrap();
        let mut state = spool.wrote.wait_while(state, |s| s.appended <= s.synced_appended && !s.closing).unwrap();
        if state.closing {
            return false;
        }
        let mut files: Vec<(PathBuf, Arc<File>)> = std::mem::take(&mut state.to_sync);
        let active = state.segments.back().map(|s| s.path.clone());
        files.extend(state.active.clone().zip(active).map(|(file, path)| (path, file)));
        (state.written_seq, state.appended, files, std::mem::take(&mut state.dir_dirty))
    };
    let started = Instant::now();
    let result = files.iter().try_for_each(|(_, f)| f.sync_data()).and_then(|()| match dir {
        true => File::open(&spool.dir).and_then(|d| d.sync_all()),
        false => Ok(()),
    });
    METRICS.spool_sync_duration.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            let mut state = spool.state.lock().unwrap();
            (state.synced_appended, state.sync_failing) = (appended, false);
            drop(state);
            spool.sync_done.notify_all();
            spool.synced.send_modify(|s| *s = Synced { seq: target, failed: None });
        }
        Err(error) => {
            tracing::error!("syncing the spool {} failed: {error}", spool.dir.display());
            // The writes stay unsynced: the next round tries again, waiters up to
            // `target` hear now (503), since the kernel may have dropped their pages.
            let mut state = spool.state.lock().unwrap();
            state.dir_dirty |= dir;
            state.to_sync.extend(files);
            state.sync_failing = true;
            drop(state);
            spool.sync_done.notify_all();
            spool.synced.send_modify(|s| s.failed = Some((target, error.to_string().into())));
            std::thread::sleep(AFTER_FAILURE);
        }
    }
    true
}
