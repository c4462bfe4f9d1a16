//! Crash test: `kill -9` the sidecar at random moments while clients send with
//! `wait=commit` at full speed; every message that got a 200 must be in the sink
//! exactly once, and no message may appear twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::client::Connection;
use crate::support::sidecar::{dir_commits, Sidecar};

const ROUNDS: usize = 20;
const CLIENTS: usize = 4;

/// A cheap varying number for the kill moments; no RNG crate for a test.
fn pseudo_random(bound: u64) -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    nanos.wrapping_mul(6364136223846793005).rotate_right(17) % bound
}

fn send_until_killed(addr: String, next_id: Arc<AtomicU64>, acked: Arc<Mutex<BTreeSet<u64>>>) {
    let Ok(stream) = std::net::TcpStream::connect(&addr) else { return };
    drop(stream);
    let mut conn = Connection::tcp(&addr);
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
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (addr, next_id, acked) = (sidecar.addr.clone(), next_id.clone(), acked.clone());
                std::thread::spawn(move || send_until_killed(addr, next_id, acked))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50 + pseudo_random(300)));
        sidecar.child.kill().unwrap();
        sidecar.child.wait().unwrap();
        for client in clients {
            client.join().unwrap();
        }
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
