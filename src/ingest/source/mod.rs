//! Sources: the sidecar reads a broker itself (`--source URI`), so a spout needs no
//! code of its own. What a source reads goes through the same door as what
//! producers send ([`Intake::admit`]), waiting for room as long as it takes: a full
//! buffer stops the source fetching, never drops.
//!
//! Each message carries its [`Origin`]; the sink thread folds the origins of each
//! batch into the source's checkpoint and commits it with the batch
//! (`encode::checkpoint`). At start-up the sidecar reads those checkpoints back from
//! the sink ([`read_checkpoints`]) and each source resumes from its own: a log seeks
//! to the offsets committed, a queue recognises the ids of messages it committed but
//! had not yet acknowledged when it stopped.
//!
//! | URI | source |
//! |---|---|
//! | `amqp://USER:PASS@HOST:PORT/VHOST?queue=Q` | [`amqp`]: a RabbitMQ queue, acknowledged after commit |
//! | `kafka://HOST:PORT[,HOST:PORT]/TOPIC[?options]` | [`kafka`]: a topic's partitions, resumed at the offsets committed |
//! | `sqs://HOST/ACCOUNT/QUEUE` | Amazon SQS ([`sqs`]): messages, or the objects S3 event notifications name |
//!
//! Adding a source is a new module here and one line in [`SCHEMES`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;

use super::{AdmitOptions, Admitted, Answer, FullBudget, Intake, Refused, Transport};
use crate::cancel::Cancel;
use crate::encode::checkpoint::{self, BadCheckpoint, Checkpoint, Fold, Tracked};
use crate::message::Incoming;
use crate::sink::reader::{CommitReader, ReadError};

pub mod amqp;
pub mod kafka;
pub mod recent;
pub mod sqs;

/// A source of messages, as a `--source` URI configured it.
pub trait Source: Send + Sync + fmt::Debug {
    /// The URI without credentials: for logs, `/status` and checkpoint files.
    fn describe(&self) -> String;

    /// What its checkpoint files are named after, e.g. `kafka.orders`: the same for
    /// every replica reading the same thing, and a valid file name.
    fn checkpoint_stem(&self) -> String;

    /// How its messages' positions fold into its checkpoint.
    fn fold(&self) -> Fold;

    /// The `transport` label of its messages in the ingest metrics.
    fn transport(&self) -> Transport;

    /// Reads and admits messages until `ctx.stop`, then returns once the messages
    /// it admitted have been settled (a queue acknowledges them then).
    fn run(self: Arc<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>>;
}

/// Why a source stopped for good: the sidecar exits with it, so that whatever runs
/// it (Kubernetes) shows the error and restarts it. Brokers that are down for a
/// while are retried inside the source, not reported here.
#[derive(Debug, thiserror::Error)]
#[error("source {uri}: {message}")]
pub struct SourceError {
    pub uri: String,
    pub message: String,
}

/// A `--source` URI that names no source or is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadSourceUri(pub String);

/// One kind of source: the URI prefix it answers to and how to parse the rest.
pub struct SourceScheme {
    pub prefix: &'static str,
    /// The URI's form, for the error that lists what is accepted.
    pub form: &'static str,
    pub parse: fn(&str) -> Result<Arc<dyn Source>, BadSourceUri>,
}

/// Every kind of source, by URI prefix.
pub const SCHEMES: &[SourceScheme] = &[
    SourceScheme { prefix: "amqp://", form: "amqp://USER:PASS@HOST:PORT/VHOST?queue=Q", parse: amqp::parse },
    SourceScheme { prefix: "kafka://", form: "kafka://HOST:PORT[,HOST:PORT]/TOPIC[?options]", parse: kafka::parse },
    SourceScheme { prefix: "sqs://", form: sqs::FORM, parse: sqs::parse },
];

/// A parsed `--source` URI.
#[derive(Clone)]
pub struct SourceSpec(pub Arc<dyn Source>);

impl fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.describe())
    }
}

impl FromStr for SourceSpec {
    type Err = BadSourceUri;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        match SCHEMES.iter().find(|scheme| uri.starts_with(scheme.prefix)) {
            Some(scheme) => (scheme.parse)(uri).map(SourceSpec),
            None => {
                let forms: Vec<&str> = SCHEMES.iter().map(|s| s.form).collect();
                Err(BadSourceUri(format!("unknown source `{uri}`: expected {}", forms.join(", "))))
            }
        }
    }
}

