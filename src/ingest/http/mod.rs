//! The HTTP API, served the same on TCP and on a Unix socket.
//!
//! This module owns connections (HTTP/1.1 and HTTP/2 on one port, TLS in `tls`,
//! `--header-timeout` in `idle`) and routing; `messages` is the ingest endpoint
//! (`encoding` undoes its bodies' `Content-Encoding`, `query` reads its options),
//! `admin` the flush, health, status and metrics endpoints, `commits` reads commits
//! back through the sink's reader, `reply` the JSON answers. Every answer is counted
//! in `spout_requests_total{code}` and timed in
//! `spout_request_duration_seconds{route,code}` (by `answered`).

mod admin;
mod answered;
mod commits;
mod encoding;
mod idle;
mod messages;
mod preface;
mod query;
mod reply;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Body as _;
use hyper::body::Incoming as Body;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH};
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use super::{Intake, Transport};
use crate::cancel::Cancel;
use crate::encode::Layout;
use crate::metrics::METRICS;
use crate::sink::reader::CommitReader;
use crate::sink::Health;
use idle::{Answering, Idleness};
use reply::Reply;
use tls::Tls;

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
    /// Reads the sink's commits back (`GET /commits/...`, `wait=downstream`).
    pub reader: Arc<dyn CommitReader>,
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
pub async fn serve(api: Arc<Api>, transport: Transport, listener: impl Listener, tls: Option<Arc<Tls>>, stop: Cancel) {
    let connections = Arc::new(Semaphore::new(api.max_connections));
    // An HTTP/1.1 connection serves one request at a time; HTTP/2 streams share this,
    // so that --max-connections × --max-request-bytes still bounds the bodies read.
    let requests = Arc::new(Semaphore::new(api.max_connections));
    let graceful = GracefulShutdown::new();
    let builders = Arc::new(Builders::new());
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
        let connection = Connection {
            api: api.clone(),
            transport,
            builders: builders.clone(),
            requests: requests.clone(),
            watcher: graceful.watcher(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            connection.serve(stream, tls).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The largest buffer hyper reads an HTTP/1.1 connection into. A body's chunks are
/// slices of these buffers, and a slice keeps its whole buffer alive while its message
/// waits in a batch, though the budget counts only the slice. hyper's default (about
/// 400 KiB) let a read that filled part of a buffer hold all of it: 1 MiB messages
/// took 1.6x the memory the budget counted (BENCHMARKS.md). It is also the largest
/// header section accepted (431 past it).
const READ_BUFFER_BYTES: usize = 64 << 10;

/// HTTP/1.1, or HTTP/2 when the client opens with its preface (h2c with prior
/// knowledge, or after choosing `h2` by ALPN under TLS), told apart by [`preface`].
/// Each HTTP/2 stream is one request to the same handler as an HTTP/1.1 request,
/// with the same limits. HTTP/1.1 has no timer: `idle` holds it to --header-timeout.
struct Builders {
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new() -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http2().timer(TokioTimer::new());
        builder.http1().max_buf_size(READ_BUFFER_BYTES);
        Self { http1: builder.clone().http1_only(), http2: builder.http2_only() }
    }

    fn for_version(&self, version: preface::Version) -> &auto::Builder<TokioExecutor> {
        match version {
            preface::Version::Http1 => &self.http1,
            preface::Version::Http2 => &self.http2,
        }
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    api: Arc<Api>,
    transport: Transport,
    builders: Arc<Builders>,
    /// Requests being served on this listener, whatever their connection.
    requests: Arc<Semaphore>,
    watcher: Watcher,
}

impl Connection {
    /// Serves the connection, after the TLS handshake if there is one. A client that
    /// has not sent a request within --header-timeout of connecting (silent, stuck
    /// in the handshake, or an HTTP/2 connection without a stream), or an HTTP/1.1
    /// client that has not sent its next one within --header-timeout of its last
    /// answer, is disconnected, so that it does not hold a --max-connections slot.
    async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, stream: S, tls: Option<Arc<Tls>>) {
        let header_timeout = self.api.header_timeout;
        let idleness = Idleness::new();
        let served = {
            let idleness = idleness.clone();
            async move {
                match tls {
                    None => self.http(stream, idleness).await,
                    Some(tls) => match tls.acceptor().accept(stream).await {
                        Ok(stream) => self.http(stream, idleness).await,
                        Err(error) => tracing::debug!("TLS handshake failed: {error}"),
                    },
                }
            }
        };
        tokio::select! {
            () = served => {}
            () = idleness.expired(header_timeout) => {
                tracing::debug!("no request within --header-timeout; closing the connection");
            }
        }
    }

    async fn http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, stream: S, idleness: Arc<Idleness>) {
        let (api, transport, requests) = (self.api.clone(), self.transport, self.requests.clone());
        let service = service_fn(move |request: Request<Body>| {
            let busy = idleness.serving(request.version() == Version::HTTP_2);
            let (api, requests) = (api.clone(), requests.clone());
            async move {
                let _turn = requests.acquire().await.expect("the semaphore is never closed");
                let response = handle(&api, transport, request).await;
                Ok::<_, Infallible>(response.map(|body| Answering::new(body, busy)))
            }
        });
        let (version, stream) = match preface::read_version(stream).await {
            Ok(read) => read,
            Err(error) => return tracing::debug!("connection ended before its first request: {error}"),
        };
        let connection = self.builders.for_version(version).serve_connection(TokioIo::new(stream), service);
        if let Err(error) = self.watcher.watch(connection).await {
            tracing::debug!("connection ended: {error}");
        }
    }
}

async fn handle(api: &Api, transport: Transport, request: Request<Body>) -> Reply {
    let started = Instant::now();
    let route = route_name(request.uri().path());
    let head = request.method() == Method::HEAD;
    let mut response = route_request(api, transport, request).await;
    if head {
        response = without_body(response);
    }
    answered::record(route, response.status().as_u16(), started.elapsed());
    response
}

/// The answer to HEAD: the headers GET would get, Content-Length included when
/// the size is known (a streamed file's is not), and no body. HTTP/1.1 leaves the
/// body out by itself; HTTP/2 would send it, and clients refuse a HEAD answer with data.
fn without_body(response: Reply) -> Reply {
    let (mut parts, body) = response.into_parts();
    if let Some(size) = body.size_hint().exact() {
        parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
    }
    Reply::from_parts(parts, reply::whole(Bytes::new()))
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
        _ => match path.strip_prefix("/commits/").map(|rest| rest.contains('/')) {
            Some(false) => "/commits/{id}",
            Some(true) => "/commits/{id}/files/{path}",
            None => "other",
        },
    }
}

async fn route_request(api: &Api, transport: Transport, request: Request<Body>) -> Reply {
    let path = request.uri().path();
    let allowed: &'static str = match path {
        "/messages" | "/flush" => "POST",
        "/healthz" | "/readyz" | "/status" | "/metrics" => "GET, HEAD",
        _ if path.starts_with("/commits/") => "GET, HEAD",
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
        "/metrics" => admin::metrics(),
        _ => commits::get(api, path, request.uri().query()).await,
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
