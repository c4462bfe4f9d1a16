//! The `s3://` sink into a local S3 server (`moto_server`, tests/requirements.txt)
//! against a baseline measured in the same run: the same bytes PUT with the same
//! client crate (`object_store`) and nothing else, 16 requests in flight as the
//! sink allows. Batches go to the sink back to back, as the sink thread hands them
//! over under load. moto is Python: it is the bottleneck of both figures, which is
//! why the ratio, not the absolute figure, is the result.
//!
//! Run pinned, the server on CPU 0 and this process on CPU 1:
//! `taskset -c 1 cargo bench --bench object_s3` (moto is started on CPU 0 when
//! `taskset` exists).

#[path = "../tests/it/support/python.rs"]
pub mod python;
#[path = "../tests/it/object/servers.rs"]
mod servers;
/// `servers` finds the interpreter as `crate::support::python`, as in the tests.
mod support {
    pub use super::python;
}

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use spout_sidecar::ack::{BatchAck, Ledger};
use spout_sidecar::batch::{SealReason, SeqRange};
use spout_sidecar::buffer::Budget;
use spout_sidecar::encode::{tar, CommitFile};
use spout_sidecar::sink::object::{Compression, ObjectFormat};
use spout_sidecar::sink::{Commit, Health, Sink, SinkContext, SinkSettings, SinkSpec};

const BUCKET: &str = "bench";
const IN_FLIGHT: usize = 16;

struct Case {
    label: &'static str,
    batches: usize,
    files: usize,
    size: usize,
    format: ObjectFormat,
}

fn batch(files: usize, size: usize, salt: usize) -> Vec<CommitFile> {
    let data = Bytes::from(vec![(salt % 251) as u8; files * size]);
    (0..files)
        .map(|i| CommitFile { name: format!("f-{i:05}"), data: data.slice(i * size..(i + 1) * size).into() })
        .collect()
}

/// Seconds the sink takes to commit `case`'s batches.
fn through_the_sink(endpoint: &str, case: &Case, run: usize) -> f64 {
    let uri = format!("s3://{endpoint}/{BUCKET}/sink-{}-{run}", case.label);
    let spec: SinkSpec = uri.parse().unwrap();
    let settings = SinkSettings { object_format: case.format, compression: None::<Compression>, ..Default::default() };
    let mut sink: Box<dyn Sink> = spec.open(&settings).unwrap();
    let ctx = SinkContext::new(Arc::new(Health::new(sink.describe())), false);
    let ledger = Ledger::new(Arc::new(Budget::new(u64::MAX)));
    let batches: Vec<_> = (0..case.batches).map(|i| batch(case.files, case.size, i)).collect();
    let started = Instant::now();
    for (no, files) in batches.into_iter().enumerate() {
        let bytes = (case.files * case.size) as u64;
        let ack = BatchAck::new(
            no as u64,
            case.files as u64,
            bytes,
            SealReason::Bytes,
            SeqRange { first: 0, last: case.files as u64 - 1 },
            Instant::now(),
            vec![],
            ledger.clone(),
        );
        sink.submit(Commit { files, ack }, &ctx);
    }
    while sink.settle(Duration::from_millis(50), &ctx) > 0 {}
    started.elapsed().as_secs_f64()
}

/// Seconds the bare client takes to PUT the same objects (for `tar`, the same
/// archive per batch).
fn bare_client(endpoint: &str, case: &Case, run: usize) -> f64 {
    let store = Arc::new(servers::reader(endpoint, BUCKET));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let objects: Vec<(Path, PutPayload)> = (0..case.batches)
        .flat_map(|b| {
            let files = batch(case.files, case.size, b);
            let prefix = format!("bare-{}-{run}/{b}", case.label);
            match case.format {
                ObjectFormat::Files => files
                    .into_iter()
                    .map(|f| (Path::from(format!("{prefix}/{}", f.name)), f.data.chunks().iter().cloned().collect()))
                    .collect::<Vec<_>>(),
                ObjectFormat::Tar => {
                    let payload: PutPayload = tar::encode_now(&files).chunks.into_iter().collect();
                    vec![(Path::from(format!("{prefix}/batch.tar")), payload)]
                }
            }
        })
        .collect();
    let started = Instant::now();
    runtime.block_on(async {
        stream::iter(objects)
            .map(|(key, payload)| {
                let store = store.clone();
                async move { store.put(&key, payload).await.unwrap() }
            })
            .buffer_unordered(IN_FLIGHT)
            .for_each(|_| async {})
            .await;
    });
    started.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let taskset = std::process::Command::new("taskset").arg("-V").output().is_ok();
    let moto = servers::Moto::start_on(taskset.then_some("0"));
    moto.create_bucket(BUCKET);
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_REGION", servers::REGION);
    std::env::set_var("AWS_ALLOW_HTTP", "true");
    let endpoint = moto.endpoint();
    let cases = [
        Case { label: "1MiB_files", batches: 8, files: 8, size: 1 << 20, format: ObjectFormat::Files },
        Case { label: "100B_files", batches: 2, files: 1000, size: 100, format: ObjectFormat::Files },
        Case { label: "100B_tar", batches: 20, files: 10_000, size: 100, format: ObjectFormat::Tar },
    ];
    println!("| case | messages | sink msg/s | bare client msg/s | sink MB/s | bare MB/s | ratio |");
    println!("|---|---|---|---|---|---|---|");
    for case in &cases {
        let messages = (case.batches * case.files) as f64;
        let bytes = messages * case.size as f64;
        // Alternate, best of three each, so drift in a shared machine hits both.
        let (mut sink, mut bare) = (f64::MAX, f64::MAX);
        for run in 0..3 {
            bare = bare.min(bare_client(&endpoint, case, run));
            sink = sink.min(through_the_sink(&endpoint, case, run));
        }
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.2} |",
            case.label,
            messages,
            messages / sink,
            messages / bare,
            bytes / sink / 1e6,
            bytes / bare / 1e6,
            bare / sink
        );
    }
}
