//! The endpoints around ingest: `/flush`, `/healthz`, `/readyz`, `/status`, `/metrics`.

use hyper::StatusCode;
use serde::Serialize;
use serde_json::json;

use super::query::{RequestOptions, Wait};
use super::reply::{self, Reply};
use super::Api;
use crate::metrics::METRICS;
use crate::sink::SinkState;

/// Alive: the process answers and its sink's threads live. A slow or unreachable
/// sink is not checked, so it never gets the sidecar restarted (and its buffer
/// lost) by a liveness probe; a dead sink thread is, since only a restart mends it.
pub fn healthz(api: &Api) -> Reply {
    if api.health.is_dead() {
        let error = api.health.last_error().unwrap_or_default();
        return reply::json(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "dead", "problems": [error]}));
    }
    reply::json(StatusCode::OK, &json!({"status": "ok"}))
}

/// Ready: the sink is reachable, the buffer has room and the sidecar is not draining.
pub fn readyz(api: &Api) -> Reply {
    let mut problems = Vec::new();
    if api.health.state() != SinkState::Up {
        let error = api.health.last_error().unwrap_or_default();
        problems.push(format!("sink {} is {}: {error}", api.sink, api.health.state().as_str()));
    }
    if api.intake.budget().is_full() {
        problems.push("the buffer is full".to_string());
    }
    if let Some(spool) = api.intake.spool() {
        if spool.budget().is_full() {
            problems.push("the disk spool is full".to_string());
        }
        if let Some(error) = spool.failure() {
            problems.push(format!("the disk spool cannot be written: {error}"));
        }
    }
    if api.intake.is_draining() {
        problems.push("the sidecar is shutting down".to_string());
    }
    if problems.is_empty() {
        reply::json(StatusCode::OK, &json!({"status": "ready"}))
    } else {
        reply::json(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "not_ready", "problems": problems}))
    }
}

/// Seals the open batch; with `wait=commit`, answers once it and everything before
/// it has settled.
pub async fn flush(api: &Api, query: Option<&str>) -> Reply {
    let wait = match RequestOptions::parse(query, &Default::default()) {
        Ok(RequestOptions { wait: Wait::Downstream, .. }) => {
            return reply::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "/flush waits for the commit only; wait=downstream is for /messages and /commits/{id}",
            )
        }
        Ok(options) => options.wait_commit(),
        Err(bad) => return reply::error(StatusCode::BAD_REQUEST, "bad_request", bad.to_string()),
    };
    let batcher = api.intake.batcher();
    let batch = batcher.flush();
    if !wait {
        return reply::json(StatusCode::ACCEPTED, &json!({"flushed_through_batch": batch}));
    }
    let ledger = batcher.ledger();
    ledger.wait_settled(batch).await;
    let last = ledger.recent().into_iter().rev().find(|c| c.batch == batch);
    reply::json(
        StatusCode::OK,
        &json!({
            "flushed_through_batch": batch,
            "commit": last.as_ref().and_then(|c| c.commit.clone()),
            "error": last.as_ref().and_then(|c| c.error.clone()),
        }),
    )
}

#[derive(Serialize)]
struct Status<'a> {
    sink: &'a str,
    sink_state: SinkState,
    sink_error: Option<String>,
    draining: bool,
    open_batch: crate::batch::OpenBatchInfo,
    buffer: Buffer,
    /// With `--spool-dir`.
    spool: Option<crate::spool::SpoolStatus>,
    last_commits: Vec<crate::ack::CommitSummary>,
}

#[derive(Serialize)]
struct Buffer {
    used_bytes: u64,
    limit_bytes: u64,
}

pub fn status(api: &Api) -> Reply {
    let budget = api.intake.budget();
    let batcher = api.intake.batcher();
    reply::json(
        StatusCode::OK,
        &Status {
            sink: &api.sink,
            sink_state: api.health.state(),
            sink_error: api.health.last_error(),
            draining: api.intake.is_draining(),
            open_batch: batcher.info(),
            buffer: Buffer { used_bytes: budget.used(), limit_bytes: budget.limit() },
            spool: api.intake.spool().map(|spool| spool.status()),
            last_commits: batcher.ledger().recent(),
        },
    )
}

pub fn metrics() -> Reply {
    reply::text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", METRICS.render())
}
