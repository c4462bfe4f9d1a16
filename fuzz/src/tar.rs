//! Checks for the tar encoder: random files (valid names, payloads in random chunks,
//! any mtime) are encoded, then read back with the `tar` crate's reader: the same
//! names, bytes and metadata in order, an archive of exactly the expected blocks
//! ending in two zero blocks, and every payload chunk shared rather than copied.

use std::io::Read;

use spout_sidecar::encode::tar::{encode, shape, Archive};
use spout_sidecar::encode::CommitFile;
use spout_sidecar::message::file_name;
use spout_sidecar::message::Payload;

use super::knobs::{cut, Knobs};

const BLOCK: u64 = 512;
/// The longest name a header's own name field holds; longer ones take a long-name entry.
const NAME_FIELD: u64 = 100;
const MAX_FILES: usize = 16;
const MAX_PAYLOAD: u16 = 2048;
/// CommitFile names are spelled from this alphabet, so that most are valid.
const NAME_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-/";

pub fn tar_encoder(data: &[u8]) {
    let mut knobs = Knobs::new(data);
    let mtime = knobs.u64();
    let sizes = knobs.sizes();
    let mut files = Vec::new();
    while !knobs.is_empty() && files.len() < MAX_FILES {
        let name_len = usize::from(knobs.byte());
        let name: String = knobs
            .take(name_len)
            .iter()
            .map(|&b| char::from(NAME_ALPHABET[usize::from(b) % NAME_ALPHABET.len()]))
            .collect();
        let payload_len = usize::from(knobs.u16() % MAX_PAYLOAD);
        let payload = Payload::from(cut(knobs.take(payload_len), &sizes));
        // The encoder is only ever given names that passed the validator.
        if file_name::validate(&name).is_ok() {
            files.push(CommitFile { name, data: payload });
        }
    }

    let archive = encode(&files, mtime);
    assert_shares_payloads(&archive, &files);
    let bytes: Vec<u8> = archive.chunks.iter().flat_map(|c| c.iter().copied()).collect();
    assert_eq!(bytes.len() as u64, shape(&files).len, "the shape told before encoding");
    assert_eq!(bytes.len() as u64, expected_len(&files), "unexpected archive length");
    assert_eq!(bytes.len() as u64 % BLOCK, 0);
    assert!(bytes[bytes.len() - 2 * BLOCK as usize..].iter().all(|&b| b == 0), "no closing zero blocks");
    assert_reads_back(&bytes, &files, mtime);
}

/// Each file is a header, a long-name entry when its name does not fit the header,
/// and its padded payload; two zero blocks close the archive.
fn expected_len(files: &[CommitFile]) -> u64 {
    let blocks = |bytes: u64| bytes.div_ceil(BLOCK) * BLOCK;
    let file = |f: &CommitFile| {
        let name = f.name.len() as u64;
        let long_name = if name > NAME_FIELD { BLOCK + blocks(name + 1) } else { 0 };
        long_name + BLOCK + blocks(f.data.len())
    };
    files.iter().map(file).sum::<u64>() + 2 * BLOCK
}

/// A payload of a block or more is shared, never copied; smaller ones are copied
/// next to their header by design (one buffer instead of three slices per file).
fn assert_shares_payloads(archive: &Archive, files: &[CommitFile]) {
    let large = files.iter().filter(|f| f.data.len() >= BLOCK);
    for chunk in large.flat_map(|f| f.data.chunks()) {
        let shared = archive.chunks.iter().any(|c| c.as_ptr() == chunk.as_ptr() && c.len() == chunk.len());
        assert!(shared, "a payload chunk of {} bytes was copied", chunk.len());
    }
}

fn assert_reads_back(bytes: &[u8], files: &[CommitFile], mtime: u64) {
    let mut reader = tar::Archive::new(bytes);
    let mut entries = reader.entries().expect("the archive opens");
    for file in files {
        let mut entry = entries.next().unwrap_or_else(|| panic!("{:?} is missing", file.name)).expect("an entry");
        assert_eq!(&*entry.path_bytes(), file.name.as_bytes());
        let header = entry.header();
        assert_eq!(header.entry_type(), tar::EntryType::Regular, "{}", file.name);
        assert_eq!((header.mode().unwrap(), header.mtime().unwrap()), (0o644, mtime), "{}", file.name);
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("the payload reads");
        assert_eq!(data, file.data.to_vec(), "{}", file.name);
    }
    assert!(entries.next().is_none(), "more entries than files");
}
