//! Telling an HTTP/2 connection from an HTTP/1.1 one before hyper reads it: an
//! HTTP/2 client (h2c with prior knowledge, or `h2` chosen by ALPN) opens with a
//! fixed 24-byte preface.
//!
//! hyper-util's `auto` builder reads the preface the same way, but then hands the
//! 24 bytes to hyper's first read on their own. hyper reads into an 8 KiB buffer; on
//! its next read it finds 24 bytes already there and reserves 8 KiB more, which grows
//! the buffer to 16 KiB for the life of the connection, two thirds of what an idle
//! HTTP/1.1 connection held. Here the bytes read go back in the same read as what
//! follows them, and hyper's buffer stays at 8 KiB.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
}

/// Reads until the connection's first bytes are HTTP/2's preface or cannot be (or
/// the stream ends: HTTP/1.1 then sees the end). The stream comes back with those
/// bytes put back in front.
pub async fn read_version<S: AsyncRead + Unpin>(mut stream: S) -> io::Result<(Version, Prefixed<S>)> {
    let mut read = [0u8; PREFACE.len()];
    let mut filled = 0;
    while filled < read.len() {
        let n = stream.read(&mut read[filled..]).await?;
        filled += n;
        if n == 0 || read[..filled] != PREFACE[..filled] {
            break;
        }
    }
    let version = if read[..filled] == PREFACE[..] { Version::Http2 } else { Version::Http1 };
    Ok((version, Prefixed { read, at: 0, filled, after: None, inner: stream }))
}

/// A stream with the bytes [`read_version`] read put back in front.
pub struct Prefixed<S> {
    read: [u8; PREFACE.len()],
    /// How much of `read` has been given back.
    at: usize,
    filled: usize,
    /// A failed read past the prefix, answered on the next read: the one that
    /// came across it had bytes to give.
    after: Option<io::Error>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(error) = this.after.take() {
            return Poll::Ready(Err(error));
        }
        if this.at == this.filled {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = (this.filled - this.at).min(buf.remaining());
        buf.put_slice(&this.read[this.at..this.at + n]);
        this.at += n;
        // What followed the prefix, if it has come, in the same read. Pending leaves
        // the waker registered; the prefix is answered now either way.
        if this.at == this.filled && buf.remaining() > 0 {
            if let Poll::Ready(Err(error)) = Pin::new(&mut this.inner).poll_read(cx, buf) {
                this.after = Some(error);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// What `read_version` says of `sent` (written in `pieces`), and what one read of
    /// 8 KiB then gives, and the rest.
    async fn sniff(pieces: &[&[u8]]) -> (Version, Vec<u8>, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for piece in pieces {
                client.write_all(&piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let (version, mut stream) = read_version(server).await.unwrap();
        writer.await.unwrap();
        let mut first = vec![0; 8192];
        let n = stream.read(&mut first).await.unwrap();
        first.truncate(n);
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        (version, first, rest)
    }

    #[tokio::test]
    async fn http1_comes_back_whole_in_one_read() {
        let request = b"POST /messages HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
        let (version, first, rest) = sniff(&[request]).await;
        assert_eq!(version, Version::Http1);
        assert_eq!(first, request, "the bytes read to tell the version and what follows, in one read");
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn the_preface_is_http2_however_it_arrives() {
        let sent = [&PREFACE[..], b"\x00\x00\x00\x04"].concat();
        let (version, first, rest) = sniff(&[&sent[..3], &sent[3..20], &sent[20..]]).await;
        assert_eq!(version, Version::Http2);
        assert_eq!([first, rest].concat(), sent);
    }

    #[tokio::test]
    async fn a_start_like_the_preface_that_turns_away_is_http1() {
        let sent = b"PRI * HTTP/1.1\r\n\r\n";
        let (version, first, rest) = sniff(&[&sent[..2], &sent[2..]]).await;
        assert_eq!(version, Version::Http1);
        assert_eq!([first, rest].concat(), sent);
        let (version, first, _) = sniff(&[b"PR"]).await;
        assert_eq!((version, first), (Version::Http1, b"PR".to_vec()), "the stream ended inside the preface");
        let (version, first, _) = sniff(&[]).await;
        assert_eq!((version, first), (Version::Http1, Vec::new()));
    }
}
