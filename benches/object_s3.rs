//! The `s3://` sink into a local S3 server (`moto_server`, tests/requirements.txt)
//! against a baseline measured in the same run: the same bytes PUT with the same
//! client crate (`object_store`) and nothing else, 16 requests in flight as the
//! sink allows. Batches go to the sink back to back, as the sink thread hands them
//! over under load. moto is Python: it is the bottleneck of both figures, which is
//! why the ratio, not the absolute figure, is the result.
//!
//! Each arm also reports the CPU time it took, its own (all of this process's
//! threads) and moto's, from `/proc/PID/stat`: moto busy for most of an arm's wall
//! time means the store, not the client, set the pace, and then the client's CPU
//! per byte is the figure that compares the two.
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
use spout_sidecar::metrics::METRICS;
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

/// One arm's run: wall seconds, and CPU seconds of this process and of moto.
#[derive(Clone, Copy)]
struct Measured {
    wall: f64,
    client_cpu: f64,
    server_cpu: f64,
}

/// User plus system CPU seconds a process has used, all its threads.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("(comm)") + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// Wall and CPU clocks started together.
struct Clock {
    moto: String,
    started: Instant,
    client: f64,
    server: f64,
}

impl Clock {
    fn start(moto: u32) -> Self {
        let moto = moto.to_string();
        let (client, server) = (cpu_seconds("self"), cpu_seconds(&moto));
        Self { started: Instant::now(), client, server, moto }
    }

    fn stop(self) -> Measured {
        Measured {
            wall: self.started.elapsed().as_secs_f64(),
            client_cpu: cpu_seconds("self") - self.client,
            server_cpu: cpu_seconds(&self.moto) - self.server,
        }
    }
}

/// How the sink commits `case`'s batches.
fn through_the_sink(endpoint: &str, moto: u32, case: &Case, run: usize) -> Measured {
    let uri = format!("s3://{endpoint}/{BUCKET}/sink-{}-{run}", case.label);
    let spec: SinkSpec = uri.parse().unwrap();
    let settings = SinkSettings { object_format: case.format, compression: None::<Compression>, ..Default::default() };
    let mut sink: Box<dyn Sink> = spec.open(&settings).unwrap();
    let ctx = SinkContext::new(Arc::new(Health::new(sink.describe())), false);
    let ledger = Ledger::new(Arc::new(Budget::new(u64::MAX)));
    let batches: Vec<_> = (0..case.batches).map(|i| batch(case.files, case.size, i)).collect();
    let puts = || METRICS.object_requests.with_label_values(&["put", "ok"]).get();
    let (puts_before, retries_before) = (puts(), METRICS.sink_retries.get());
    let clock = Clock::start(moto);
    for (no, files) in batches.into_iter().enumerate() {
        let bytes = (case.files * case.size) as u64;
        // Each batch its own sequence numbers, so its own commit id and keys, as the
        // sidecar numbers them: batches sharing keys would overwrite each other.
        let first = (no * case.files) as u64;
        let ack = BatchAck::new(
            no as u64,
            case.files as u64,
            bytes,
            SealReason::Bytes,
            SeqRange { first, last: first + case.files as u64 - 1 },
            Instant::now(),
            vec![],
            ledger.clone(),
        );
        sink.submit(Commit { files, ack }, &ctx);
    }
    while sink.settle(Duration::from_millis(50), &ctx) > 0 {}
    let measured = clock.stop();
    // A retried request sends its bytes again: that run measured something else.
    let objects = match case.format {
        ObjectFormat::Files => case.files,
        ObjectFormat::Tar => 1,
    };
    let expected = (case.batches * (objects + 1)) as u64;
    assert_eq!(
        (puts() - puts_before, METRICS.sink_retries.get() - retries_before),
        (expected, 0),
        "(PUTs, retried attempts) of {} run {run}",
        case.label
    );
    measured
}

/// How the bare client PUTs the same objects (for `tar`, the same archive per
/// batch, encoded before the clock starts).
fn bare_client(endpoint: &str, moto: u32, case: &Case, run: usize) -> Measured {
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
    let clock = Clock::start(moto);
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
    clock.stop()
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
    // `object_s3 100B_tar` runs the cases whose label holds `100B_tar`.
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let cases = cases.iter().filter(|c| only.is_empty() || only.iter().any(|o| c.label.contains(o.as_str())));
    let mut rounds = Vec::new();
    println!("| case | messages | sink msg/s | bare client msg/s | sink MB/s | bare MB/s | ratio |");
    println!("|---|---|---|---|---|---|---|");
    for case in cases {
        let messages = (case.batches * case.files) as f64;
        let bytes = messages * case.size as f64;
        // Alternate, best of three each, so drift in a shared machine hits both.
        let fastest = |a: Measured, b: Measured| if a.wall <= b.wall { a } else { b };
        let far = Measured { wall: f64::MAX, client_cpu: 0.0, server_cpu: 0.0 };
        let (mut sink, mut bare) = (far, far);
        for run in 0..3 {
            let b = bare_client(&endpoint, moto.pid(), case, run);
            let s = through_the_sink(&endpoint, moto.pid(), case, run);
            rounds.push((case.label, run, bytes, s, b));
            (sink, bare) = (fastest(sink, s), fastest(bare, b));
        }
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.2} |",
            case.label,
            messages,
            messages / sink.wall,
            messages / bare.wall,
            bytes / sink.wall / 1e6,
            bytes / bare.wall / 1e6,
            bare.wall / sink.wall
        );
    }
    println!();
    println!("| case | run | ratio | sink s | bare s | sink CPU ms/MB | bare CPU ms/MB | moto busy, sink | moto busy, bare |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (label, run, bytes, sink, bare) in rounds {
        let per_mb = |m: Measured| m.client_cpu * 1e3 / (bytes / 1e6);
        let busy = |m: Measured| format!("{:.0}%", 100.0 * m.server_cpu / m.wall);
        println!(
            "| {label} | {run} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {} | {} |",
            bare.wall / sink.wall,
            sink.wall,
            bare.wall,
            per_mb(sink),
            per_mb(bare),
            busy(sink),
            busy(bare)
        );
    }
}
