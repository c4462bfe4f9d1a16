//! HTTP/1.1 keep-alive connections to the sidecar (or the bare baseline server) over
//! TCP or a Unix socket: hyper's client over a raw stream, one connection per load
//! worker, no pool in between.

use std::fmt;
use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::client::conn::http1;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::body::ChunkBody;

/// Where the HTTP server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "tcp:{addr}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            Ok(Endpoint::Unix(path.into()))
        } else {
            let addr = s.strip_prefix("tcp:").unwrap_or(s);
            addr.parse().map(Endpoint::Tcp).map_err(|e| format!("`{s}`: expected tcp:HOST:PORT or unix:PATH ({e})"))
        }
    }
}

/// One keep-alive connection.
pub struct Conn {
    sender: http1::SendRequest<ChunkBody>,
}

/// An answer: status and body.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Conn {
    pub async fn open(endpoint: &Endpoint) -> anyhow::Result<Conn> {
        let sender = match endpoint {
            Endpoint::Tcp(addr) => {
                let stream =
                    tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
                stream.set_nodelay(true)?;
                handshake(stream).await?
            }
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .with_context(|| format!("connecting to {}", path.display()))?;
                handshake(stream).await?
            }
        };
        Ok(Conn { sender })
    }

    pub async fn send(
        &mut self,
        method: Method,
        path_and_query: &str,
        content_type: &str,
        body: ChunkBody,
    ) -> anyhow::Result<Answer> {
        let request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::HOST, "loadtest")
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(body)?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer { status, body })
    }
}

async fn handshake<S>(stream: S) -> anyhow::Result<http1::SendRequest<ChunkBody>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    // The connection task ends when the sender is dropped or the peer closes.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One request on a fresh connection: for control calls (`/flush`, `/metrics`).
pub async fn call(endpoint: &Endpoint, method: Method, path_and_query: &str) -> anyhow::Result<Answer> {
    let mut conn = Conn::open(endpoint).await?;
    conn.send(method, path_and_query, "text/plain", ChunkBody::default()).await
}
