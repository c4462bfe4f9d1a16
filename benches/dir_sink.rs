//! `dir:` commit cost: a few small files (an fsync each), many (one syncfs), and one
//! large file (vectored writes of 64 KiB chunks). Runs on whatever file system holds
//! $TMPDIR.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spout_sidecar::ack::{BatchAck, Ledger};
use spout_sidecar::batch::{SealReason, SeqRange};
use spout_sidecar::buffer::Budget;
use spout_sidecar::encode::CommitFile;
use spout_sidecar::message::Payload;
use spout_sidecar::sink::dir::DirSink;
use spout_sidecar::sink::{Commit, Health, Sink, SinkContext};

/// A commit of `files`, its batch numbered past every earlier one: the sink names a
/// commit by its first seq and would take a repeated one for a batch it holds already.
fn commit(files: &[CommitFile], ledger: &Arc<Ledger>) -> Commit {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let bytes = files.iter().map(|f| f.data.len()).sum();
    let count = files.len() as u64;
    let first = NEXT.fetch_add(count, Ordering::Relaxed);
    let seqs = SeqRange { first, last: first + count - 1 };
    let ack = BatchAck::new(1, count, bytes, SealReason::Flush, seqs, Instant::now(), Vec::new(), ledger.clone());
    Commit { files: files.to_vec(), ack }
}

fn files(count: usize, bytes: usize) -> Vec<CommitFile> {
    let chunk = Bytes::from(vec![b'd'; bytes.min(64 << 10)]);
    (0..count)
        .map(|i| {
            let chunks = vec![chunk.clone(); bytes / chunk.len()];
            CommitFile { name: format!("m/{i:06}"), data: Payload::from(chunks) }
        })
        .collect()
}

fn commits(c: &mut Criterion) {
    let root = tempfile::tempdir().unwrap();
    let mut sink = DirSink::open(root.path().into()).unwrap();
    let ctx = SinkContext::new(Arc::new(Health::new("dir:bench".into())), false);
    let ledger = Ledger::new(Arc::new(Budget::new(1 << 30)));
    let mut group = c.benchmark_group("dir_commit");
    group.sample_size(10);
    let batches = [
        ("16_files_of_1KiB", files(16, 1024)),
        ("1000_files_of_1KiB", files(1000, 1024)),
        ("1_file_of_16MiB", files(1, 16 << 20)),
    ];
    for (name, batch) in batches {
        let bytes: u64 = batch.iter().map(|f| f.data.len()).sum();
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(name, |b| b.iter(|| sink.submit(commit(&batch, &ledger), &ctx)));
    }
    group.finish();
}

criterion_group!(benches, commits);
criterion_main!(benches);
