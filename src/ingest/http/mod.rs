//! The HTTP API, served the same on TCP and on a Unix socket.
//!
//! This module owns connections and routing; `messages` is the ingest endpoint
//! (`encoding` undoes its bodies' `Content-Encoding`, `query` reads its options),
//! `admin` the flush, health, status and metrics endpoints, `reply` the JSON
//! answers. Every answer is counted in `spout_requests_total{code}` and timed in
//! `spout_request_duration_seconds{route,code}`.

mod admin;
mod encoding;
mod messages;
mod query;
mod reply;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming as Body;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use super::{Intake, Transport};
use crate::cancel::Cancel;
use crate::encode::Layout;
use crate::metrics::METRICS;
use crate::sink::Health;
use reply::Reply;

/// Everything the handlers share.
#[derive(Debug)]
pub struct Api {
    pub intake: Arc<Intake>,
    pub health: Arc<Health>,
    pub sink: String,
    pub layout: Layout,
    pub max_message_bytes: u64,
    pub max_request_bytes: u64,
    /// The bearer token `--auth-token-file` holds.
    pub token: Option<String>,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub idempotency: super::idempotency::Idempotency,
}

/// A listener HTTP can be served on: TCP or a Unix socket.
pub trait Listener: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_stream(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_stream(&self) -> std::io::Result<Self::Stream> {
        let (stream, _) = self.accept().await?;
        // Small answers go out at once rather than waiting on Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_stream(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Accepts connections until `stop` is cancelled, serving each on its own task;
/// then closes the listener and returns once every connection has answered the
/// request it was serving and closed. A reply whose commit has just settled (a
/// `wait=commit` answer) thus still goes out before the process exits: a client
/// that never gets it would send again what is already committed.
pub async fn serve(api: Arc<Api>, transport: Transport, listener: impl Listener, stop: Cancel) {
    let connections = Arc::new(Semaphore::new(api.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        // Waiting for a slot before accepting leaves further clients in the kernel's
        // backlog instead of accepting connections we would not serve.
        let slot = tokio::select! {
            slot = connections.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = stop.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept_stream() => accepted,
            () = stop.cancelled() => break,
        };
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                // EMFILE and friends: pause rather than spin.
                tracing::warn!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let api = api.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let header_timeout = api.header_timeout;
            let service = service_fn(move |request| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(handle(&api, transport, request).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!("connection ended: {error}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn handle(api: &Api, transport: Transport, request: Request<Body>) -> Reply {
    let started = Instant::now();
    let route = route_name(request.uri().path());
    let response = route_request(api, transport, request).await;
    let code = response.status().as_u16().to_string();
    METRICS.requests.with_label_values(&[&code]).inc();
    METRICS.request_duration.with_label_values(&[route, &code]).observe(started.elapsed().as_secs_f64());
    response
}

/// The route label: known paths by name, everything else as `other` so a scan of
/// random URLs cannot blow up the metric's cardinality.
fn route_name(path: &str) -> &'static str {
    match path {
        "/messages" => "/messages",
        "/flush" => "/flush",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/status" => "/status",
        "/metrics" => "/metrics",
        _ => "other",
    }
}

async fn route_request(api: &Api, transport: Transport, request: Request<Body>) -> Reply {
    let path = request.uri().path();
    let allowed: &'static str = match path {
        "/messages" | "/flush" => "POST",
        "/healthz" | "/readyz" | "/status" | "/metrics" => "GET, HEAD",
        _ => return reply::error(StatusCode::NOT_FOUND, "not_found", format!("no route {path}; see /status")),
    };
    let method_ok = match allowed {
        "POST" => request.method() == Method::POST,
        _ => request.method() == Method::GET || request.method() == Method::HEAD,
    };
    if !method_ok {
        let mut response = reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} takes {allowed}, not {}", request.method()),
        );
        response.headers_mut().insert(ALLOW, HeaderValue::from_static(allowed));
        return response;
    }
    match path {
        "/healthz" => return admin::healthz(api),
        "/readyz" => return admin::readyz(api),
        _ => {}
    }
    if let Some(response) = refuse_unauthorized(api, &request) {
        METRICS.messages_rejected.with_label_values(&["unauthorized"]).inc();
        return response;
    }
    match path {
        "/messages" => messages::post(api, transport, request).await,
        "/flush" => admin::flush(api, request.uri().query()).await,
        "/status" => admin::status(api),
        _ => admin::metrics(),
    }
}

/// The 401 for a request without the right bearer token, if a token is required.
fn refuse_unauthorized(api: &Api, request: &Request<Body>) -> Option<Reply> {
    let expected = api.token.as_ref()?;
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match given {
        Some(token) if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) => None,
        Some(_) => Some(reply::error(StatusCode::UNAUTHORIZED, "unauthorized", "wrong bearer token")),
        None => Some(reply::error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this sidecar needs `Authorization: Bearer <token>`",
        )),
    }
}
