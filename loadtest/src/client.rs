//! HTTP/1.1 keep-alive connections to the sidecar (or the bare baseline server) over
//! TCP or a Unix socket, one per load worker, no pool in between: requests written
//! and answers parsed by hand, the least a client can do per request.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};

use std::io::{self, IoSlice, Write as _};

use anyhow::{bail, Context};
use bytes::{Buf, Bytes, BytesMut};
use hyper::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::body::ChunkBody;

/// Where the HTTP server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
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

/// One keep-alive connection. Requests are written and answers parsed here, with no
/// HTTP library between: a load generator that must outrun the server it measures
/// (hyper's client, with its dispatch task, channels and header maps per request,
/// cost twice wrk's CPU per request) cannot afford more than its bytes.
pub struct Conn {
    endpoint: Endpoint,
    /// `None` once the server said `Connection: close` or the connection failed: the
    /// next request opens a fresh one.
    stream: Option<Box<dyn Stream>>,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    out: Vec<u8>,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An answer: status and body.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Bodies up to this size are copied behind the request head, to go out in one write.
const INLINE_BODY: u64 = 64 << 10;
/// An answer's head longer than this is not one the harness's servers send.
const MAX_HEAD: usize = 64 << 10;
/// The least room a read is given.
const READ_AT_LEAST: usize = 4 << 10;

impl Conn {
    pub async fn open(endpoint: &Endpoint) -> anyhow::Result<Conn> {
        let stream = connect(endpoint).await?;
        Ok(Conn {
            endpoint: endpoint.clone(),
            stream: Some(stream),
            read: BytesMut::with_capacity(2 * READ_AT_LEAST),
            out: Vec::new(),
        })
    }

    pub async fn send(
        &mut self,
        method: Method,
        path_and_query: &str,
        content_type: &str,
        body: ChunkBody,
    ) -> anyhow::Result<Answer> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                self.read.clear();
                self.stream.insert(connect(&self.endpoint).await?)
            }
        };
        let outcome =
            exchange(stream, &mut self.out, &mut self.read, (method, path_and_query, content_type), body).await;
        if !matches!(outcome, Ok((_, true))) {
            self.stream = None;
        }
        outcome.map(|(answer, _)| answer)
    }
}

async fn connect(endpoint: &Endpoint) -> anyhow::Result<Box<dyn Stream>> {
    Ok(match endpoint {
        Endpoint::Tcp(addr) => {
            let socket = match addr {
                SocketAddr::V4(v4) if v4.ip().is_loopback() => {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    // Where 127.0.0.0/8 is not all local, the connection comes from
                    // the address `connect` picks, as it would unbound.
                    let _ = socket.bind(next_loopback_source());
                    socket
                }
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            let stream = socket.connect(*addr).await.with_context(|| format!("connecting to {addr}"))?;
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
        Endpoint::Unix(path) => Box::new(
            tokio::net::UnixStream::connect(path).await.with_context(|| format!("connecting to {}", path.display()))?,
        ),
    })
}

/// Loopback connections come from 127.0.0.1 to 127.0.0.254 in turn. One source
/// address has the ephemeral ports of `ip_local_port_range` (about 28,000 here), and
/// `connect` looks for a free one among those its destination already uses, even
/// ones first: with 15,000 connections open to one server, that search took half of
/// the harness's core and made it, not the server, the limit of `wait=commit` loads.
fn next_loopback_source() -> SocketAddr {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    let last_octet = NEXT.fetch_add(1, Ordering::Relaxed) % 254 + 1;
    SocketAddr::from(([127, 0, 0, last_octet], 0))
}

/// Writes one request and reads its answer; also says whether the connection stays
/// open for the next.
async fn exchange(
    stream: &mut Box<dyn Stream>,
    out: &mut Vec<u8>,
    read: &mut BytesMut,
    (method, path_and_query, content_type): (Method, &str, &str),
    body: ChunkBody,
) -> anyhow::Result<(Answer, bool)> {
    out.clear();
    let len = body.len();
    // Pieces copied, not formatted: the formatting machinery cost more than the copies.
    let head = [method.as_str(), " ", path_and_query, " HTTP/1.1\r\nHost: loadtest\r\nContent-Type: ", content_type];
    head.iter().for_each(|piece| out.extend_from_slice(piece.as_bytes()));
    write!(out, "\r\nContent-Length: {len}\r\n\r\n")?;
    let chunks = body.into_chunks();
    if len <= INLINE_BODY {
        chunks.iter().for_each(|chunk| out.extend_from_slice(chunk));
        stream.write_all(out).await?;
    } else {
        let mut slices: Vec<IoSlice> =
            std::iter::once(&out[..]).chain(chunks.iter().map(|c| &c[..])).map(IoSlice::new).collect();
        write_all_vectored(stream, &mut slices).await?;
    }
    read_answer(stream, read).await
}

/// The most slices one `writev` takes (`IOV_MAX` on Linux).
const IOV_MAX: usize = 1024;

/// Writes `slices` in as few calls as the socket takes. A write per slice sent the
/// head and a message's own 43-byte header as segments of their own (the socket has
/// `TCP_NODELAY`), each one more wake-up for the server and for this core.
async fn write_all_vectored(stream: &mut Box<dyn Stream>, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        let take = slices.len().min(IOV_MAX);
        match stream.write_vectored(&slices[..take]).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            written => IoSlice::advance_slices(&mut slices, written),
        }
    }
    Ok(())
}

