//! `Content-Encoding` of request bodies: `gzip`, `deflate` (the zlib format, as RFC 9110
//! defines it), `zstd` and `identity`.
//!
//! A coded body is decoded chunk by chunk as it arrives, into chunks of its own that
//! the framings then cut into messages, and the decoded size is held to a limit while
//! decoding: a zip bomb stops at the limit, costing no more memory than a plain body of
//! that size. An identity body is passed through as the chunks it arrived in (no copy).
//! Decoding is synchronous CPU work on the connection's task, bounded by the limit.

use std::io::{self, Write};

use bytes::Bytes;
use hyper::header::{HeaderMap, CONTENT_ENCODING};

/// What `Accept-Encoding` of a 415 lists.
pub const SUPPORTED: &str = "gzip, deflate, zstd, identity";

/// The largest zstd window accepted: 8 MiB, the most RFC 9659 lets an HTTP encoder
/// use. A frame asking for more would make the decoder allocate its window up front.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Decoded bytes are gathered in chunks of this size.
const CHUNK: usize = 64 * 1024;

/// The codings a request's body went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Deflate,
    Zstd,
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodingError {
    /// 415 `unsupported_encoding`.
    #[error("Content-Encoding {0:?} is not supported: send one of {SUPPORTED}")]
    Unsupported(String),
    /// 415 `unsupported_encoding`.
    #[error("Content-Encoding {0:?} stacks codings; send the body in one of {SUPPORTED}")]
    Stacked(String),
    /// 400 `bad_encoding`.
    #[error("the body is not valid {coding}: {reason}")]
    Corrupt { coding: &'static str, reason: String },
    /// 413 `too_large`: more (decoded) bytes than the limit.
    #[error("the body is over the limit of {limit} bytes")]
    OverLimit { limit: u64 },
}

impl Coding {
    /// The coding `Content-Encoding` names. Tokens are case-insensitive, `x-gzip`
    /// means `gzip` (RFC 9110 §8.4.1.3), and `identity` entries change nothing; two
    /// real codings stacked are refused rather than undone in turn.
    pub fn from_headers(headers: &HeaderMap) -> Result<Coding, EncodingError> {
        let mut coding = Coding::Identity;
        for value in headers.get_all(CONTENT_ENCODING) {
            let text = value
                .to_str()
                .map_err(|_| EncodingError::Unsupported(String::from_utf8_lossy(value.as_bytes()).into_owned()))?;
            for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                let this = match token.to_ascii_lowercase().as_str() {
                    "identity" => continue,
                    "gzip" | "x-gzip" => Coding::Gzip,
                    "deflate" => Coding::Deflate,
                    "zstd" => Coding::Zstd,
                    _ => return Err(EncodingError::Unsupported(token.to_owned())),
                };
                if coding != Coding::Identity {
                    return Err(EncodingError::Stacked(text.to_owned()));
                }
                coding = this;
            }
        }
        Ok(coding)
    }

    fn name(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate (zlib)",
            Coding::Zstd => "zstd",
        }
    }
}

/// Decodes one body, chunk by chunk, into at most `limit` bytes.
pub struct Decoder {
    coding: Coding,
    state: State,
}

enum State {
    Identity(Decoded),
    Gzip(flate2::write::MultiGzDecoder<Decoded>),
    Deflate(flate2::write::ZlibDecoder<Decoded>),
    Zstd(zstd::stream::write::Decoder<'static, Decoded>),
}

impl Decoder {
    pub fn new(coding: Coding, limit: u64) -> Self {
        let out = Decoded { chunks: Vec::new(), current: Vec::new(), total: 0, limit };
        let state = match coding {
            Coding::Identity => State::Identity(out),
            Coding::Gzip => State::Gzip(flate2::write::MultiGzDecoder::new(out)),
            Coding::Deflate => State::Deflate(flate2::write::ZlibDecoder::new(out)),
            Coding::Zstd => {
                let mut raw = zstd::stream::raw::Decoder::new().expect("a zstd context allocates");
                raw.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
                    .expect("the window limit is within zstd's range");
                State::Zstd(zstd::stream::write::Decoder::with_decoder(out, raw))
            }
        };
        Self { coding, state }
    }

    /// Takes the next chunk of the body as it arrived.
    pub fn push(&mut self, chunk: Bytes) -> Result<(), EncodingError> {
        let written = match &mut self.state {
            State::Identity(out) => return out.keep(chunk),
            State::Gzip(decoder) => decoder.write_all(&chunk),
            State::Deflate(decoder) => decoder.write_all(&chunk),
            State::Zstd(decoder) => decoder.write_all(&chunk),
        };
        written.map_err(|error| self.failed(error))
    }

