//! Decoding throughput of each body framing, on a 4 MiB body arriving in 64 KiB
//! chunks as hyper hands it over (json-array holds the same messages as ndjson, its
//! baseline), and of the raw socket's incremental splitter.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spout_sidecar::ingest::framing::split::{Splitter, Unit};
use spout_sidecar::ingest::framing::{decode, Framing};

const BODY_BYTES: usize = 4 << 20;
const CHUNK_BYTES: usize = 64 << 10;
const MESSAGE_BYTES: usize = 100;

fn chunked(stream: &[u8]) -> Vec<Bytes> {
    stream.chunks(CHUNK_BYTES).map(Bytes::copy_from_slice).collect()
}

fn message(i: usize) -> Vec<u8> {
    format!("{{\"n\":{i:>10},\"pad\":\"{}\"}}", "x".repeat(MESSAGE_BYTES - 29)).into_bytes()
}

fn bodies() -> Vec<(&'static str, Framing, Vec<u8>)> {
    let count = BODY_BYTES / (MESSAGE_BYTES + 4);
    let messages: Vec<Vec<u8>> = (0..count).map(message).collect();
    let ndjson: Vec<u8> = messages.iter().flat_map(|m| m.iter().copied().chain([b'\n'])).collect();
    let frames: Vec<u8> =
        messages.iter().flat_map(|m| (m.len() as u32).to_be_bytes().into_iter().chain(m.iter().copied())).collect();
    // The same messages as one JSON array, as Fluent Bit's and Vector's json outputs send them.
    let json_array = [&b"["[..], &messages.join(&b',')[..], b"]"].concat();
    let boundary = "bench-boundary-1f2e3d";
    let mut multipart = Vec::new();
    for part in 0..64 {
        multipart.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"p\"; filename=\"f{part}\"\r\n\r\n")
                .as_bytes(),
        );
        multipart.extend_from_slice(&vec![b'm'; BODY_BYTES / 64]);
        multipart.extend_from_slice(b"\r\n");
    }
    multipart.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    vec![
        ("ndjson", Framing::Lines, ndjson),
        ("frames", Framing::Frames, frames),
        ("json-array", Framing::JsonArray, json_array),
        ("multipart", Framing::Multipart { boundary: boundary.into() }, multipart),
        ("whole", Framing::Whole, vec![b'w'; BODY_BYTES]),
    ]
}

fn http_bodies(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut group = c.benchmark_group("decode_body");
    for (name, framing, stream) in bodies() {
        let body = chunked(&stream);
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| runtime.block_on(decode(&framing, body.clone(), None, BODY_BYTES as u64)).unwrap().len())
        });
    }
    group.finish();
}

fn raw_stream(c: &mut Criterion) {
    let mut group = c.benchmark_group("raw_stream");
    for (name, unit, stream) in bodies().into_iter().filter_map(|(name, framing, stream)| match framing {
        Framing::Lines => Some((name, Unit::Line, stream)),
        Framing::Frames => Some((name, Unit::Frame, stream)),
        _ => None,
    }) {
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut splitter = Splitter::new(unit, 1 << 20);
                let mut buffer = BytesMut::with_capacity(CHUNK_BYTES);
                let mut count = 0;
                for read in stream.chunks(CHUNK_BYTES) {
                    buffer.extend_from_slice(read);
                    while let Some(message) = splitter.next(&mut buffer, false).unwrap() {
                        count += message.len();
                    }
                }
                count
            })
        });
    }
    group.finish();
}

criterion_group!(benches, http_bodies, raw_stream);
criterion_main!(benches);
