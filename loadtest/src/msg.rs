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
pub const SIGNED_LEN: usize = 34;
/// Where the id's hex digits sit in the header, and how many there are.
pub const ID_AT: usize = 10;
pub const ID_DIGITS: usize = 16;
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

/// What each digit of the id adds to the checksum of messages of one length.
///
/// CRC-32 is affine: changing bytes at one place changes the checksum by the same
/// amount whatever the other bytes are, given the length. So the checksum of a
/// message is that of its twin whose id digits are all `0`, XORed with one entry of
/// this table per digit: sixteen lookups instead of a pass over the message.
#[derive(Clone)]
pub struct IdCrc {
    /// Position-major: `table[position * 16 + digit]`.
    table: Vec<u32>,
}

impl IdCrc {
    /// For messages whose signed bytes (header and filler) are `signed_len` long.
    pub fn new(signed_len: usize) -> Self {
        let mut probe = vec![0u8; signed_len];
        let zero_crc = crc32fast::hash(&probe);
        let mut table = Vec::with_capacity(ID_DIGITS * 16);
        for position in 0..ID_DIGITS {
            for digit in b"0123456789abcdef" {
                probe[ID_AT + position] = digit ^ b'0';
                table.push(crc32fast::hash(&probe) ^ zero_crc);
            }
            probe[ID_AT + position] = 0;
        }
        Self { table }
    }

    /// The checksum of the message with this `id` whose twin with id 0 has `base_crc`.
    pub fn with_id(&self, base_crc: u32, id: u64) -> u32 {
        (0..ID_DIGITS).fold(base_crc, |crc, position| {
            let digit = (id >> (4 * (ID_DIGITS - 1 - position))) & 0xf;
            crc ^ self.table[position * 16 + digit as usize]
        })
    }

    pub fn table(&self) -> &[u32] {
        &self.table
    }
}

/// Makes messages for one run. Checksums of filler slices are cached, so a stream of
/// large messages is not bounded by the generator's CRC; small messages of the length
/// first asked for are signed from a table ([`IdCrc`]), since at 100 B the CRC was
/// more than half of the generator's time, on the core that batched runs saturate.
#[derive(Clone)]
pub struct Generator {
    run: u32,
    pool: Bytes,
    filler_crcs: HashMap<(usize, usize), u32>,
    /// The first small length asked for: runs mostly use one.
    fixed: Option<FixedLen>,
}

/// Signing messages of one filler length by table: the checksum of each filler
/// offset's id-0 message, as it is first needed, and the id table.
#[derive(Clone)]
struct FixedLen {
    filler_len: usize,
    id_crc: IdCrc,
    base_crcs: Vec<Option<u32>>,
}

impl Generator {
    /// `max_len` is the largest message this generator will be asked for.
    pub fn new(run: u32, max_len: usize) -> Self {
        let mut rng = fastrand::Rng::with_seed(u64::from(run));
        let pool: Vec<u8> = (0..max_len + OFFSETS).map(|_| ALPHABET[rng.usize(..64)]).collect();
        Self { run, pool: pool.into(), filler_crcs: HashMap::new(), fixed: None }
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
        let crc = if filler_len <= DIRECT_CRC_MAX {
            self.small_crc(&head, id, offset, &filler)
        } else {
            if self.filler_crcs.len() > 65_536 {
                self.filler_crcs.clear();
            }
            let filler_crc = *self.filler_crcs.entry((offset, filler_len)).or_insert_with(|| crc32fast::hash(&filler));
            let mut crc = crc32fast::Hasher::new();
            crc.update(&head[..SIGNED_LEN]);
            crc.combine(&crc32fast::Hasher::new_with_initial_len(filler_crc, filler_len as u64));
            crc.finalize()
        };
        put_hex(&mut head[34..42], u64::from(crc));
        head[42] = b':';
        Generated { id, head, filler }
    }

    /// The checksum of a message with a short filler: by table if it has the fixed
    /// length, else over its bytes (cheaper than a cached filler's lookup and combine).
    fn small_crc(&mut self, head: &[u8; HEADER_LEN], id: u64, offset: usize, filler: &[u8]) -> u32 {
        let signed_len = SIGNED_LEN + filler.len();
        let fixed = self.fixed.get_or_insert_with(|| FixedLen {
            filler_len: filler.len(),
            id_crc: IdCrc::new(signed_len),
            base_crcs: vec![None; OFFSETS],
        });
        if fixed.filler_len != filler.len() {
            return signed_crc(head, filler);
        }
        let base_crc = *fixed.base_crcs[offset].get_or_insert_with(|| {
            let mut twin = *head;
            twin[ID_AT..ID_AT + ID_DIGITS].fill(b'0');
            signed_crc(&twin, filler)
        });
        fixed.id_crc.with_id(base_crc, id)
    }
}

fn signed_crc(head: &[u8; HEADER_LEN], filler: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head[..SIGNED_LEN]);
    crc.update(filler);
    crc.finalize()
}

/// `value`'s last `out.len()` hex digits, into `out`.
fn put_hex(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// Each byte's value as a lowercase hex digit, or `NOT_HEX`: a lookup, since parsing
/// the headers is a good part of what the reader does for small messages.
const HEX_VALUE: [u8; 256] = {
    let mut values = [NOT_HEX; 256];
    let mut digit = 0;
    while digit < 16 {
        values[b"0123456789abcdef"[digit] as usize] = digit as u8;
        digit += 1;
    }
    values
};
const NOT_HEX: u8 = 0xff;

fn parse_hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| match HEX_VALUE[d as usize] {
        NOT_HEX => None,
        v => Some(acc << 4 | u64::from(v)),
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

    /// The table-assembled checksum is the one computed over the bytes, for ids whose
    /// digits are spread over both halves, at the fixed length and at others.
    #[test]
    fn checksums_by_table_are_the_checksums_of_the_bytes() {
        let mut generator = Generator::new(7, 300);
        for len in [100, 100, 99, 300, 100] {
            for id in [0u64, 1, 0xf, 0x1234_5678_9abc_def0, u64::MAX >> 11, 4095, 4096] {
                let bytes = generator.message(id, len).to_vec();
                let mut signed = bytes[..SIGNED_LEN].to_vec();
                signed.extend_from_slice(&bytes[HEADER_LEN..]);
                assert_eq!(&bytes[34..42], format!("{:08x}", crc32fast::hash(&signed)).as_bytes(), "{id:#x}, {len} B");
                let base: Vec<u8> =
                    [&bytes[..ID_AT], &[b'0'; ID_DIGITS], &bytes[ID_AT + ID_DIGITS..SIGNED_LEN], &bytes[HEADER_LEN..]]
                        .concat();
                assert_eq!(IdCrc::new(signed.len()).with_id(crc32fast::hash(&base), id), crc32fast::hash(&signed));
            }
        }
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