    /// The whole decoded body, once the coded one has ended: an error if it ended
    /// inside the coded stream.
    pub fn finish(mut self) -> Result<Vec<Bytes>, EncodingError> {
        let finished = match &mut self.state {
            State::Identity(_) => Ok(()),
            State::Gzip(decoder) => decoder.try_finish(),
            State::Deflate(decoder) => decoder.try_finish(),
            State::Zstd(decoder) => decoder.do_finish(),
        };
        finished.map_err(|error| self.failed(error))?;
        let out = match &mut self.state {
            State::Identity(out) => out,
            State::Gzip(decoder) => decoder.get_mut(),
            State::Deflate(decoder) => decoder.get_mut(),
            State::Zstd(decoder) => decoder.get_mut(),
        };
        Ok(out.take())
    }

    fn failed(&self, error: io::Error) -> EncodingError {
        if let Some(over) = error.get_ref().and_then(|inner| inner.downcast_ref::<OverLimit>()) {
            return EncodingError::OverLimit { limit: over.0 };
        }
        // A decoder that has seen the end of its stream takes nothing more.
        let reason = match error.kind() {
            io::ErrorKind::WriteZero => "bytes follow the end of the compressed data".to_owned(),
            _ => error.to_string(),
        };
        EncodingError::Corrupt { coding: self.coding.name(), reason }
    }
}

/// Where decoded bytes go: chunks of [`CHUNK`] bytes, refusing any past the limit.
struct Decoded {
    chunks: Vec<Bytes>,
    current: Vec<u8>,
    total: u64,
    limit: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("over the limit of {0} decoded bytes")]
struct OverLimit(u64);

impl Decoded {
    fn count(&mut self, len: usize) -> Result<(), OverLimit> {
        self.total += len as u64;
        if self.total > self.limit {
            return Err(OverLimit(self.limit));
        }
        Ok(())
    }

    /// An identity chunk, kept as it arrived.
    fn keep(&mut self, chunk: Bytes) -> Result<(), EncodingError> {
        self.count(chunk.len()).map_err(|over| EncodingError::OverLimit { limit: over.0 })?;
        self.chunks.push(chunk);
        Ok(())
    }

