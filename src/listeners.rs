//! The listening sockets: HTTP on TCP (with TLS, reloaded on SIGHUP) and on a Unix
//! socket, the raw Unix socket, each served on its own task, and the order they stop
//! in at shutdown.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, UnixListener};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cancel::Cancel;
use crate::config::{Listen, Options};
use crate::ingest::http::tls::{Tls, TlsError};
use crate::ingest::http::{self, Api};
use crate::ingest::{raw_socket, Transport};
use crate::supervisor::Endpoints;

/// A listener that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}: {source}")]
    Tcp { addr: String, source: std::io::Error },
    #[error("{} exists and is not a socket; not replacing it", .0.display())]
    NotASocket(PathBuf),
    #[error("cannot bind {}: {source}", path.display())]
    Unix { path: PathBuf, source: std::io::Error },
    #[error("cannot chmod {}: {source}", path.display())]
    Chmod { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen for SIGHUP, which reloads --tls-cert and --tls-key: {0}")]
    Hangup(std::io::Error),
}

pub struct Listeners<'a> {
    /// Where a supervised producer should send.
    pub endpoints: Endpoints<'a>,
    http_stop: Cancel,
    raw_stop: Cancel,
    raw_server: Option<JoinHandle<()>>,
    http_servers: Vec<JoinHandle<()>>,
    /// Removed when the listeners are dropped, so a restart can bind again.
    _socket_files: Vec<SocketFile>,
}

impl<'a> Listeners<'a> {
    /// Binds every listener `options` asks for and starts serving.
    pub async fn bind(options: &'a Options, api: Arc<Api>) -> Result<Listeners<'a>, BindError> {
        let (http_stop, raw_stop) = (Cancel::new(), Cancel::new());
        let mut endpoints = Endpoints { token_file: options.auth_token_file.as_deref(), ..Endpoints::default() };
        let mut socket_files = Vec::new();
        let mut raw_server = None;
        let mut http_servers = Vec::new();
        if let Listen::Tcp(addr) = &options.listen {
            let tls = match (&options.tls_cert, &options.tls_key) {
                (Some(cert), Some(key)) => Some(Arc::new(Tls::load(cert, key)?)),
                _ => None,
            };
            let tcp_error = |source| BindError::Tcp { addr: addr.clone(), source };
            let listener = bind_tcp(addr).await.map_err(tcp_error)?;
            let local = listener.local_addr().map_err(tcp_error)?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!("listening on {scheme}://{local}");
            let reachable =
                if local.ip().is_unspecified() { format!("127.0.0.1:{}", local.port()) } else { local.to_string() };
            endpoints.url = Some(format!("{scheme}://{reachable}"));
            if let Some(tls) = &tls {
                let hangups = signal(SignalKind::hangup()).map_err(BindError::Hangup)?;
                tokio::spawn(reload_on_hangup(tls.clone(), hangups, http_stop.clone()));
            }
            let server = http::serve(api.clone(), Transport::Http, listener, tls, http_stop.clone());
            http_servers.push(tokio::spawn(server));
        }
        if let Some(path) = &options.socket {
            let (listener, file) = bind_unix(path)?;
            tracing::info!("listening on unix:{}", path.display());
            socket_files.push(file);
            endpoints.socket = Some(path);
            let server = http::serve(api.clone(), Transport::Unix, listener, None, http_stop.clone());
            http_servers.push(tokio::spawn(server));
        }
        if let Some(path) = &options.raw_socket {
            let (listener, file) = bind_unix(path)?;
            tracing::info!(framing = ?options.raw_framing, "reading raw messages on unix:{}", path.display());
            socket_files.push(file);
            endpoints.raw_socket = Some(path);
            let intake = api.intake.clone();
            let limit = options.max_message_bytes;
            let server = raw_socket::serve(listener, options.raw_framing, intake, limit, raw_stop.clone());
            raw_server = Some(tokio::spawn(server));
        }
        Ok(Listeners { endpoints, http_stop, raw_stop, raw_server, http_servers, _socket_files: socket_files })
    }

    /// Stops the raw socket first: it reads what its connections already sent and
    /// admits it, so the drain that follows commits it. Waits at most `timeout`.
    pub async fn stop_raw(&mut self, timeout: Duration) {
        self.raw_stop.cancel();
        if let Some(server) = self.raw_server.take() {
            if tokio::time::timeout(timeout, server).await.is_err() {
                tracing::warn!("the raw socket did not finish reading within --shutdown-timeout");
            }
        }
    }

    /// Stops accepting HTTP connections. Until then, draining answers 503, so
    /// clients learn to retry elsewhere instead of meeting a refused connection.
    pub fn stop_http(&self) {
        self.http_stop.cancel();
    }

    /// Waits, once stopped, until the HTTP servers have sent the answers of the
    /// requests they took in and closed their connections, or until `deadline`;
    /// then the process may exit without cutting off an answer it owes.
    pub async fn close_http(&mut self, deadline: Instant) {
        let servers = std::mem::take(&mut self.http_servers);
        let all_closed = async {
            for server in servers {
                let _ = server.await;
            }
        };
        if tokio::time::timeout_at(deadline, all_closed).await.is_err() {
            tracing::info!("closing the HTTP connections still open at the deadline");
        }
    }
}

/// Reloads the certificate and key on each SIGHUP until `stop`; a pair that does
/// not load leaves the one in use, so a half-copied renewal breaks nothing.
async fn reload_on_hangup(tls: Arc<Tls>, mut hangups: Signal, stop: Cancel) {
    loop {
        tokio::select! {
            received = hangups.recv() => if received.is_none() { return },
            () = stop.cancelled() => return,
        }
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: reloaded the TLS certificate {}", tls.cert_path().display()),
            Err(error) => tracing::error!("SIGHUP: {error}; still serving the certificate loaded before"),
        }
    }
}

/// Connections the kernel completes and queues for the sidecar to accept: while it
/// accepts none (every --max-connections slot taken) or falls behind a burst (a
/// deployment's producers all starting at once). The 128 of tokio's and std's `bind`
/// drops the SYNs past it, and a client whose SYN is dropped tries again only after
/// 1 s, then 3, 7, 15... Linux caps it at `net.core.somaxconn` (4096 by default).
const BACKLOG: u32 = 1024;

/// Listens on the first of `addr`'s addresses that binds, with [`BACKLOG`].
async fn bind_tcp(addr: &str) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }?;
        // As tokio's `bind`: a restarted sidecar binds its port again at once.
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(BACKLOG),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("the address resolves to nothing")))
}

/// Binds a Unix socket at `path` with mode 0660, replacing a stale socket file.
fn bind_unix(path: &Path) -> Result<(UnixListener, SocketFile), BindError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        } else {
            return Err(BindError::NotASocket(path.to_owned()));
        }
    }
    let listener = tokio::net::UnixSocket::new_stream()
        .and_then(|socket| socket.bind(path).map(|()| socket))
        .and_then(|socket| socket.listen(BACKLOG))
        .map_err(|source| BindError::Unix { path: path.to_owned(), source })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|source| BindError::Chmod { path: path.to_owned(), source })?;
    Ok((listener, SocketFile(path.to_path_buf())))
}

/// Removes a Unix socket file when dropped, so a restart can bind the path again.
pub struct SocketFile(pub std::path::PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
