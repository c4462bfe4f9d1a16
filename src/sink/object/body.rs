//! What a batch becomes in the store: its objects (keys and the payload slices
//! each holds), and each object's stored bytes cut into upload parts, compressed
//! or not.
//!
//! Uncompressed parts are slices of the payloads as they arrived (nothing copied);
//! compressed parts are produced as the upload asks for them, so at most the parts
//! in flight are held compressed, however large the object.

use std::io::{self, Write};

use bytes::Bytes;
use object_store::path::Path;

use super::{Compression, ObjectFormat};
use crate::ack::ObjectKeys;
use crate::encode::{self, CommitFile};
use crate::message::file_name;

/// One object of a commit.
#[derive(Debug)]
pub struct Planned {
    pub key: Path,
    /// The commit's files it holds: one, or every file of a tar object.
    pub files: Vec<String>,
    /// Its bytes before compression, as the slices they arrived in.
    pub chunks: Vec<Bytes>,
}

/// How a commit's files become objects.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub format: ObjectFormat,
    pub compression: Option<Compression>,
    pub overwrite: bool,
}

impl Shape {
    /// Where the commit `prefix` (`DIR/<commit id>`) of the batch from `first_seq`
    /// stores its files.
    pub fn keys(&self, prefix: &str, first_seq: u64) -> ObjectKeys {
        let suffix = self.compression.map_or("", Compression::suffix);
        match self.format {
            ObjectFormat::Files => ObjectKeys::PerFile { prefix: prefix.to_owned(), suffix },
            ObjectFormat::Tar => {
                ObjectKeys::OneObject(format!("{prefix}/{}.tar{suffix}", file_name::batch_name(first_seq)))
            }
        }
    }
}

/// The objects holding `files` at `keys`.
pub fn plan(files: &[CommitFile], keys: &ObjectKeys, overwrite: bool) -> Vec<Planned> {
    match keys {
        ObjectKeys::PerFile { .. } => encode::merge_by_name(files, overwrite)
            .into_iter()
            .map(|(name, payloads)| Planned {
                key: Path::from(keys.key(name)),
                files: vec![name.to_owned()],
                chunks: payloads.iter().flat_map(|p| p.chunks().iter().cloned()).collect(),
            })
            .collect(),
        ObjectKeys::OneObject(key) => vec![Planned {
            key: Path::from(key.as_str()),
            files: files.iter().map(|f| f.name.clone()).collect(),
            chunks: encode::tar::encode_now(files).chunks,
        }],
    }
}