/// Why the checkpoints could not be read at start-up: the sidecar will not guess
/// where to resume.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read the sources' checkpoints back from the sink: {0}")]
    Read(#[from] ReadError),
    #[error(transparent)]
    Bad(#[from] BadCheckpoint),
    #[error("two --source name the same checkpoint `{0}`: each must read something else")]
    SameStem(String),
}

/// What a source is given to run.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// Its index among the sources: the `source` of its messages' [`Origin`]s.
    pub index: u16,
    pub intake: Arc<Intake>,
    /// Where to resume: every replica's checkpoint of this source, merged, as the
    /// sink held them at start-up.
    pub resume: Checkpoint,
    /// The sink's commits, to read the checkpoints again (a queue does, when a
    /// message comes back that another replica may have committed).
    pub reader: Arc<dyn CommitReader>,
    pub stem: String,
    /// Cancelled when the sidecar drains: stop fetching, settle what was admitted.
    pub stop: Cancel,
    /// `--max-message-bytes`: what a source reads whole (an object) must fit.
    pub max_message_bytes: u64,
    transport: Transport,
}

impl SourceContext {
    /// Admits messages read from the source, waiting for room in the buffer as long
    /// as it takes; with `answer` [`Answer::Committed`], the verdict on their batch
    /// is there to wait for.
    pub async fn admit(&self, messages: Vec<Incoming>, answer: Answer) -> Result<Admitted, Refused> {
        let how = AdmitOptions { transport: self.transport, answer, when_full: FullBudget::WaitForRoom };
        self.intake.admit(messages, how).await
    }

    /// Every replica's checkpoint of this source, merged, as the sink holds them now.
    pub async fn read_checkpoint(&self) -> Result<Checkpoint, CheckpointError> {
        let all = read_checkpoints(&*self.reader).await?;
        Ok(merged(&all, &self.stem))
    }
}

/// Every checkpoint file the sink holds, newest version of each, parsed.
pub async fn read_checkpoints(reader: &dyn CommitReader) -> Result<Vec<(String, Checkpoint)>, CheckpointError> {
    let files = reader.checkpoints().await?;
    files.into_iter().map(|(name, bytes)| Ok((name.clone(), Checkpoint::parse(&name, &bytes)?))).collect()
}

/// The checkpoints of the source named `stem`, merged across replicas.
fn merged(all: &[(String, Checkpoint)], stem: &str) -> Checkpoint {
    let prefix = format!("{}/{stem}.", checkpoint::DIR);
    Checkpoint::merge(all.iter().filter(|(name, _)| name.starts_with(&prefix)).map(|(_, c)| c))
}

/// The configured sources, each with where it resumes, ready to run once the
/// pipeline is up.
#[derive(Debug, Default)]
pub struct Prepared {
    sources: Vec<(Arc<dyn Source>, Checkpoint)>,
}

impl Prepared {
    /// Reads the checkpoints of `sources` from the sink (none is read without
    /// sources). Returns them, and what the sink thread folds the next ones from.
    pub async fn read(
        sources: &[SourceSpec],
        reader: &dyn CommitReader,
        replica: &str,
    ) -> Result<(Self, Vec<Tracked>), CheckpointError> {
        if sources.is_empty() {
            return Ok((Self::default(), Vec::new()));
        }
        let all = read_checkpoints(reader).await?;
        let mut prepared = Self::default();
        let mut tracked = Vec::new();
        for SourceSpec(source) in sources {
            let stem = source.checkpoint_stem();
            if tracked.iter().any(|t: &Tracked| t.file == checkpoint::file_name(&stem, replica)) {
                return Err(CheckpointError::SameStem(stem));
            }
            let mut resume = merged(&all, &stem);
            resume.source = source.describe();
            let file = checkpoint::file_name(&stem, replica);
            tracked.push(Tracked { file, fold: source.fold(), state: resume.clone() });
            prepared.sources.push((source.clone(), resume));
        }
        Ok((prepared, tracked))
    }

    /// Starts every source; the future ends when one fails (with its error) or all
    /// have returned after `stop`.
    pub fn run(
        self,
        intake: &Arc<Intake>,
        reader: &Arc<dyn CommitReader>,
        stop: &Cancel,
        max_message_bytes: u64,
    ) -> BoxFuture<'static, Result<(), SourceError>> {
        let mut running: futures_util::stream::FuturesUnordered<_> = self
            .sources
            .into_iter()
            .enumerate()
            .map(|(index, (source, resume))| {
                let ctx = SourceContext {
                    index: index as u16,
                    intake: intake.clone(),
                    resume,
                    reader: reader.clone(),
                    stem: source.checkpoint_stem(),
                    stop: stop.clone(),
                    max_message_bytes,
                    transport: source.transport(),
                };
                let task = tokio::spawn(source.clone().run(ctx));
                let uri = source.describe();
                async move {
                    match task.await {
                        Ok(ended) => ended,
                        Err(panic) => Err(SourceError { uri, message: format!("its task ended: {panic}") }),
                    }
                }
            })
            .collect();
        Box::pin(async move {
            while let Some(ended) = running.next().await {
                ended?;
            }
            Ok(())
        })
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}
