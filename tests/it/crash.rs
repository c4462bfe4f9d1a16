//! Crash test: `kill -9` the sidecar at random moments while clients send with
//! `wait=commit` at full speed; every message that got a 200 must be in the sink
//! exactly once, and no message may appear twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::support::client::Connection;
use crate::support::crash::kill_9_while_sending;
use crate::support::sidecar::{dir_commits, Sidecar};

const ROUNDS: usize = 20;
const CLIENTS: usize = 4;

fn send_until_killed(addr: String, next_id: Arc<AtomicU64>, acked: Arc<Mutex<BTreeSet<u64>>>) {
    // The kill may come before this client connects (the machine is busy): then it
    // has nothing to send this round.
    let Ok(mut conn) = Connection::try_tcp(&addr) else { return };
    loop {
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let body = format!("message-{id:08}");
        let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            conn.request("POST", "/messages?wait=commit", &[("Content-Type", "text/plain")], body.as_bytes())
        }));
        match sent {
            Ok(response) if response.status == 200 => {
                acked.lock().unwrap().insert(id);
            }
            // The connection died with the sidecar: this client's round is over.
            _ => return,
        }
    }
}

#[test]
fn kill_9_never_loses_or_doubles_an_acknowledged_message() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("out");
    let sink = format!("dir:{}", root.display());
    let next_id = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    for _ in 0..ROUNDS {
        let mut sidecar = Sidecar::start(&["--sink", &sink, "--max-batch-age", "5ms"]);
        let (next_id, acked) = (next_id.clone(), acked.clone());
        kill_9_while_sending(&mut sidecar, CLIENTS, move |addr| {
            send_until_killed(addr, next_id.clone(), acked.clone())
        });
    }
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, _, bytes) in dir_commits(&root) {
        let text = String::from_utf8(bytes).unwrap();
        let id: u64 = text.strip_prefix("message-").unwrap().parse().unwrap();
        *seen.entry(id).or_default() += 1;
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(doubled.is_empty(), "messages committed more than once: {doubled:?}");
    let acked = acked.lock().unwrap();
    assert!(acked.len() > ROUNDS, "too few acknowledged messages ({}) to mean anything", acked.len());
    let lost: Vec<_> = acked.iter().filter(|id| !seen.contains_key(id)).collect();
    assert!(lost.is_empty(), "acknowledged with 200 but not in the sink: {lost:?}");
}