    fn take(&mut self) -> Vec<Bytes> {
        if !self.current.is_empty() {
            // The last chunk is copied to its size: its buffer was made for CHUNK bytes.
            self.chunks.push(Bytes::copy_from_slice(&self.current));
            self.current = Vec::new();
        }
        std::mem::take(&mut self.chunks)
    }
}

impl Write for Decoded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.count(buf.len()).map_err(io::Error::other)?;
        let mut rest = buf;
        while !rest.is_empty() {
            if self.current.capacity() == 0 {
                self.current.reserve_exact(CHUNK);
            }
            let n = rest.len().min(CHUNK - self.current.len());
            self.current.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.current.len() == CHUNK {
                self.chunks.push(Bytes::from(std::mem::take(&mut self.current)));
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(CONTENT_ENCODING, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn encode(coding: Coding, plain: &[u8]) -> Vec<u8> {
        match coding {
            Coding::Identity => plain.to_vec(),
            Coding::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(plain).unwrap();
                e.finish().unwrap()
            }
            Coding::Deflate => {
                let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(plain).unwrap();
                e.finish().unwrap()
            }
            Coding::Zstd => {
                // With its checksum, as the zstd tool writes it: a flipped byte is then caught.
                let mut e = zstd::Encoder::new(Vec::new(), 1).unwrap();
                e.include_checksum(true).unwrap();
                e.write_all(plain).unwrap();
                e.finish().unwrap()
            }
        }
    }

    fn decode(coding: Coding, coded: &[u8], piece: usize, limit: u64) -> Result<Vec<u8>, EncodingError> {
        let mut decoder = Decoder::new(coding, limit);
        for chunk in coded.chunks(piece.max(1)) {
            decoder.push(Bytes::copy_from_slice(chunk))?;
        }
        Ok(decoder.finish()?.concat())
    }

    const ALL: [Coding; 4] = [Coding::Identity, Coding::Gzip, Coding::Deflate, Coding::Zstd];

    #[test]
    fn content_encoding_headers() {
        assert_eq!(Coding::from_headers(&HeaderMap::new()).unwrap(), Coding::Identity);
        assert_eq!(Coding::from_headers(&headers(&["GZip"])).unwrap(), Coding::Gzip);
        assert_eq!(Coding::from_headers(&headers(&["x-gzip"])).unwrap(), Coding::Gzip);
        assert_eq!(Coding::from_headers(&headers(&["identity, zstd"])).unwrap(), Coding::Zstd);
        assert_eq!(Coding::from_headers(&headers(&["deflate", "identity"])).unwrap(), Coding::Deflate);
        assert_eq!(
            Coding::from_headers(&headers(&["br"])).unwrap_err().to_string(),
            "Content-Encoding \"br\" is not supported: send one of gzip, deflate, zstd, identity"
        );
        assert!(matches!(Coding::from_headers(&headers(&["gzip, zstd"])), Err(EncodingError::Stacked(_))));
        assert!(matches!(Coding::from_headers(&headers(&["gzip", "gzip"])), Err(EncodingError::Stacked(_))));
    }

    #[test]
    fn every_coding_round_trips_in_any_pieces() {
        let plain: Vec<u8> = (0..300_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for coding in ALL {
            let coded = encode(coding, &plain);
            for piece in [1, 7, 4096, coded.len()] {
                assert_eq!(
                    decode(coding, &coded, piece, u64::MAX).unwrap(),
                    plain,
                    "{coding:?} in {piece}-byte pieces"
                );
            }
        }
    }

    #[test]
    fn identity_chunks_are_kept_as_they_came() {
        let chunk = Bytes::from_static(b"as it came");
        let mut decoder = Decoder::new(Coding::Identity, 100);
        decoder.push(chunk.clone()).unwrap();
        assert_eq!(decoder.finish().unwrap()[0].as_ptr(), chunk.as_ptr());
    }

    #[test]
    fn decoding_stops_at_the_limit() {
        let plain = vec![0u8; 10 << 20];
        for coding in ALL {
            let coded = encode(coding, &plain);
            match decode(coding, &coded, 8192, 1 << 20) {
                Err(EncodingError::OverLimit { limit }) => assert_eq!(limit, 1 << 20),
                other => panic!("{coding:?}: {other:?}"),
            }
            assert_eq!(decode(coding, &coded, 8192, 10 << 20).unwrap().len(), 10 << 20);
        }
    }

    #[test]
    fn truncated_corrupt_or_trailing_bodies_are_corrupt() {
        let plain = b"a message that will be cut short".repeat(10);
        for coding in [Coding::Gzip, Coding::Deflate, Coding::Zstd] {
            let coded = encode(coding, &plain);
            let truncated = decode(coding, &coded[..coded.len() - 3], 5, u64::MAX);
            assert!(matches!(truncated, Err(EncodingError::Corrupt { .. })), "{coding:?} truncated: {truncated:?}");
            let mut flipped = coded.clone();
            let middle = flipped.len() / 2;
            flipped[middle] ^= 0x55;
            flipped[coded.len() - 5] ^= 0x55;
            let corrupt = decode(coding, &flipped, 5, u64::MAX);
            assert!(matches!(corrupt, Err(EncodingError::Corrupt { .. })), "{coding:?} flipped: {corrupt:?}");
            let garbage = decode(coding, b"plainly not compressed", 5, u64::MAX);
            assert!(matches!(garbage, Err(EncodingError::Corrupt { .. })), "{coding:?} garbage: {garbage:?}");
            let mut trailing = coded.clone();
            trailing.extend_from_slice(b"junk after the end");
            let trailing = decode(coding, &trailing, 5, u64::MAX);
            assert!(matches!(trailing, Err(EncodingError::Corrupt { .. })), "{coding:?} trailing: {trailing:?}");
        }
    }

    #[test]
    fn concatenated_gzip_members_and_zstd_frames_decode_whole() {
        for coding in [Coding::Gzip, Coding::Zstd] {
            let coded = [encode(coding, b"first "), encode(coding, b"second")].concat();
            assert_eq!(decode(coding, &coded, 3, 100).unwrap(), b"first second");
        }
    }

    #[test]
    fn a_zstd_window_over_8_mib_is_refused() {
        let mut encoder = zstd::stream::raw::Encoder::new(1).unwrap();
        encoder.set_parameter(zstd::zstd_safe::CParameter::WindowLog(24)).unwrap();
        let mut coded = Vec::new();
        {
            let mut writer = zstd::stream::write::Encoder::with_encoder(&mut coded, encoder);
            writer.write_all(&[7u8; 100]).unwrap();
            writer.finish().unwrap();
        }
        let e = decode(Coding::Zstd, &coded, 4096, u64::MAX).unwrap_err();
        assert!(matches!(e, EncodingError::Corrupt { .. }), "{e:?}");
    }
}
