//! One crash round: clients send to a sidecar until it is killed with SIGKILL at a
//! random moment 50 to 350 ms in.

use std::time::Duration;

use super::sidecar::Sidecar;

/// Runs `clients` threads of `send(addr)` against `sidecar`, kills it mid-stream and
/// waits for the clients, which must return once their connection dies.
pub fn kill_9_while_sending(sidecar: &mut Sidecar, clients: usize, send: impl Fn(String) + Clone + Send + 'static) {
    let clients: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, send) = (sidecar.addr.clone(), send.clone());
            std::thread::spawn(move || send(addr))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(fastrand::u64(50..350)));
    sidecar.child.kill().unwrap();
    sidecar.child.wait().unwrap();
    for client in clients {
        client.join().unwrap();
    }
}
