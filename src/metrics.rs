//! Every Prometheus family the sidecar exports, registered once.
//!
//! Names follow Prometheus conventions: base units (seconds, bytes), `_total` on
//! counters, a HELP line each. Buckets are sized for this workload rather than the
//! client defaults: commits take milliseconds to seconds, batches hold 1 to millions
//! of messages and bytes up to hundreds of MiB.

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub messages_received: IntCounterVec,
    pub bytes_received: IntCounterVec,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub messages_rejected: IntCounterVec,
    pub batches_committed: IntCounterVec,
    pub batches_failed: IntCounter,
    pub messages_committed: IntCounter,
    pub batch_messages: Histogram,
    pub batch_bytes: Histogram,
    pub commit_duration: Histogram,
    pub accept_to_commit: Histogram,
    pub buffer_bytes: IntGauge,
    pub buffer_limit_bytes: IntGauge,
    pub backpressure_wait: Histogram,
    pub open_batch_messages: IntGauge,
    pub open_batch_bytes: IntGauge,
    pub open_batch_opened: prometheus::Gauge,
    pub sink_errors: IntCounterVec,
    pub sink_retries: IntCounter,
    pub sink_state: IntGaugeVec,
    pub thread_panics: IntCounterVec,
    pub ack_wait: Histogram,
    pub idempotency_hits: IntCounter,
    pub object_requests: IntCounterVec,
    pub object_request_bytes: IntCounterVec,
    pub object_request_duration: HistogramVec,
    pub spool_bytes: IntGauge,
    pub spool_limit_bytes: IntGauge,
    pub spool_segments: IntGauge,
    pub spool_sync_duration: Histogram,
    pub spool_replayed_messages: IntCounter,
    pub spool_quarantined: IntCounterVec,
    pub fifo_handed_over: IntCounter,
    pub fifo_unsure_archives: IntCounter,
    pub source_messages: IntCounterVec,
    pub source_bytes: IntCounterVec,
    pub source_acks: IntCounterVec,
    pub source_lag: IntGaugeVec,
    pub source_up: IntGaugeVec,
}