/// An object's stored bytes in parts of about `part_size`, with their CRC32C.
pub struct Parts<'a> {
    chunks: std::slice::Iter<'a, Bytes>,
    /// What is left of a chunk cut at a part boundary.
    rest: Option<Bytes>,
    encoder: Option<Encoder>,
    part_size: usize,
    finished: bool,
    crc: u32,
    stored: u64,
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn new(compression: Compression) -> io::Result<Self> {
        Ok(match compression {
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast())),
            Compression::Zstd => Encoder::Zstd(zstd::Encoder::new(Vec::new(), zstd::DEFAULT_COMPRESSION_LEVEL)?),
        })
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    /// The compressed bytes so far, taken out.
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        })
    }

    fn pending(&self) -> usize {
        match self {
            Encoder::Gzip(e) => e.get_ref().len(),
            Encoder::Zstd(e) => e.get_ref().len(),
        }
    }

    fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<'a> Parts<'a> {
    pub fn new(object: &'a Planned, compression: Option<Compression>, part_size: usize) -> io::Result<Self> {
        Ok(Self {
            chunks: object.chunks.iter(),
            rest: None,
            encoder: compression.map(Encoder::new).transpose()?,
            part_size,
            finished: false,
            crc: 0,
            stored: 0,
        })
    }

    /// The next part; `None` once every byte was given out (an empty object is one
    /// empty part).
    pub fn next_part(&mut self) -> io::Result<Option<Vec<Bytes>>> {
        if self.finished {
            return Ok(None);
        }
        let part = match self.encoder.is_some() {
            true => self.next_compressed()?,
            false => self.next_slices(),
        };
        for chunk in &part {
            self.crc = crc32c::crc32c_append(self.crc, chunk);
            self.stored += chunk.len() as u64;
        }
        Ok(Some(part))
    }

    /// The stored size and CRC32C (8 hex digits) of every part given out. CRC32C, not
    /// a cryptographic hash: it finds a torn or damaged object as surely, and the
    /// hardware computes it several times faster than the SHA-256 the S3 client
    /// already spends on signing every byte.
    pub fn digest(self) -> (u64, String) {
        (self.stored, format!("{:08x}", self.crc))
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        self.rest.take().or_else(|| self.chunks.next().cloned())
    }

    fn next_slices(&mut self) -> Vec<Bytes> {
        let mut part = Vec::new();
        let mut size = 0;
        while size < self.part_size {
            let Some(mut chunk) = self.next_chunk() else {
                self.finished = true;
                break;
            };
            if size + chunk.len() > self.part_size {
                self.rest = Some(chunk.split_off(self.part_size - size));
            }
            size += chunk.len();
            part.push(chunk);
        }
        if self.rest.is_none() && self.chunks.len() == 0 {
            self.finished = true;
        }
        part
    }

    fn next_compressed(&mut self) -> io::Result<Vec<Bytes>> {
        let encoder = self.encoder.as_mut().expect("compressing");
        while encoder.pending() < self.part_size {
            match self.rest.take().or_else(|| self.chunks.next().cloned()) {
                Some(chunk) => encoder.write(&chunk)?,
                None => {
                    self.finished = true;
                    let last = self.encoder.take().expect("compressing").finish()?;
                    return Ok(vec![Bytes::from(last)]);
                }
            }
        }
        Ok(vec![Bytes::from(encoder.take())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn object(chunks: &[&[u8]]) -> Planned {
        Planned {
            key: Path::from("k"),
            files: vec![],
            chunks: chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect(),
        }
    }

    fn all_parts(object: &Planned, compression: Option<Compression>, size: usize) -> (Vec<Vec<u8>>, u64, String) {
        let mut parts = Parts::new(object, compression, size).unwrap();
        let mut out = Vec::new();
        while let Some(part) = parts.next_part().unwrap() {
            out.push(part.concat());
        }
        let (stored, crc) = parts.digest();
        (out, stored, crc)
    }

    #[test]
    fn raw_parts_are_slices_cut_at_the_part_size() {
        let data = object(&[b"abcde", b"fg", b"hijklmn"]);
        let (parts, stored, crc) = all_parts(&data, None, 4);
        assert_eq!(parts, [b"abcd".to_vec(), b"efgh".to_vec(), b"ijkl".to_vec(), b"mn".to_vec()]);
        assert_eq!(stored, 14);
        assert_eq!(crc, format!("{:08x}", crc32c::crc32c(b"abcdefghijklmn")));
        let (.., check) = all_parts(&object(&[b"1234", b"56789"]), None, 3);
        assert_eq!(check, "e3069283", "CRC32C's check value, of 123456789");
        let (parts, ..) = all_parts(&data, None, 1 << 20);
        assert_eq!(parts.len(), 1);
        let (parts, stored, _) = all_parts(&object(&[]), None, 4);
        assert_eq!((parts, stored), (vec![vec![]], 0));
    }

    #[test]
    fn compressed_parts_decompress_to_the_original() {
        // Pseudo-random, so that it does not compress into one part.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let original: Vec<u8> = (0..400_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let data = object(&original.chunks(7_000).collect::<Vec<_>>());
        for compression in [Compression::Gzip, Compression::Zstd] {
            let (parts, stored, _) = all_parts(&data, Some(compression), 64 << 10);
            assert!(parts.len() > 1, "{compression:?} made {} parts", parts.len());
            let stored_bytes = parts.concat();
            assert_eq!(stored_bytes.len() as u64, stored);
            let mut back = Vec::new();
            match compression {
                Compression::Gzip => flate2::read::GzDecoder::new(&stored_bytes[..]).read_to_end(&mut back).unwrap(),
                Compression::Zstd => zstd::Decoder::new(&stored_bytes[..]).unwrap().read_to_end(&mut back).unwrap(),
            };
            assert_eq!(back, original);
        }
    }
}
