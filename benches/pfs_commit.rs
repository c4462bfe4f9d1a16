//! Commits per second and MB/s of the `pfs://` sink into the fake pachd
//! (tests/it/pfs/fake_pachd.py, run with --discard so its memory stays flat), for
//! batches of 1 KiB x 10,000 files and of 8 MiB x 4 files. Batches are submitted
//! back to back, as the sink thread does under load, so the figure includes the
//! pipelining. The fake is Python: it, not the sink, is the bottleneck, so read
//! the figure as a floor. Run: `cargo bench --bench pfs_commit` with
//! `SPOUT_TEST_PYTHON` naming a Python that has tests/requirements.txt, such as the
//! virtualenv `cargo xtask test` makes: `SPOUT_TEST_PYTHON=target/test-venv/bin/python`.
//! Time per iteration is one commit.

// The tests' driver of the fake; the bench uses only `start_discarding` and `uri`.
#[allow(dead_code)]
#[path = "../tests/it/pfs/fake.rs"]
mod fake;

// Where the driver finds its Python (`SPOUT_TEST_PYTHON`), as in the tests; the
// driver names it `crate::support::python`, and uses only its `interpreter`.
#[allow(dead_code)]
#[path = "../tests/it/support/python.rs"]
mod python;
mod support {
    pub(crate) use super::python;
}

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use spout_sidecar::ack::{BatchAck, Ledger};
use spout_sidecar::batch::{SealReason, SeqRange};
use spout_sidecar::buffer::Budget;
use spout_sidecar::encode::CommitFile;
use spout_sidecar::sink::{Commit, Health, SinkContext, SinkSettings, SinkSpec};

fn batch(count: usize, size: usize) -> Vec<CommitFile> {
    let data = Bytes::from(vec![0x5a; count * size]);
    (0..count)
        .map(|i| CommitFile { name: format!("f-{i:05}"), data: data.slice(i * size..(i + 1) * size).into() })
        .collect()
}

fn commits_into_the_fake(c: &mut Criterion) {
    let pachd = fake::FakePachd::start_discarding();
    let spec: SinkSpec = pachd.uri("bench@master").parse().expect("the fake's URI");
    let mut sink = spec.open(&SinkSettings::default()).expect("the pfs sink");
    let ctx = SinkContext::new(Arc::new(Health::new(sink.describe())), false);
    let ledger = Ledger::new(Arc::new(Budget::new(u64::MAX)));
    let mut group = c.benchmark_group("pfs_commit");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));
    for (label, count, size) in [("1KiB_x_10000", 10_000, 1 << 10), ("8MiB_x_4", 4, 8 << 20)] {
        let files = batch(count, size);
        let bytes = (count * size) as u64;
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for no in 0..iters {
                    let ack = BatchAck::new(
                        no,
                        count as u64,
                        bytes,
                        SealReason::Bytes,
                        SeqRange { first: 0, last: count as u64 - 1 },
                        Instant::now(),
                        Vec::new(),
                        ledger.clone(),
                    );
                    sink.submit(Commit { files: files.clone(), ack }, &ctx);
                }
                while sink.settle(Duration::from_millis(20), &ctx) > 0 {}
                started.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, commits_into_the_fake);
criterion_main!(benches);
