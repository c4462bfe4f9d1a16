//! Tar encoding of one batch (`tar::encode`): headers built, payload slices shared.
//! Measured per payload byte and per message, for small, medium and large messages.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use spout_sidecar::encode::tar::encode;
use spout_sidecar::encode::CommitFile;
use spout_sidecar::message::file_name;

/// A batch of about 8 MiB (the default --max-batch-bytes) of `size`-byte messages,
/// but at most the default 10,000 messages.
fn batch(size: usize) -> Vec<CommitFile> {
    let count = ((8 << 20) / size).clamp(1, 10_000);
    let payload = Bytes::from(vec![b'x'; size]);
    (0..count as u64)
        .map(|seq| CommitFile { name: file_name::default_name(seq), data: payload.clone().into() })
        .collect()
}

fn tar_encode(c: &mut Criterion) {
    for (label, size) in [("100B", 100), ("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let files = batch(size);
        let bytes: u64 = files.iter().map(|f| f.data.len()).sum();
        for (unit, throughput) in
            [("bytes", Throughput::Bytes(bytes)), ("messages", Throughput::Elements(files.len() as u64))]
        {
            let mut group = c.benchmark_group(format!("tar_encode/{unit}"));
            group.throughput(throughput);
            group.bench_with_input(BenchmarkId::from_parameter(label), &files, |b, files| {
                b.iter(|| encode(files, 1_700_000_000))
            });
            group.finish();
        }
    }
}

criterion_group!(benches, tar_encode);
criterion_main!(benches);