/// Latencies from 100 µs to ~100 s.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0001, 2.5, 16).expect("valid buckets")
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new_custom(Some("spout".into()), None).expect("valid prefix");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process collector");
        let r = &registry;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "HTTP request latency, from headers read to answer, by route and status code.",
            )
            .buckets(latency_buckets()),
            &["route", "code"],
        )
        .expect("valid metric");
        r.register(Box::new(request_duration.clone())).expect("unique metric");
        let sink_state = IntGaugeVec::new(
            Opts::new("sink_state", "1 for the sink's current state (up, retrying, down), 0 for the others."),
            &["state"],
        )
        .expect("valid metric");
        r.register(Box::new(sink_state.clone())).expect("unique metric");
        let object_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "object_request_duration_seconds",
                "Latency of the object-store sinks' requests, by operation (put, create_multipart, put_part, complete_multipart, abort_multipart, delete, head, list).",
            )
            .buckets(latency_buckets()),
            &["op"],
        )
        .expect("valid metric");
        r.register(Box::new(object_request_duration.clone())).expect("unique metric");
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        Self {
            messages_received: counter_vec(r, "messages_received_total", "Messages accepted into the buffer, by transport (http, unix, raw, or a --source's kind).", &["transport"]),
            bytes_received: counter_vec(r, "bytes_received_total", "Payload bytes accepted into the buffer, by transport.", &["transport"]),
            requests: counter_vec(r, "requests_total", "HTTP requests answered, by status code.", &["code"]),
            request_duration,
            messages_rejected: counter_vec(r, "messages_rejected_total", "Requests or raw-socket frames refused, by reason (bad_framing, bad_encoding, unsupported_encoding, too_large, bad_file_name, overloaded, unauthorized, draining, sink_down).", &["reason"]),
            batches_committed: counter_vec(r, "batches_committed_total", "Batches committed by the sink, by what sealed them (bytes, messages, age, flush, shutdown).", &["reason"]),
            batches_failed: counter(r, "batches_failed_total", "Batches the sink gave up on; their waiting requests got commit_failed."),
            messages_committed: counter(r, "messages_committed_total", "Messages in committed batches."),
            batch_messages: histogram(r, "batch_messages", "Messages per committed batch.", exponential_buckets(1.0, 4.0, 12).expect("valid buckets")),
            batch_bytes: histogram(r, "batch_bytes", "Payload bytes per committed batch.", exponential_buckets(1024.0, 4.0, 12).expect("valid buckets")),
            commit_duration: histogram(r, "commit_duration_seconds", "Time from sealing a batch to the sink confirming its commit.", latency_buckets()),
            accept_to_commit: histogram(r, "accept_to_commit_seconds", "Time from a batch's first message being accepted to its commit: the worst delay a message of it saw.", latency_buckets()),
            buffer_bytes: gauge(r, "buffer_bytes", "Payload bytes accepted and not yet committed."),
            buffer_limit_bytes: gauge(r, "buffer_limit_bytes", "The memory budget, --max-buffer-bytes."),
            backpressure_wait: histogram(r, "backpressure_wait_seconds", "Time requests spent waiting for room in the buffer (only those that had to wait).", latency_buckets()),
            open_batch_messages: gauge(r, "open_batch_messages", "Messages in the batch being filled."),
            open_batch_bytes: gauge(r, "open_batch_bytes", "Payload bytes in the batch being filled."),
            open_batch_opened: {
                let metric = prometheus::Gauge::new(
                    "open_batch_opened_timestamp_seconds",
                    "Unix time the batch being filled received its first message, 0 when none is open: time() minus it is the open batch's age.",
                )
                .expect("valid metric");
                r.register(Box::new(metric.clone())).expect("unique metric");
                metric
            },
            sink_errors: counter_vec(r, "sink_errors_total", "Failed sink operations, by kind (e.g. epipe, reader_gone, no_reader, io, unavailable).", &["kind"]),
            sink_retries: counter(r, "sink_retries_total", "Commit attempts repeated after a sink error."),
            sink_state,
            thread_panics: counter_vec(r, "thread_panics_total", "Sink threads that died of a panic, by thread (sink, pfs-commit, object-commit); the sink is down until the sidecar restarts.", &["thread"]),
            ack_wait: histogram(r, "ack_wait_seconds", "Time wait=commit requests waited for their batch's commit.", latency_buckets()),
            idempotency_hits: counter(r, "idempotency_hits_total", "Requests whose Idempotency-Key was seen before: answered from the first request, not enqueued again."),
            object_requests: counter_vec(r, "object_requests_total", "Requests the object-store sinks made, by operation (as in object_request_duration_seconds) and outcome (ok, error).", &["op", "outcome"]),
            object_request_bytes: counter_vec(r, "object_request_bytes_total", "Bytes the object-store sinks' successful requests carried (as stored, after compression), by operation.", &["op"]),
            object_request_duration,
            spool_bytes: gauge(r, "spool_bytes", "Bytes of message records in the disk spool (--spool-dir) not yet deleted, plus those reserved for requests being written."),
            spool_limit_bytes: gauge(r, "spool_limit_bytes", "The disk spool's limit, --max-spool-bytes (0 without --spool-dir)."),
            spool_segments: gauge(r, "spool_segments", "Segment files in the disk spool."),
            spool_sync_duration: histogram(r, "spool_sync_duration_seconds", "Time each fdatasync of the disk spool took; with --spool-sync always, one covers every request written while the previous one ran.", latency_buckets()),
            spool_replayed_messages: counter(r, "spool_replayed_messages_total", "Messages read back from the disk spool at start-up, to be committed before new ones."),
            spool_quarantined: counter_vec(r, "spool_quarantined_total", "Damaged stretches of spool segments found at start-up and moved to DIR/quarantine/, by kind (corrupt: a CRC or header failed; torn: a record cut short at the end).", &["kind"]),
            fifo_handed_over: counter(r, "fifo_handed_over_batches_total", "fifo: batches acknowledged without writing them again: a previous sidecar died before it saw its reader read them, and its pipe holder saw it (--spool-dir)."),
            fifo_unsure_archives: counter(r, "fifo_unsure_archives_total", "fifo: archives a pipe holder could not tell committed or not (the sidecar was killed between a write that may have ended the archive and its note of it); each may be committed twice by the replay. Counted from the spool's handoff file."),
            source_messages: counter_vec(r, "source_messages_total", "Messages read from each --source (by its checkpoint name), before any is recognised as a redelivery.", &["source"]),
            source_bytes: counter_vec(r, "source_bytes_total", "Payload bytes of those messages.", &["source"]),
            source_acks: counter_vec(r, "source_acks_total", "What queue sources told their broker, by source and outcome (ack: committed; requeue: its batch failed, given back; duplicate: a redelivery of a message already committed, acknowledged without committing it again; skipped: acknowledged with nothing to commit, as an S3 test event or an object gone; refused: left in the queue for its dead-letter queue, as an object too large).", &["source", "outcome"]),
            source_lag: gauge_vec("source_lag_messages", "Kafka sources: per partition, the end offset minus the offset committed with the data.", &["source", "partition"]),
            source_up: gauge_vec("source_up", "1 while a source is connected to its broker, 0 while it retries.", &["source"]),
            registry,
        }
    }

    /// Gives every labelled family a series at 0 for each label value it can have, so
    /// that a dashboard panel or an alert over it shows 0 from start-up rather than no
    /// data (a rate or an `increase` needs a series before the first event). The
    /// request latency starts with each route's success code only: every route ×
    /// every code would be a thousand mostly idle histogram lines.
    fn with_known_series(self) -> Self {
        for (counters, values) in [
            (&self.messages_received, known::TRANSPORTS),
            (&self.bytes_received, known::TRANSPORTS),
            (&self.requests, known::CODES),
            (&self.messages_rejected, known::REJECTION_REASONS),
            (&self.batches_committed, known::SEAL_REASONS),
            (&self.sink_errors, known::SINK_ERROR_KINDS),
            (&self.thread_panics, known::THREADS),
            (&self.object_request_bytes, known::OBJECT_OPS),
            (&self.spool_quarantined, known::SPOOL_DAMAGE),
        ] {
            for value in values {
                counters.with_label_values(&[value]);
            }
        }
        for (route, code) in known::ROUTE_SUCCESS {
            self.request_duration.with_label_values(&[route, code]);
        }
        for op in known::OBJECT_OPS {
            self.object_request_duration.with_label_values(&[op]);
            for outcome in known::OBJECT_OUTCOMES {
                self.object_requests.with_label_values(&[op, outcome]);
            }
        }
        self
    }

    /// The text exposition format served on `/metrics`.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding");
        String::from_utf8(out).expect("metrics are UTF-8")
    }
}