async fn read_answer(stream: &mut Box<dyn Stream>, read: &mut BytesMut) -> anyhow::Result<(Answer, bool)> {
    // Where the search for the head's end goes on after a short read.
    let mut searched = 0;
    let head_len = loop {
        if let Some(at) = read[searched..].windows(4).position(|w| w == b"\r\n\r\n") {
            break searched + at + 4;
        }
        if read.len() > MAX_HEAD {
            bail!("an answer's head longer than {MAX_HEAD} bytes");
        }
        searched = read.len().saturating_sub(3);
        fill(stream, read, read.len() + 1).await?;
    };
    let head = parse_head(&read[..head_len])?;
    read.advance(head_len);
    let body = if head.chunked { read_chunked(stream, read).await? } else { take(stream, read, head.length).await? };
    Ok((Answer { status: head.status, body }, head.keep_alive))
}

/// What the harness needs of an answer's head.
#[derive(Debug, PartialEq)]
struct Head {
    status: StatusCode,
    length: usize,
    chunked: bool,
    keep_alive: bool,
}

/// Reads `head` (up to and with its blank line) as bytes, line by line, with no
/// string searching or UTF-8 checks: at one answer per request, its parse is a
/// visible part of the client's time.
fn parse_head(head: &[u8]) -> anyhow::Result<Head> {
    let mut lines = head.split(|&b| b == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let status = lines
        .next()
        .and_then(|line| line.strip_prefix(b"HTTP/1.1 "))
        .and_then(|rest| StatusCode::from_bytes(rest.get(..3)?).ok())
        .with_context(|| format!("not an HTTP/1.1 answer: {:?}", String::from_utf8_lossy(head)))?;
    let mut parsed = Head { status, length: 0, chunked: false, keep_alive: true };
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            parsed.length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("Content-Length: {}", String::from_utf8_lossy(value)))?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            parsed.chunked = value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            parsed.keep_alive = !value.eq_ignore_ascii_case(b"close");
        }
    }
    Ok(parsed)
}

