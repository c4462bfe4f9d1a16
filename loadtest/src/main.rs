//! The `loadtest` command line.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use loadtest::client::Endpoint;
use loadtest::curves::{self, CurvesOptions};
use loadtest::report::{self, Report};
use loadtest::scenario::{Harness, Scenario};
use loadtest::suite::{self, SuiteOptions};
use loadtest::{baselines, run};

/// Load generator for spout-sidecar.
///
/// Starts the sidecar (built with `cargo build --release` unless --sidecar names a
/// binary) with the scenario's sink and batching options, drives it over HTTP on
/// TCP or a Unix socket, or its raw socket, in any framing, in a closed loop (fixed
/// concurrency) or an open loop (fixed rate; latency counted from when each request
/// was due), then flushes, stops it, reads back everything the sink committed (a
/// dir: tree, or a FIFO it reads as a Pachyderm worker would) and checks that every
/// accepted message is there exactly once with its bytes unchanged. A run that
/// loses, duplicates or damages a message exits non-zero, whatever its speed.
///
/// Reports requests/s, messages/s, MB/s, latency percentiles and the sidecar's peak
/// RSS as a table (and as JSON with --json).
#[derive(Parser)]
#[command(version, about, long_about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    #[command(flatten)]
    harness: Harness,
}

#[derive(Subcommand)]
enum Command {
    /// One scenario against the sidecar.
    ///
    /// Example: 1,000 x 100 B NDJSON messages per request into a dir: sink, one file
    /// per batch:
    ///   loadtest run --framing ndjson --batch 1000 --sink dir --layout batch
    Run(Box<Scenario>),

    /// Every target with its baseline; prints ratios and PASS/MISS.
    ///
    /// Exits non-zero when a message is lost or damaged in any scenario (with
    /// --strict, also when a target is missed). For a quick check: --duration 2s
    /// --overload-duration 3s.
    Suite(SuiteOptions),

    /// Curves of how cost grows: throughput and p99 against message size and
    /// against connections, each point beside the bare hyper server with the same
    /// load, and peak RSS against a stalled reader's backlog beside the budget.
    ///
    /// Every sidecar point is read back and checked. Write the points with --json,
    /// then draw them with `loadtest plot`. Whole sweep: about 5 minutes at the
    /// default --duration; --quick for a check.
    Curves(CurvesOptions),

    /// Draws the JSON of `curves` as PNG charts, one per curve.
    Plot {
        /// The JSON `loadtest curves --json` wrote.
        curves: std::path::PathBuf,
        /// Directory for the PNGs (created).
        #[arg(long, default_value = "loadtest/results/curves")]
        out: std::path::PathBuf,
        /// TrueType font for the charts' text.
        #[arg(long, default_value = loadtest::plot::DEFAULT_FONT)]
        font: std::path::PathBuf,
    },

    /// A baseline alone.
    #[command(subcommand)]
    Baseline(Baseline),

    /// The HTTP-ceiling server: reads each request's body and answers 202, nothing
    /// else. The HTTP baseline starts it; it runs until killed.
    #[command(hide = true)]
    BareServer {
        /// TCP address to serve on (`tcp:HOST:PORT`).
        #[arg(long)]
        listen: Endpoint,
        /// Also serve on this Unix socket.
        #[arg(long)]
        socket: Option<std::path::PathBuf>,
        /// Hold every answer to the next tick of a clock ticking this often, as
        /// `wait=commit` answers wait for their batch to commit.
        #[arg(long, value_parser = humantime::parse_duration)]
        answer_every: Option<std::time::Duration>,
    },
}

#[derive(Subcommand)]
enum Baseline {
    /// The HTTP ceiling: the scenario's load against a bare hyper server that reads
    /// each body and answers 202 (sink and batching options are ignored, but for
    /// --wait-commit: answers then wait for a clock ticking every --max-batch-age).
    Http(Box<Scenario>),

