//! The batcher alone: requests pushed into the open batch, batches sealed by count
//! and handed to a sink thread that commits them at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use spout_sidecar::ack::{Ledger, Receipt};
use spout_sidecar::batch::{Batcher, Policy};
use spout_sidecar::buffer::Budget;
use spout_sidecar::message::{Incoming, Sequencer};

fn request(messages: usize) -> Vec<Incoming> {
    let payload = Bytes::from_static(&[b'x'; 100]);
    (0..messages).map(|_| Incoming { name: None, payload: payload.clone().into(), line: true, origin: None }).collect()
}

fn batcher(c: &mut Criterion) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let ledger = Ledger::new(Arc::new(Budget::new(u64::MAX / 2)));
    let policy = Policy { max_bytes: 8 << 20, max_messages: 10_000, max_age: Duration::from_secs(3600) };
    let batcher = Batcher::new(policy, Sequencer::starting_at(1), ledger, tx);
    // Settling is part of a batch's life: the budget and waiters are released there.
    let sink = std::thread::spawn(move || {
        for batch in rx {
            batch.ack.committed(Receipt { commit: String::new(), batch_file: None, objects: None });
        }
    });

    let mut group = c.benchmark_group("batcher/push");
    for per_request in [1usize, 1000] {
        group.throughput(Throughput::Elements(per_request as u64));
        group.bench_with_input(BenchmarkId::new("messages_per_request", per_request), &per_request, |b, &n| {
            b.iter_batched(|| request(n), |messages| batcher.push(messages, None), criterion::BatchSize::SmallInput)
        });
    }
    group.finish();
    batcher.close();
    sink.join().unwrap();
}

criterion_group!(benches, batcher);
criterion_main!(benches);
