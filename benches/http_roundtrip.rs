//! End-to-end in-process HTTP round trips: a keep-alive client on loopback TCP, the
//! sidecar's HTTP API, intake, budget and batcher, and a sink thread whose sink
//! commits instantly (so the figure is everything but the sink's own I/O).

use std::sync::Arc;

use clap::Parser;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hyper::Method;
use tokio::runtime::Runtime;

use loadtest::body::{encode, Framing};
use loadtest::client::{Conn, Endpoint};
use loadtest::msg::Generator;
use spout_sidecar::cancel::Cancel;
use spout_sidecar::config::Options;
use spout_sidecar::ingest::http;
use spout_sidecar::ingest::Transport;
use spout_sidecar::pipeline::Pipeline;
use spout_sidecar::sink::reader::Unreadable;
use spout_sidecar::sink::{Commit, Sink, SinkContext};

struct InstantSink;

impl Sink for InstantSink {
    fn describe(&self) -> String {
        "instant".into()
    }

    fn submit(&mut self, commit: Commit, ctx: &SinkContext) {
        let receipt = ctx.receipt("bench".into(), &commit.files);
        commit.ack.committed(receipt);
    }
}

/// The sidecar's pipeline behind its HTTP API on a loopback port, configured by
/// sidecar command-line `args`. Returns the address; runs until the runtime ends.
fn serve(runtime: &Runtime, args: &[&str]) -> Endpoint {
    let options = Options::try_parse_from(["spout-sidecar"].iter().chain(args)).unwrap();
    let _guard = runtime.enter();
    let pipeline = Pipeline::start(&options, Box::new(InstantSink), Vec::new()).unwrap();
    let reader = Arc::new(Unreadable { sink: "instant".into() });
    let api = Arc::new(pipeline.api(&options, None, reader));
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let endpoint = Endpoint::Tcp(listener.local_addr().unwrap());
    // Never cancelled: the server runs until the runtime ends.
    runtime.spawn(http::serve(api, Transport::Http, listener, None, Cancel::new()));
    endpoint
}

fn http_roundtrip(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let plain = serve(&runtime, &[]);
    // One message per batch: every wait=commit answer waits for a real seal and ack.
    let committing = serve(&runtime, &["--max-batch-messages", "1"]);
    let mut generator = Generator::new(1, 100);

    let mut group = c.benchmark_group("http_roundtrip");
    let cases = [
        ("single_100B", &plain, Framing::Raw, 1, "/messages"),
        ("ndjson_1000x100B", &plain, Framing::Ndjson, 1000, "/messages"),
        ("single_100B_wait_commit", &committing, Framing::Raw, 1, "/messages?wait=commit"),
    ];
    for (label, endpoint, framing, count, path) in cases {
        let mut conn = runtime.block_on(Conn::open(endpoint)).unwrap();
        let messages: Vec<_> = (0..count).map(|id| generator.message(id, 100)).collect();
        group.throughput(Throughput::Elements(count));
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                let body = encode(framing, &messages);
                let answer = runtime.block_on(conn.send(Method::POST, path, &framing.content_type(), body)).unwrap();
                assert!(answer.status.is_success(), "{}", answer.status);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, http_roundtrip);
criterion_main!(benches);