    /// The pipe ceiling: large writes into a named pipe, drained by a reader.
    Pipe {
        /// Bytes per write.
        #[arg(long, default_value = "1MiB", value_parser = parse_size)]
        chunk: u64,
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Which core writes the pipe (the reader runs on the harness's).
        #[arg(long, value_enum, default_value = "server")]
        writer: baselines::PipeWriter,
    },

    /// The Pachyderm docs' spout: baselines/tarfile_spout.py writing each message
    /// as its own tar archive (commit) into a named pipe.
    Python {
        /// Message size in bytes.
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>().map(|b| b.as_u64()).map_err(|e| format!("`{s}`: {e}"))
}

fn write_json(harness: &Harness, value: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = &harness.json {
        std::fs::write(path, serde_json::to_vec_pretty(value)?)?;
    }
    Ok(())
}

fn print_reports(harness: &Harness, mut reports: Vec<Report>) -> anyhow::Result<bool> {
    let pinning = harness.pinning();
    for r in &mut reports {
        r.pinning = Some(pinning.clone());
    }
    println!("{}pinning: {pinning}", report::table(&reports));
    // An open loop that could not keep its schedule counts its own queueing in the
    // latency above: say how much, so it is not read as the server's.
    for r in &reports {
        if let Some(lag) = r.send_lag.filter(|l| l.p99_ms >= 1.0) {
            println!(
                "{}: requests went out late by p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                r.name, lag.p50_ms, lag.p99_ms, lag.max_ms
            );
        }
    }
    for r in reports.iter().filter(|r| !r.ok) {
        for e in r.errors.iter().chain(r.verify.iter().flat_map(|v| &v.errors)) {
            eprintln!("{}: {e}", r.name);
        }
    }
    write_json(harness, &reports)?;
    Ok(reports.iter().all(|r| r.ok))
}

async fn main_async(cli: Cli) -> anyhow::Result<bool> {
    let harness = &cli.harness;
    match cli.command {
        Command::Run(scenario) => print_reports(harness, vec![run::run(&scenario, harness).await?]),
        Command::Baseline(Baseline::Http(scenario)) => {
            print_reports(harness, vec![baselines::http_ceiling(&scenario, harness).await?])
        }
        Command::Baseline(Baseline::Pipe { chunk, duration, writer }) => {
            let report = baselines::pipe_ceiling("pipe-ceiling", chunk as usize, duration, writer, harness)?;
            print_reports(harness, vec![report])
        }
        Command::Baseline(Baseline::Python { size, duration }) => {
            print_reports(harness, vec![baselines::python_tarfile("python-tarfile", size, duration, harness)?])
        }
        Command::BareServer { listen, socket, answer_every } => {
            let answering = answer_every.map(baselines::Answering::every).unwrap_or_default();
            let tcp = {
                let answering = answering.clone();
                tokio::spawn(async move { baselines::serve_bare(&listen, answering).await })
            };
            if let Some(path) = socket {
                baselines::serve_bare(&Endpoint::Unix(path), answering).await?;
            }
            tcp.await??;
            Ok(true)
        }
        Command::Curves(options) => {
            let result = curves::run_curves(&options, harness).await;
            for failure in &result.failures {
                eprintln!("FAILED {failure}");
            }
            write_json(harness, &result)?;
            Ok(result.failures.is_empty())
        }
        Command::Plot { curves, out, font } => {
            for png in loadtest::plot::plot(&curves, &out, &font)? {
                println!("{}", png.display());
            }
            Ok(true)
        }
        Command::Suite(options) => {
            let result = suite::run_suite(&options, harness).await;
            println!("machine: {} cores, {}; {}\n", result.machine.cores, result.machine.cpu, result.pinning);
            print!("{}\n{}", report::table(&result.reports), suite::targets_table(&result.targets));
            for failure in &result.failures {
                eprintln!("FAILED {failure}");
            }
            write_json(harness, &result)?;
            let missed = result.targets.iter().any(|t| t.pass == Some(false));
            Ok(result.failures.is_empty() && !(options.strict && missed))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the runtime starts its threads, so that they and every program the
    // harness starts inherit the client cores (servers are moved to theirs).
    if !matches!(cli.command, Command::BareServer { .. }) {
        if let Err(e) = cli.harness.pinning().pin_harness() {
            eprintln!("loadtest: {e:#}");
            return ExitCode::from(2);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match runtime.block_on(main_async(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}
