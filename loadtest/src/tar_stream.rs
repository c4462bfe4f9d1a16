//! The entries of tar archives read straight out of the read-back's buffer.
//!
//! The read-back checks a million small entries a second on the client's core, beside
//! the load itself. The `tar` crate zeroes a 32 KiB buffer to skip each entry's padding
//! and copies each entry into a vector of its own: two thirds of the reader's time with
//! `--layout message`. Here an entry whose bytes are already buffered is handed over in
//! place, and padding is consumed, not copied.
//!
//! What is read is what the sidecar, Python's `tarfile` and the `tar` crate write: ustar
//! and GNU headers, GNU long names, and PAX `path` records. An archive ends at a zero
//! block, or at the end of the stream between two entries (as Go's reader, Pachyderm's,
//! ends one there); the end anywhere else, or a header whose checksum fails, is an
//! error.

use std::borrow::Cow;
use std::io::{self, BufRead, ErrorKind};

const BLOCK: usize = 512;

/// Reads the entries of the archive whose first header block is `first` (from
/// [`next_archive`]), up to its end, handing each regular file's name and bytes to `file`; returns how many there
/// were. `scratch` holds an entry that is not wholly buffered.
pub fn read_archive(
    reader: &mut dyn BufRead,
    first: [u8; BLOCK],
    scratch: &mut Vec<u8>,
    mut file: impl FnMut(&str, &[u8]),
) -> io::Result<u64> {
    let mut files = 0;
    let mut header = first;
    // A long name (GNU `L` entry, or PAX `path`) for the entry after it.
    let mut long_name: Option<String> = None;
    loop {
        if is_zero(&header) {
            return Ok(files);
        }
        check_sum(&header)?;
        let size = size(&header)?;
        with_data(reader, size, scratch, |data| match header[156] {
            b'0' | 0 | b'7' => {
                let name = long_name.take().map_or_else(|| ustar_name(&header), Cow::Owned);
                file(&name, data);
                files += 1;
            }
            b'L' => long_name = Some(c_string(data).into_owned()),
            b'x' => long_name = pax_path(data).or(long_name.take()),
            _ => {}
        })?;
        skip(reader, padding(size))?;
        header = match read_block(reader)? {
            Some(block) => block,
            // The stream ended between two entries: the archive ends here.
            None => return Ok(files),
        };
    }
}

/// The first header block of the next archive: the zero blocks that end an archive
/// (two, or more up to a 10 KiB record as Python's `tarfile` pads) are skipped. None
/// if the stream ends first.
pub fn next_archive(reader: &mut dyn BufRead) -> io::Result<Option<[u8; BLOCK]>> {
    while let Some(block) = read_block(reader)? {
        if !is_zero(&block) {
            return Ok(Some(block));
        }
    }
    Ok(None)
}

fn is_zero(block: &[u8; BLOCK]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// The next block, or None if the stream ends before it starts.
fn read_block(reader: &mut dyn BufRead) -> io::Result<Option<[u8; BLOCK]>> {
    let mut block = [0u8; BLOCK];
    let mut filled = 0;
    while filled < BLOCK {
        match reader.read(&mut block[filled..])? {
            0 if filled == 0 => return Ok(None),
            0 => return Err(io::Error::new(ErrorKind::UnexpectedEof, "the stream ended inside a header")),
            n => filled += n,
        }
    }
    Ok(Some(block))
}

/// Calls `with` on the next `size` bytes: in place when the buffer holds them all.
fn with_data(reader: &mut dyn BufRead, size: u64, scratch: &mut Vec<u8>, with: impl FnOnce(&[u8])) -> io::Result<()> {
    let size = usize::try_from(size).map_err(|_| invalid("an entry too large to check"))?;
    let buffered = reader.fill_buf()?;
    if buffered.len() >= size {
        with(&buffered[..size]);
        reader.consume(size);
        return Ok(());
    }
    // Grown, never cleared: zeroing a 1 MiB entry's room before reading over it cost
    // the reader's core (the harness's, the 1 MiB runs' limit) 2 % of its time.
    if scratch.len() < size {
        scratch.resize(size, 0);
    }
    let data = &mut scratch[..size];
    reader.read_exact(data).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => io::Error::new(ErrorKind::UnexpectedEof, "the stream ended inside an entry"),
        _ => e,
    })?;
    with(data);
    Ok(())
}

fn skip(reader: &mut dyn BufRead, mut count: usize) -> io::Result<()> {
    while count > 0 {
        let buffered = reader.fill_buf()?;
        if buffered.is_empty() {
            return Err(io::Error::new(ErrorKind::UnexpectedEof, "the stream ended inside an entry's padding"));
        }
        let n = buffered.len().min(count);
        reader.consume(n);
        count -= n;
    }
    Ok(())
}

fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// The header's checksum: the sum of its bytes with the checksum field as spaces.
fn check_sum(header: &[u8; BLOCK]) -> io::Result<()> {
    let stored = octal(&header[148..156]).ok_or_else(|| invalid("a header's checksum field is not octal"))?;
    let bytes = |range: &[u8]| range.iter().map(|&b| u32::from(b)).sum::<u32>();
    let sum = u64::from(bytes(&header[..148]) + 8 * u32::from(b' ') + bytes(&header[156..]));
    match stored == sum {
        true => Ok(()),
        false => Err(invalid("a header's checksum does not match its bytes")),
    }
}

/// The size field: octal, or GNU's base-256 (its first byte's high bit set).
fn size(header: &[u8; BLOCK]) -> io::Result<u64> {
    let field = &header[124..136];
    if field[0] & 0x80 != 0 {
        return Ok(field[4..].iter().fold(0u64, |n, &b| n << 8 | u64::from(b)));
    }
    octal(field).ok_or_else(|| invalid("a header's size field is not octal"))
}

fn octal(field: &[u8]) -> Option<u64> {
    let mut digits = field.iter().skip_while(|&&b| b == b' ').take_while(|&&b| b != 0 && b != b' ');
    digits.try_fold(0u64, |n, &d| match d {
        b'0'..=b'7' => Some(n << 3 | u64::from(d - b'0')),
        _ => None,
    })
}

/// `prefix/name` for ustar headers (magic `ustar\0`), `name` for GNU ones.
fn ustar_name(header: &[u8; BLOCK]) -> Cow<'_, str> {
    let name = c_string(&header[..100]);
    if &header[257..263] != b"ustar\0" || header[345] == 0 {
        return name;
    }
    Cow::Owned(format!("{}/{name}", c_string(&header[345..500])))
}

/// The bytes up to the first NUL, borrowed when they are UTF-8 (names mostly are).
fn c_string(bytes: &[u8]) -> Cow<'_, str> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
}

/// The `path` of PAX records (`LEN path=VALUE\n` ...), if there is one.
fn pax_path(records: &[u8]) -> Option<String> {
    let mut rest = records;
    while let Some(space) = rest.iter().position(|&b| b == b' ') {
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        let record = rest.get(space + 1..len)?;
        if let Some(value) = record.strip_prefix(b"path=") {
            return Some(String::from_utf8_lossy(value.strip_suffix(b"\n").unwrap_or(value)).into_owned());
        }
        rest = &rest[len..];
    }
    None
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the `tar` crate writes: the kinds of header the read-back meets.
    fn archive(names: &[&str], pax: bool) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (i, name) in names.iter().enumerate() {
            let data = vec![b'a' + i as u8; 300 + i * 700];
            if pax {
                builder.append_pax_extensions([("path", name.as_bytes())]).unwrap();
            }
            let mut header = if i % 2 == 0 { tar::Header::new_gnu() } else { tar::Header::new_ustar() };
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            let short = if pax { "ignored" } else { name };
            builder.append_data(&mut header, short, &data[..]).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn read_all(bytes: &[u8], buffer: usize) -> io::Result<Vec<(String, Vec<u8>)>> {
        let mut reader = io::BufReader::with_capacity(buffer, bytes);
        let first = next_archive(&mut reader)?.expect("a first block");
        let mut found = Vec::new();
        let mut scratch = Vec::new();
        let files =
            read_archive(&mut reader, first, &mut scratch, |name, data| found.push((name.to_owned(), data.to_vec())))?;
        assert_eq!(files, found.len() as u64);
        Ok(found)
    }

    #[test]
    fn reads_what_the_tar_crate_writes_in_place_or_not() {
        let long = format!("{}/file", "d".repeat(150));
        let names = ["a.txt", "dir/b", long.as_str(), "c"];
        for pax in [false, true] {
            let bytes = archive(&names, pax);
            for buffer in [512, 4096, 1 << 20] {
                let found = read_all(&bytes, buffer).unwrap();
                let names_found: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
                assert_eq!(names_found, names, "pax {pax}, buffer {buffer}");
                for (i, (_, data)) in found.iter().enumerate() {
                    assert_eq!(data, &vec![b'a' + i as u8; 300 + i * 700]);
                }
            }
        }
    }

    #[test]
    fn the_end_between_entries_ends_the_archive_and_the_end_inside_one_is_an_error() {
        let bytes = archive(&["a", "b"], false);
        // The first entry: a header and 300 bytes padded to 512.
        assert_eq!(read_all(&bytes[..1024], 4096).unwrap().len(), 1);
        for cut in [1000, 1024 + 100, 1024 + 600] {
            let error = read_all(&bytes[..cut], 4096).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::UnexpectedEof, "cut at {cut}: {error}");
        }
    }

    #[test]
    fn a_flipped_byte_in_a_header_fails_its_checksum() {
        let mut bytes = archive(&["a", "b"], false);
        bytes[1024 + 3] ^= 1;
        let error = read_all(&bytes, 4096).unwrap_err();
        assert!(error.to_string().contains("checksum"), "{error}");
    }
}
