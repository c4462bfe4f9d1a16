//! Idempotent retries: a request carrying `Idempotency-Key: K` that is sent again
//! (after a timeout, a lost connection) is not enqueued twice. The retry gets the
//! first request's answer, waiting for its commit if it asks `wait=commit`.
//!
//! Keys are remembered for a bounded window: at most `capacity` keys, none older
//! than `window`. A key reused with a different body is refused, not replayed. A
//! first request that was refused (503, 413, ...) leaves no trace, so its retry is
//! processed afresh.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use tokio::sync::watch;

use super::framing::Named;
use crate::ack::Verdict;
use crate::batch::SeqRange;
use crate::metrics::METRICS;

/// What the first request with a key achieved, as its retries see it.
#[derive(Debug, Clone)]
pub enum FirstRequest {
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
    Replay(watch::Receiver<FirstRequest>),
    /// The key was seen with a different body.
    Conflict,
}

#[derive(Debug, Clone)]
struct Entry {
    fingerprint: u64,
    progress: watch::Receiver<FirstRequest>,
}

pub struct Idempotency {
    entries: Cache<String, Entry>,
}

impl Idempotency {
    pub fn new(capacity: usize, window: Duration) -> Self {
        let entries = Cache::builder()
            .max_capacity(capacity as u64)
            .time_to_live(window)
            // Every new key is admitted and the least recently seen one goes: moka's
            // default (TinyLFU) may refuse a new key instead, and a key used once
            // would then not be remembered at all.
            .eviction_policy(EvictionPolicy::lru())
            .build();
        Self { entries }
    }

    pub fn begin(&self, key: &str, fingerprint: u64) -> Begin {
        // moka evicts in batches; catching up first holds the bound at `capacity`
        // plus the one key a request may add, as before.
        self.entries.run_pending_tasks();
        let mut begin = None;
        // Atomic per key: of two requests with a new key, one is first.
        self.entries.entry_by_ref(key).and_compute_with(|seen| {
            if let Some(entry) = seen.map(|seen| seen.into_value()) {
                if !matches!(*entry.progress.borrow(), FirstRequest::Abandoned) {
                    METRICS.idempotency_hits.inc();
                    begin = Some(if entry.fingerprint == fingerprint {
                        Begin::Replay(entry.progress.clone())
                    } else {
                        Begin::Conflict
                    });
                    return Op::Nop;
                }
            }
            let (tx, rx) = watch::channel(FirstRequest::Pending);
            begin = Some(Begin::First(Ticket { progress: tx }));
            Op::Put(Entry { fingerprint, progress: rx })
        });
        begin.expect("the closure always decides")
    }
}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency").field("keys", &self.entries.entry_count()).finish()
    }
}

/// The first request's handle on its key. Dropped before `accepted`, the key is
/// abandoned and a retry is processed afresh.
#[derive(Debug)]
pub struct Ticket {
    progress: watch::Sender<FirstRequest>,
}

impl Ticket {
    pub fn accepted(&self, admission: Arc<Admission>) {
        self.progress.send_replace(FirstRequest::Accepted(admission));
    }

    pub fn settled(self, verdict: Verdict) {
        self.progress.send_modify(|progress| {
            if let FirstRequest::Accepted(admission) = progress {
                *progress = FirstRequest::Settled(admission.clone(), verdict);
            }
        });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.progress.send_if_modified(|progress| {
            let pending = matches!(progress, FirstRequest::Pending);
            if pending {
                *progress = FirstRequest::Abandoned;
            }
            pending
        });
    }
}

/// A fingerprint of what makes two requests "the same": the decoded body and the options.
pub fn fingerprint(body: &[Bytes], content_type: Option<&str>, framing: Option<Named>, file: Option<&str>) -> u64 {
    let mut hasher = DefaultHasher::new();
    content_type.hash(&mut hasher);
    framing.hash(&mut hasher);
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
        assert!(matches!(*progress.borrow(), FirstRequest::Accepted(_)));
        drop(ticket);
        assert!(matches!(*progress.borrow(), FirstRequest::Accepted(_)), "accepted stays accepted");

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

    #[test]
    fn remembers_exactly_the_newest_keys() {
        let idem = Idempotency::new(100, Duration::from_secs(60));
        for key in 0..1000 {
            let Begin::First(ticket) = idem.begin(&key.to_string(), 0) else { panic!("{key} is new") };
            ticket.accepted(admission());
        }
        for key in (900..1000).rev() {
            assert!(matches!(idem.begin(&key.to_string(), 0), Begin::Replay(_)), "{key} is among the newest 100");
        }
        assert!(matches!(idem.begin("899", 0), Begin::First(_)), "899 is not");
    }

    #[test]
    fn a_key_begun_again_after_a_refusal_is_remembered_for_its_own_window() {
        let idem = Idempotency::new(2, Duration::from_secs(60));
        let Begin::First(refused) = idem.begin("r", 0) else { panic!() };
        drop(refused);
        let Begin::First(ticket) = idem.begin("r", 0) else { panic!("a refused first request leaves no trace") };
        ticket.accepted(admission());
        let Begin::First(other) = idem.begin("o", 0) else { panic!() };
        other.accepted(admission());
        assert!(matches!(idem.begin("r", 0), Begin::Replay(_)), "two keys fit");
    }

    #[test]
    fn one_of_two_racing_requests_is_first() {
        let idem = Arc::new(Idempotency::new(1000, Duration::from_secs(60)));
        for round in 0..200 {
            let key = format!("k{round}");
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    let (idem, key) = (idem.clone(), key.clone());
                    std::thread::spawn(move || match idem.begin(&key, 0) {
                        Begin::First(ticket) => {
                            ticket.accepted(admission());
                            1
                        }
                        _ => 0,
                    })
                })
                .collect();
            let firsts: u32 = racers.into_iter().map(|r| r.join().unwrap()).sum();
            assert_eq!(firsts, 1, "{key}");
        }
    }
}