/// The label values each labelled family can take, as docs/metrics.md lists them.
mod known {
    pub const TRANSPORTS: &[&str] = &["http", "unix", "raw", "kafka", "amqp", "sqs"];
    pub const CODES: &[&str] = &["200", "202", "400", "401", "404", "405", "408", "413", "422", "502", "503"];
    pub const REJECTION_REASONS: &[&str] = &[
        "bad_framing",
        "bad_encoding",
        "unsupported_encoding",
        "bad_request",
        "bad_file_name",
        "too_large",
        "timeout",
        "unauthorized",
        "overloaded",
        "draining",
        "sink_down",
        "spool_full",
        "spool_unwritable",
        "idempotency_key_reused",
    ];
    pub const SEAL_REASONS: &[&str] = &["bytes", "messages", "age", "flush", "shutdown", "replay"];
    pub const SINK_ERROR_KINDS: &[&str] = &[
        "no_reader",
        "not_a_fifo",
        "previous_writer",
        "open",
        "epipe",
        "reader_gone",
        "io",
        "no_space",
        "read_only",
        "permission",
        "unavailable",
        "auth",
        "rpc",
        "open_commit",
        "config",
        "missing_bucket",
        "request",
        "compress",
    ];
    pub const THREADS: &[&str] = &["sink", "pfs-commit", "object-commit"];
    pub const OBJECT_OPS: &[&str] =
        &["put", "create_multipart", "put_part", "complete_multipart", "abort_multipart", "delete", "head", "list"];
    pub const OBJECT_OUTCOMES: &[&str] = &["ok", "error"];
    pub const SPOOL_DAMAGE: &[&str] = &["corrupt", "torn"];
    /// Each route with the code it answers when all is well.
    pub const ROUTE_SUCCESS: &[(&str, &str)] = &[
        ("/messages", "202"),
        ("/flush", "200"),
        ("/healthz", "200"),
        ("/readyz", "200"),
        ("/status", "200"),
        ("/metrics", "200"),
        ("/commits/{id}", "200"),
        ("/commits/{id}/files/{path}", "200"),
    ];
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics::new().with_known_series());
