//! Options → wiring: builds the pipeline (intake → batcher → sink thread), starts
//! the listeners, runs until a signal or the supervised command ends, then drains.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::time::Instant;

use futures_util::future::BoxFuture;
use spout_sidecar::config::{Listen, Options};
use spout_sidecar::ingest::source::{CheckpointError, Prepared, SourceError};
use spout_sidecar::listeners::{BindError, Listeners};
use spout_sidecar::pipeline::{Pipeline, StartError};
use spout_sidecar::shutdown::{self, Signals};
use spout_sidecar::sink::{fifo_holder, SinkSettings};
use spout_sidecar::spool::{self, SpoolError};
use spout_sidecar::supervisor::{self, Endpoints};

/// Why the sidecar could not start or run: printed as `spout-sidecar: ...`, exit 2.
#[derive(Debug, thiserror::Error)]
enum Fatal {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot read --auth-token-file {}: {source}", path.display())]
    TokenFile { path: PathBuf, source: std::io::Error },
    #[error("--auth-token-file {} is empty", .0.display())]
    EmptyTokenFile(PathBuf),
    #[error(
        "--listen {0} is reachable from other hosts: give --auth-token-file, or --allow-unauthenticated if \
         anyone who can reach it may write to your repo"
    )]
    Exposed(String),
    #[error("cannot open sink {sink}: {source}")]
    OpenSink { sink: String, source: std::io::Error },
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot open the spool: {0}")]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Checkpoints(#[from] CheckpointError),
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("waiting for {program} failed: {source}")]
    Wait { program: String, source: std::io::Error },
}

fn main() -> ExitCode {
    if std::env::var_os(fifo_holder::HOLDER_ENV).is_some() {
        return fifo_holder::run();
    }
    let options = Options::parse();
    init_logging(&options.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return fatal(Fatal::Runtime(error)),
    };
    match runtime.block_on(run(options)) {
        Ok(code) => code,
        Err(error) => fatal(error),
    }
}

fn fatal(error: Fatal) -> ExitCode {
    eprintln!("spout-sidecar: {error}");
    ExitCode::from(2)
}

fn init_logging(filter: &str) {
    let parsed =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The AMQP client logs every dropped connection at ERROR, several lines each; the
    // amqp:// source logs each change once itself. A filter naming lapin shows them.
    let filter = match filter.contains("lapin") {
        true => parsed,
        false => parsed.add_directive("lapin=off".parse().expect("a valid directive")),
    };
    // Logs go to stderr: stdout may be the `stdout:` sink's tar stream.
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).init();
}

async fn run(options: Options) -> Result<ExitCode, Fatal> {
    let mut signals = Signals::install().map_err(Fatal::Signals)?;
    let token = read_token(options.auth_token_file.as_deref())?;
    check_exposure(&options, token.is_some())?;

    let spec = options.sink.resolve();
    let settings = SinkSettings {
        pachd_token_file: options.pachd_token_file.clone(),
        pachd_token: options.pachd_token.clone(),
        object_format: options.object_format,
        compression: options.compression,
        writer: options.spool_dir.as_deref().map(spool::writer_id).transpose()?,
        fifo_holder: !options.no_fifo_holder,
        spool_dir: options.spool_dir.clone(),
    };
    let sink = spec.open(&settings).map_err(|source| Fatal::OpenSink { sink: spec.to_string(), source })?;
    let reader = spec.reader(&settings);
    let (sources, checkpoints) = Prepared::read(&options.sources, &*reader, &options.source_replica()).await?;
    let pipeline = Pipeline::start(&options, sink, checkpoints).map_err(Fatal::Start)?;
    let api = Arc::new(pipeline.api(&options, token, reader.clone()));
    let Pipeline { intake, health, shutdown: stop, sink_name, sink_thread } = pipeline;
    let mut listeners = Listeners::bind(&options, api).await?;
    listeners.endpoints.stdout_is_sink = spec.writes_stdout();
    let mut sources = Sources(Some(sources.run(&intake, &reader, &stop.drain, options.max_message_bytes)));
    tracing::info!(sink = %sink_name, "spout-sidecar {} ready", env!("CARGO_PKG_VERSION"));

    let exit = serve_until_done(&options, &mut signals, &listeners.endpoints, &mut sources).await?;
    listeners.stop_raw(options.shutdown_timeout).await;
    let drained = shutdown::drain(&stop, &intake, options.shutdown_timeout).await;
    listeners.stop_http();
    // The sources acknowledge what the last commits hold as their verdicts come.
    match tokio::time::timeout(shutdown::ANSWER_GRACE, sources.ended()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!("{error}"),
        Err(_) => tracing::warn!("the sources had not ended {:?} after the drain", shutdown::ANSWER_GRACE),
    }
    match drained {
        Ok(()) => {
            // Everything settled, so the thread is ending; the bound is for a sink
            // stuck in a call that ignores giving up.
            let sink_done = tokio::task::spawn_blocking(move || sink_thread.join());
            let joined = tokio::time::timeout(options.shutdown_timeout, sink_done).await;
            listeners.close_http(Instant::now() + shutdown::ANSWER_GRACE).await;
            if joined.is_err() {
                tracing::error!("the sink thread did not end within --shutdown-timeout after the drain");
                return Ok(ExitCode::from(3));
            }
            if health.is_dead() {
                tracing::error!("a sink thread died: the batches it held failed (each logged above)");
                return Ok(ExitCode::from(3));
            }
            tracing::info!("drained: everything accepted is committed");
            Ok(exit)
        }
        Err(left) => {
            // The sink now fails what it holds; let it settle, and the servers send
            // the waiting requests their 502, before the process goes.
            let deadline = Instant::now() + shutdown::GIVE_UP_GRACE;
            let sink_done = tokio::task::spawn_blocking(move || sink_thread.join());
            let _ = tokio::time::timeout_at(deadline, sink_done).await;
            listeners.close_http(deadline).await;
            tracing::error!(
                "shutdown timeout ({}) passed; not committed: {left}",
                humantime::format_duration(options.shutdown_timeout)
            );
            Ok(ExitCode::from(3))
        }
    }
}

