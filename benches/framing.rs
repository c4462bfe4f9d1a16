//! Each framing decoder on a body of 1,000 messages of 100 bytes that arrived in
//! 16 KiB reads (so messages straddle chunks, as they do off a socket).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use spout_sidecar::ingest::framing::{decode, Framing};

const MESSAGES: usize = 1000;
const SIZE: usize = 100;
const BOUNDARY: &str = "bench-boundary";

fn body(framing: &Framing) -> Vec<u8> {
    let message = [b'm'; SIZE];
    let mut body = Vec::new();
    match framing {
        Framing::Whole => body.extend_from_slice(&[b'm'; SIZE * MESSAGES]),
        Framing::Lines => (0..MESSAGES).for_each(|_| {
            body.extend_from_slice(&message);
            body.push(b'\n');
        }),
        Framing::Frames => (0..MESSAGES).for_each(|_| {
            body.extend_from_slice(&(SIZE as u32).to_be_bytes());
            body.extend_from_slice(&message);
        }),
        Framing::Multipart { boundary } => {
            for i in 0..MESSAGES {
                body.extend_from_slice(
                    format!(
                        "--{boundary}\r\nContent-Disposition: form-data; name=\"m\"; filename=\"m-{i}\"\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(&message);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        }
    }
    body
}

fn chunks(body: &[u8]) -> Vec<Bytes> {
    body.chunks(16 << 10).map(Bytes::copy_from_slice).collect()
}

fn framing(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let framings = [
        ("whole", Framing::Whole),
        ("ndjson", Framing::Lines),
        ("frames", Framing::Frames),
        ("multipart", Framing::Multipart { boundary: BOUNDARY.into() }),
    ];
    for (unit, per_message) in [("bytes", false), ("messages", true)] {
        let mut group = c.benchmark_group(format!("framing/{unit}"));
        for (label, framing) in &framings {
            let body = chunks(&body(framing));
            let count = if *framing == Framing::Whole { 1 } else { MESSAGES };
            group.throughput(if per_message {
                Throughput::Elements(count as u64)
            } else {
                Throughput::Bytes(body.iter().map(|c| c.len() as u64).sum())
            });
            group.bench_with_input(BenchmarkId::from_parameter(label), &body, |b, body| {
                b.iter(|| {
                    let messages = runtime.block_on(decode(framing, body.clone(), None, 1 << 20)).unwrap();
                    assert_eq!(messages.len(), count);
                    messages
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, framing);
criterion_main!(benches);
