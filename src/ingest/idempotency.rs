//! Idempotent retries: a request carrying `Idempotency-Key: K` that is sent again
//! (after a timeout, a lost connection) is not enqueued twice. The retry gets the
//! first request's answer, waiting for its commit if it asks `wait=commit`.
//!
//! Keys are remembered for a bounded window: at most `capacity` keys, none older
//! than `window`. A key reused with a different body is refused, not replayed. A
//! first request that was refused (503, 413, ...) leaves no trace, so its retry is
//! processed afresh.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::ack::Verdict;
use crate::batch::SeqRange;
use crate::metrics::METRICS;

/// What the first request with a key achieved, as its retries see it.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The first request is still being read, decoded or admitted.
    Pending,
    /// Admitted; the commit is not known yet.
    Accepted(Arc<Admission>),
    /// Admitted and settled.
    Settled(Arc<Admission>, Verdict),
    /// The first request was refused: a retry starts over.
    Abandoned,
}

/// The admitted messages of a keyed request: enough to answer its retries.
#[derive(Debug)]
pub struct Admission {
    pub count: u64,
    pub seqs: SeqRange,
    pub names: Vec<Option<String>>,
}

/// What `begin` tells the handler to do.
#[derive(Debug)]
pub enum Begin {
    /// The key is new: process the request and report through the ticket.
    First(Ticket),
    /// The key was seen with this body: answer from the first request's progress.
    Replay(watch::Receiver<Progress>),
    /// The key was seen with a different body.
    Conflict,
}

#[derive(Debug)]
struct Entry {
    fingerprint: u64,
    progress: watch::Receiver<Progress>,
}

#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<String, Entry>,
    order: VecDeque<(Instant, String)>,
}

#[derive(Debug)]
pub struct Idempotency {
    entries: Arc<Mutex<Entries>>,
    capacity: usize,
    window: Duration,
}

impl Idempotency {
    pub fn new(capacity: usize, window: Duration) -> Self {
        Self { entries: Arc::default(), capacity, window }
    }

    pub fn begin(&self, key: &str, fingerprint: u64) -> Begin {
        let mut entries = self.entries.lock().unwrap();
        self.expire(&mut entries);
        if let Some(entry) = entries.by_key.get(key) {
            let abandoned = matches!(*entry.progress.borrow(), Progress::Abandoned);
            if !abandoned {
                METRICS.idempotency_hits.inc();
                return if entry.fingerprint == fingerprint {
                    Begin::Replay(entry.progress.clone())
                } else {
                    Begin::Conflict
                };
            }
        }
        let (tx, rx) = watch::channel(Progress::Pending);
        entries.by_key.insert(key.to_owned(), Entry { fingerprint, progress: rx });
        entries.order.push_back((Instant::now(), key.to_owned()));
        Begin::First(Ticket { progress: tx })
    }

    fn expire(&self, entries: &mut Entries) {
        while let Some((created, _)) = entries.order.front() {
            if entries.order.len() <= self.capacity && created.elapsed() < self.window {
                break;
            }
            let (_, key) = entries.order.pop_front().expect("front exists");
            entries.by_key.remove(&key);
        }
    }
}

/// The first request's handle on its key. Dropped before `accepted`, the key is
/// abandoned and a retry is processed afresh.
#[derive(Debug)]
pub struct Ticket {
    progress: watch::Sender<Progress>,
}

impl Ticket {
    pub fn accepted(&self, admission: Arc<Admission>) {
        self.progress.send_replace(Progress::Accepted(admission));
    }

    pub fn settled(self, verdict: Verdict) {
        self.progress.send_modify(|progress| {
            if let Progress::Accepted(admission) = progress {
                *progress = Progress::Settled(admission.clone(), verdict);
            }
        });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.progress.send_if_modified(|progress| {
            let pending = matches!(progress, Progress::Pending);
            if pending {
                *progress = Progress::Abandoned;
            }
            pending
        });
    }
}

/// A fingerprint of what makes two requests "the same": body and options.
pub fn fingerprint(body: &[Bytes], content_type: Option<&str>, file: Option<&str>) -> u64 {
    let mut hasher = DefaultHasher::new();
    content_type.hash(&mut hasher);
    file.hash(&mut hasher);
    for chunk in body {
        hasher.write(chunk);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission() -> Arc<Admission> {
        Arc::new(Admission { count: 1, seqs: SeqRange { first: 5, last: 5 }, names: vec![None] })
    }

    #[test]
    fn replays_conflicts_and_abandons() {
        let idem = Idempotency::new(10, Duration::from_secs(60));
        let Begin::First(ticket) = idem.begin("k", 1) else { panic!("new key") };
        assert!(matches!(idem.begin("k", 2), Begin::Conflict));
        let Begin::Replay(progress) = idem.begin("k", 1) else { panic!("same body replays") };
        ticket.accepted(admission());
        assert!(matches!(*progress.borrow(), Progress::Accepted(_)));
        drop(ticket);
        assert!(matches!(*progress.borrow(), Progress::Accepted(_)), "accepted stays accepted");

        let Begin::First(refused) = idem.begin("r", 1) else { panic!("new key") };
        drop(refused);
        assert!(matches!(idem.begin("r", 1), Begin::First(_)), "a refused first request leaves no trace");
    }

    #[test]
    fn forgets_past_capacity_and_window() {
        let idem = Idempotency::new(2, Duration::from_secs(60));
        for key in ["a", "b", "c"] {
            let Begin::First(ticket) = idem.begin(key, 0) else { panic!() };
            ticket.accepted(admission());
        }
        assert!(matches!(idem.begin("a", 0), Begin::First(_)), "the oldest key was forgotten");
        let idem = Idempotency::new(10, Duration::ZERO);
        let Begin::First(ticket) = idem.begin("a", 0) else { panic!() };
        ticket.accepted(admission());
        assert!(matches!(idem.begin("a", 0), Begin::First(_)), "the window passed");
    }
}
