//! Writing 1 MiB payloads into a pipe that a reader thread drains, as the `fifo:`
//! sink does: copied with `writev`, and lent with `vmsplice` (what the sink does with
//! slices of 16 KiB or more, since it keeps them until the reader has read them).
//! The pipe is grown to 1 MiB as the sink grows it; the payloads come in 64 KiB
//! slices, as hyper hands a body over.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rustix::pipe::{pipe_with, PipeFlags};
use spout_sidecar::sink::vectored::{self, Cursor};

const MESSAGES: usize = 16;
const MESSAGE: usize = 1 << 20;
const SLICE: usize = 64 << 10;

/// The write end of a grown, non-blocking pipe, and the thread that reads it to EOF.
fn drained_pipe() -> (File, JoinHandle<u64>) {
    let (read, write) = pipe_with(PipeFlags::CLOEXEC).unwrap();
    let write = File::from(write);
    rustix::fs::fcntl_setfl(&write, rustix::fs::OFlags::NONBLOCK).unwrap();
    vectored::grow_pipe(write.as_fd()).unwrap();
    let reader = std::thread::spawn(move || {
        let (mut read, mut buf, mut total) = (File::from(read), vec![0u8; 256 << 10], 0u64);
        loop {
            match read.read(&mut buf).unwrap() {
                0 => return total,
                n => total += n as u64,
            }
        }
    });
    (write, reader)
}

/// Calls `write` until it has written everything, waiting for room whenever the pipe
/// is full.
fn write_all(pipe: &mut File, mut write: impl FnMut(&mut File, &mut Cursor) -> io::Result<()>) {
    let mut at = Cursor::default();
    loop {
        match write(pipe, &mut at) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                vectored::poll_writable(pipe.as_fd(), true, Duration::from_secs(1)).unwrap();
            }
            Err(e) => panic!("writing the pipe: {e}"),
        }
    }
}

fn pipe_write(c: &mut Criterion) {
    // Sixteen messages of their own, 16 MiB: more than a cache holds, as a batch is.
    // Outlives the pipe: lent pages must stay as they are until they are read.
    let chunks: Vec<Bytes> = (0..MESSAGES)
        .flat_map(|m| {
            let message = Bytes::from(vec![b'a' + m as u8; MESSAGE]);
            (0..MESSAGE / SLICE).map(move |i| message.slice(i * SLICE..(i + 1) * SLICE))
        })
        .collect();
    let shared = vec![true; chunks.len()];
    let (mut pipe, reader) = drained_pipe();
    let mut group = c.benchmark_group("pipe_write");
    group.throughput(Throughput::Bytes((MESSAGES * MESSAGE) as u64));
    group.bench_function("copied/16x1MiB", |b| {
        b.iter(|| write_all(&mut pipe, |p, at| vectored::write_from(p, &chunks, at)))
    });
    group.bench_function("lent/16x1MiB", |b| {
        b.iter(|| write_all(&mut pipe, |p, at| vectored::write_lending(p, &chunks, &shared, at)))
    });
    group.finish();
    drop(pipe);
    assert_eq!(reader.join().unwrap() % (MESSAGES * MESSAGE) as u64, 0, "the reader read whole rounds");
}

criterion_group!(benches, pipe_write);
criterion_main!(benches);