/// The `--source`s, running; `None` once they have all ended well.
struct Sources(Option<BoxFuture<'static, Result<(), SourceError>>>);

impl Sources {
    /// Resolves once every source has ended, with the first failure.
    async fn ended(&mut self) -> Result<(), SourceError> {
        let Some(running) = &mut self.0 else { return Ok(()) };
        let ended = running.await;
        self.0 = None;
        ended
    }

    /// Resolves with the first source to fail; never, if none does.
    async fn failed(&mut self) -> SourceError {
        match self.ended().await {
            Err(error) => error,
            Ok(()) => std::future::pending().await,
        }
    }
}

/// Runs until a signal, a source failing, or in the supervisor form until the
/// producer exits (forwarding signals to it). Returns the exit code to finish with.
async fn serve_until_done(
    options: &Options,
    signals: &mut Signals,
    endpoints: &Endpoints<'_>,
    sources: &mut Sources,
) -> Result<ExitCode, Fatal> {
    let Some(program) = options.command.first() else {
        tokio::select! {
            signal = signals.recv() => tracing::info!("received {signal:?}"),
            error = sources.failed() => return Ok(source_failed(error)),
        }
        return Ok(ExitCode::SUCCESS);
    };
    let mut child = supervisor::spawn(&options.command, endpoints)
        .map_err(|source| Fatal::Spawn { program: program.clone(), source })?;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            signal = signals.recv() => {
                tracing::info!("received {signal:?}, forwarding it to {program}");
                supervisor::forward(&child, signal.number());
            }
            error = sources.failed() => {
                supervisor::forward(&child, shutdown::Signal::Term.number());
                return Ok(source_failed(error));
            }
        }
    };
    let status = status.map_err(|source| Fatal::Wait { program: program.clone(), source })?;
    tracing::info!("{program} exited: {status}");
    Ok(ExitCode::from(supervisor::exit_code(status)))
}

/// A source failed for good: drain what it and the others admitted, then exit 1.
fn source_failed(error: SourceError) -> ExitCode {
    tracing::error!("{error}; draining and exiting");
    ExitCode::FAILURE
}

/// Refuses to serve an unauthenticated API beyond this host unless told to.
fn check_exposure(options: &Options, has_token: bool) -> Result<(), Fatal> {
    let Listen::Tcp(addr) = &options.listen else { return Ok(()) };
    if has_token || options.allow_unauthenticated {
        return Ok(());
    }
    let loopback = match addr.rsplit_once(':').map(|(host, _)| host.trim_matches(['[', ']'])) {
        Some("localhost") => true,
        Some(host) => host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        None => false,
    };
    if loopback {
        Ok(())
    } else {
        Err(Fatal::Exposed(addr.clone()))
    }
}

fn read_token(path: Option<&Path>) -> Result<Option<String>, Fatal> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path).map_err(|source| Fatal::TokenFile { path: path.to_owned(), source })?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        return Err(Fatal::EmptyTokenFile(path.to_owned()));
    }
    Ok(Some(token))
}
