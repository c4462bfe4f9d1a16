//! The messages received and not yet settled, by id, with the receipt handle that
//! deletes them; and the task that keeps them invisible to other consumers while
//! they wait for room in the buffer or for their batch's commit, however long the
//! sink takes.
//!
//! Each is extended once a third of its visibility timeout has passed, checked
//! every sixth: half the timeout is left for the request to get through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::api::{Queue, BATCH};

#[derive(Debug, Default)]
pub struct Held {
    entries: Mutex<HashMap<Arc<str>, Entry>>,
}

#[derive(Debug)]
struct Entry {
    receipt: Arc<str>,
    /// When its visibility is extended next.
    due: Instant,
}

impl Held {
    /// Holds a message just received; false if it was held already (delivered
    /// again while waiting here), whose newest handle is then the one kept.
    pub fn hold(&self, id: &Arc<str>, receipt: &Arc<str>, visibility: Duration) -> bool {
        let entry = Entry { receipt: receipt.clone(), due: Instant::now() + visibility / 3 };
        self.entries.lock().unwrap().insert(id.clone(), entry).is_none()
    }

    /// Lets the messages go, returning their receipt handles.
    pub fn release(&self, ids: &[Arc<str>]) -> Vec<Arc<str>> {
        let mut entries = self.entries.lock().unwrap();
        ids.iter().filter_map(|id| entries.remove(id)).map(|entry| entry.receipt).collect()
    }

    /// Extends the visibility of every held message as it comes due; runs until
    /// aborted.
    pub async fn extend(self: Arc<Self>, queue: Arc<Queue>, visibility: Duration) {
        let mut tick = tokio::time::interval(visibility / 6);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let due: Vec<Arc<str>> = {
                let mut entries = self.entries.lock().unwrap();
                entries
                    .values_mut()
                    .filter(|entry| entry.due <= now)
                    .map(|entry| {
                        entry.due = now + visibility / 3;
                        entry.receipt.clone()
                    })
                    .collect()
            };
            for handles in due.chunks(BATCH) {
                match queue.set_visibility(handles, visibility).await {
                    // A message settled meanwhile has a handle no longer valid.
                    Ok(_) => {}
                    Err(error) => tracing::warn!("cannot extend the visibility of {} messages: {error}", handles.len()),
                }
            }
        }
    }
}
