//! The messages the load generator sends, and the parser that recognises them in
//! whatever the sink committed.
//!
//! Every message describes itself, so a commit can be checked without keeping a copy
//! of what was sent:
//!
//! ```text
//! LT <run:8 hex> <id:16 hex> <len:8 hex> <crc:8 hex> : <filler>     (no spaces)
//! ```
//!
//! `len` is the whole message's length, so messages concatenated without separators
//! (`--layout batch` with frames) can still be split; `crc` is CRC-32 (IEEE, as
//! Python's `zlib.crc32`) of the first 34 bytes followed by the filler, so a flipped,
//! lost or added byte anywhere shows. The filler is printable (`[A-Za-z0-9._]`): never
//! a newline, never a multipart boundary, valid in a text body.

use std::collections::HashMap;

use bytes::Bytes;

/// Bytes before the filler.
pub const HEADER_LEN: usize = 43;
/// The part of the header the checksum covers.
const SIGNED_LEN: usize = 34;
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._";
/// Filler slices start at one of this many offsets into the pool.
const OFFSETS: usize = 4096;
/// Fillers up to this long are checksummed with their header; longer ones' checksums
/// are cached and combined with it, so large messages do not bound the generator.
const DIRECT_CRC_MAX: usize = 4096;

/// One generated message: a fresh header and a slice of the shared filler pool, so
/// even a 1 MiB message costs the generator no copy.
#[derive(Debug, Clone)]
pub struct Generated {
    pub id: u64,
    pub head: [u8; HEADER_LEN],
    pub filler: Bytes,
}

impl Generated {
    /// Its length in bytes: never zero, the header alone is 43.
    pub fn size(&self) -> usize {
        self.head.len() + self.filler.len()
    }

    pub fn to_vec(&self) -> Vec<u8> {
        [&self.head[..], &self.filler[..]].concat()
    }
}

/// Makes messages for one run. Checksums of filler slices are cached, so a stream of
/// large messages is not bounded by the generator's CRC.
#[derive(Clone)]
pub struct Generator {
    run: u32,
    pool: Bytes,
    filler_crcs: HashMap<(usize, usize), u32>,
}

impl Generator {
    /// `max_len` is the largest message this generator will be asked for.
    pub fn new(run: u32, max_len: usize) -> Self {
        let mut rng = fastrand::Rng::with_seed(u64::from(run));
        let pool: Vec<u8> = (0..max_len + OFFSETS).map(|_| ALPHABET[rng.usize(..64)]).collect();
        Self { run, pool: pool.into(), filler_crcs: HashMap::new() }
    }

    /// Message `id` of exactly `len` bytes (at least [`HEADER_LEN`]).
    pub fn message(&mut self, id: u64, len: usize) -> Generated {
        let len = len.max(HEADER_LEN);
        let filler_len = len - HEADER_LEN;
        let offset = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % OFFSETS;
        let filler = self.pool.slice(offset..offset + filler_len);
        let mut head = [0u8; HEADER_LEN];
        head[..2].copy_from_slice(b"LT");
        put_hex(&mut head[2..10], u64::from(self.run));
        put_hex(&mut head[10..26], id);
        put_hex(&mut head[26..34], len as u64);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[..SIGNED_LEN]);
        if filler_len <= DIRECT_CRC_MAX {
            // Cheaper than a lookup and a combine, which cost the generator half its
            // time at 100 B and made it the slower side of batched runs.
            crc.update(&filler);
        } else {
            if self.filler_crcs.len() > 65_536 {
                self.filler_crcs.clear();
            }
            let filler_crc = *self.filler_crcs.entry((offset, filler_len)).or_insert_with(|| crc32fast::hash(&filler));
            crc.combine(&crc32fast::Hasher::new_with_initial_len(filler_crc, filler_len as u64));
        }
        put_hex(&mut head[34..42], u64::from(crc.finalize()));
        head[42] = b':';
        Generated { id, head, filler }
    }
}

/// `value`'s last `out.len()` hex digits, into `out`.
fn put_hex(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(value & 0xf) as usize];
        value >>= 4;
    }
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = (d as char).to_digit(16)?;
        Some(acc << 4 | u64::from(v))
    })
}

/// The identity of a message found intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub run: u32,
    pub id: u64,
    pub len: usize,
}

/// Checks the message that starts `buf` (which may go on with more messages) and
/// returns who it is and how long. Errors say what is wrong, for the report.
pub fn parse(buf: &[u8]) -> Result<Found, String> {
    if buf.len() < HEADER_LEN || &buf[..2] != b"LT" || buf[HEADER_LEN - 1] != b':' {
        let shown = String::from_utf8_lossy(&buf[..buf.len().min(48)]).into_owned();
        return Err(format!("not a loadtest message header: {shown:?}"));
    }
    let field = |range: std::ops::Range<usize>| parse_hex(&buf[range]).ok_or("bad hex in header");
    let run = field(2..10)? as u32;
    let id = field(10..26)?;
    let len = field(26..34)? as usize;
    let want_crc = field(34..42)? as u32;
    if len < HEADER_LEN || len > buf.len() {
        return Err(format!("message {id:#x} says {len} bytes, {} are there", buf.len()));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&buf[..SIGNED_LEN]);
    crc.update(&buf[HEADER_LEN..len]);
    if crc.finalize() != want_crc {
        return Err(format!("message {id:#x} ({len} bytes): checksum mismatch, bytes changed"));
    }
    Ok(Found { run, id, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_messages_parse_back_and_damage_shows() {
        let mut generator = Generator::new(0xfeed, 5000);
        for (id, len) in [(0u64, 10usize), (1, 43), (7, 100), (u64::MAX >> 1, 5000)] {
            let bytes = generator.message(id, len).to_vec();
            assert_eq!(bytes.len(), len.max(HEADER_LEN));
            assert!(!bytes.contains(&b'\n'));
            assert_eq!(parse(&bytes), Ok(Found { run: 0xfeed, id, len: bytes.len() }));
            let mut damaged = bytes.clone();
            *damaged.last_mut().unwrap() ^= 1;
            let why = parse(&damaged).unwrap_err();
            assert!(len <= HEADER_LEN || why.contains("checksum"), "{why}");
            assert!(parse(&bytes[..bytes.len() - 1]).is_err(), "truncated");
        }
        let mut two = generator.message(1, 60).to_vec();
        two.extend(generator.message(2, 70).to_vec());
        assert_eq!(parse(&two).unwrap().len, 60);
        assert_eq!(parse(&two[60..]).unwrap().id, 2);
    }

    #[test]
    fn checksum_is_zlib_crc32_of_header_and_filler() {
        // The Python baseline computes it with zlib.crc32 the same way.
        let bytes = Generator::new(1, 100).message(3, 100).to_vec();
        let mut signed = bytes[..SIGNED_LEN].to_vec();
        signed.extend_from_slice(&bytes[HEADER_LEN..]);
        let written = u32::from_str_radix(std::str::from_utf8(&bytes[34..42]).unwrap(), 16).unwrap();
        assert_eq!(crc32fast::hash(&signed), written);
    }
}
