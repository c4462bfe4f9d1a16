//! A deliberately small HTTP/1.1 client over TCP or a Unix socket.
//!
//! The tests need to send exactly the bytes they mean, malformed ones included,
//! pipelined, or cut short, and to talk over Unix sockets; a full client library
//! would hide all of that. Ordinary requests go through it too: with a client crate
//! beside it (ureq has no Unix sockets; hyper's client is async) the tests would
//! speak HTTP two ways and convert between two kinds of answers, for no fewer lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A keep-alive connection.
pub struct Connection {
    reader: BufReader<Box<dyn Stream>>,
}

impl Connection {
    pub fn tcp(addr: &str) -> Self {
        Self::try_tcp(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    pub fn try_tcp(addr: &str) -> std::io::Result<Self> {
        Self::over_tcp(TcpStream::connect(addr)?)
    }

    /// A connection over a stream the test also uses otherwise (a clone that writes).
    pub fn over_tcp(stream: TcpStream) -> std::io::Result<Self> {
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        // Head and body go out in two writes: without this, Nagle's algorithm holds
        // the body until the server's delayed ACK, 40 ms per request.
        stream.set_nodelay(true)?;
        Ok(Self { reader: BufReader::new(Box::new(stream)) })
    }

    pub fn unix(path: &Path) -> Self {
        let stream = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Self { reader: BufReader::new(Box::new(stream)) }
    }

    /// Sends a request with a body and the given extra headers; reads the answer.
    pub fn request(&mut self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.try_request(method, target, headers, body).unwrap_or_else(|e| panic!("{method} {target}: no answer: {e}"))
    }

    /// Like [`Self::request`], for tests where a connection may fail.
    pub fn try_request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: sidecar\r\nContent-Length: {}\r\n", body.len());
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()?;
        self.try_read_response()
    }

    /// Writes raw bytes without reading an answer (a body sent in pieces).
    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Sends raw bytes as they are (for malformed requests); reads one answer.
    pub fn raw(&mut self, bytes: &[u8]) -> Response {
        let stream = self.reader.get_mut();
        stream.write_all(bytes).unwrap();
        stream.flush().unwrap();
        self.read_response()
    }

    pub fn read_response(&mut self) -> Response {
        self.try_read_response().unwrap_or_else(|e| panic!("no answer: {e}"))
    }

    /// Reads one answer; an error if the connection ends or breaks before it is whole.
    pub fn try_read_response(&mut self) -> std::io::Result<Response> {
        let mut body = Vec::new();
        let (status, headers) = self.try_read_streamed(|piece| body.extend_from_slice(piece))?;
        Ok(Response { status, headers, body })
    }

    /// Reads one answer, handing its body to `each` piece by piece as it arrives (a
    /// chunked body without its framing): for bodies too large to hold.
    pub fn try_read_streamed(&mut self, mut each: impl FnMut(&[u8])) -> std::io::Result<(u16, Vec<(String, String)>)> {
        let broken = |what: &str| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what.to_owned());
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(broken("the connection closed before the status line"));
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(broken("the connection closed inside the headers"));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header has a colon");
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        let header = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size = String::new();
                if self.reader.read_line(&mut size)? == 0 {
                    return Err(broken("the connection closed inside a chunked body"));
                }
                let hex = size.trim_end().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("bad chunk size line {size:?}"));
                if size == 0 {
                    while self.reader.read_line(&mut line)? > 2 {}
                    break;
                }
                self.read_exactly(size, &mut each)?;
                let mut crlf = [0; 2];
                self.reader.read_exact(&mut crlf)?;
            }
        } else {
            let length = header("content-length").map(|v| v.parse().unwrap()).unwrap_or(0);
            self.read_exactly(length, &mut each)?;
        }
        Ok((status, headers))
    }

    fn read_exactly(&mut self, mut left: usize, each: &mut impl FnMut(&[u8])) -> std::io::Result<()> {
        let mut buffer = vec![0; left.min(64 * 1024)];
        while left > 0 {
            let piece = &mut buffer[..left.min(64 * 1024)];
            self.reader.read_exact(piece)?;
            each(piece);
            left -= piece.len();
        }
        Ok(())
    }
}

/// One request on a fresh TCP connection.
pub fn request(addr: &str, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    Connection::tcp(addr).request(method, target, headers, body)
}

pub fn post(addr: &str, target: &str, content_type: &str, body: &[u8]) -> Response {
    request(addr, "POST", target, &[("Content-Type", content_type)], body)
}

pub fn get(addr: &str, target: &str) -> Response {
    request(addr, "GET", target, &[], b"")
}

/// Connects, sends `opening` and nothing more, then reads until the server closes
/// the connection; how long that took. Panics if it stays open for 10 s.
pub fn time_until_closed(addr: &str, opening: &[u8]) -> Duration {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(opening).expect("send the opening");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = std::time::Instant::now();
    // Whatever the server sends meanwhile (an HTTP/2 SETTINGS frame) is dropped.
    let closed = std::io::copy(&mut stream, &mut std::io::sink());
    assert!(closed.is_ok(), "the server did not close the connection: {closed:?}");
    started.elapsed()
}