/// A chunked body (streamed answers such as `/metrics`), without trailers.
async fn read_chunked(stream: &mut Box<dyn Stream>, read: &mut BytesMut) -> anyhow::Result<Bytes> {
    let mut body = BytesMut::new();
    loop {
        let line_len = loop {
            if let Some(at) = read.windows(2).position(|w| w == b"\r\n") {
                break at;
            }
            fill(stream, read, read.len() + 1).await?;
        };
        let line = read.split_to(line_len + 2);
        let size = std::str::from_utf8(&line[..line_len])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
            .context("a bad chunk size line")?;
        let chunk = take(stream, read, size + 2).await?;
        if size == 0 {
            return Ok(body.freeze());
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// The next `len` bytes.
async fn take(stream: &mut Box<dyn Stream>, read: &mut BytesMut, len: usize) -> anyhow::Result<Bytes> {
    fill(stream, read, len).await?;
    Ok(read.split_to(len).freeze())
}

/// Reads until at least `want` bytes are buffered.
async fn fill(stream: &mut Box<dyn Stream>, read: &mut BytesMut, want: usize) -> anyhow::Result<()> {
    while read.len() < want {
        // Never read into the sliver left at the end of the buffer: an answer cut in
        // two costs a second read. Once the answers before are dropped, reserving
        // moves what is left to the buffer's start rather than allocating.
        read.reserve((want - read.len()).max(READ_AT_LEAST));
        if stream.read_buf(read).await? == 0 {
            bail!("the server closed the connection before the whole answer");
        }
    }
    Ok(())
}

/// One request on a fresh connection: for control calls (`/flush`, `/metrics`).
pub async fn call(endpoint: &Endpoint, method: Method, path_and_query: &str) -> anyhow::Result<Answer> {
    let mut conn = Conn::open(endpoint).await?;
    conn.send(method, path_and_query, "text/plain", ChunkBody::default()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answers(wire: &'static [u8]) -> Vec<(u16, Bytes, bool)> {
        let (client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move { server.write_all(wire).await });
        let (mut stream, mut read): (Box<dyn Stream>, _) = (Box::new(client), BytesMut::new());
        let mut out = Vec::new();
        while let Ok((answer, keep_alive)) = read_answer(&mut stream, &mut read).await {
            out.push((answer.status.as_u16(), answer.body, keep_alive));
        }
        out
    }

    #[tokio::test]
    async fn a_body_of_more_slices_than_a_writev_takes_arrives_whole() {
        use crate::body::{encode, Framing};
        use crate::msg::Generator;
        let mut generator = Generator::new(7, 20 << 10);
        let messages: Vec<_> = (0..1500).map(|id| generator.message(id, (16 << 10) + 1 + id as usize)).collect();
        let body = encode(Framing::Frames, &messages);
        let expected: Vec<u8> = encode(Framing::Frames, &messages).into_chunks().iter().flatten().copied().collect();
        assert!(body.len() > INLINE_BODY);
        // A small duplex: every write is partial.
        let (client, mut server) = tokio::io::duplex(4096);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let head_end = |got: &[u8]| got.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4);
            while head_end(&got).is_none_or(|end| got.len() < end + expected.len()) {
                let mut buf = [0u8; 8192];
                let n = server.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended early");
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(&got[head_end(&got).unwrap()..], &expected[..], "the body, byte for byte");
            server.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n").await.unwrap();
            server
        });
        let (mut stream, mut out, mut read): (Box<dyn Stream>, _, _) = (Box::new(client), Vec::new(), BytesMut::new());
        let request = (Method::POST, "/messages", "application/vnd.spout.frames");
        let (answer, keep_alive) = exchange(&mut stream, &mut out, &mut read, request, body).await.unwrap();
        assert_eq!((answer.status.as_u16(), keep_alive), (202, true));
        reader.await.unwrap();
    }

    #[tokio::test]
    async fn answers_with_a_length_or_in_chunks_split_anywhere() {
        let got = answers(
            b"HTTP/1.1 202 Accepted\r\ncontent-length: 14\r\n\r\n{\"accepted\":1}\
              HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n1;x\r\nd\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(
            got,
            vec![(202, Bytes::from_static(b"{\"accepted\":1}"), true), (200, Bytes::from_static(b"abcd"), false)]
        );
        assert!(answers(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab").await.is_empty(), "cut short");
    }
}
