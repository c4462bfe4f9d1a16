//! Zero-copy tar encoding: one commit's files become one archive, as a list of
//! slices for vectored writes.
//!
//! Each file is a 512-byte header, its payload slices exactly as they arrived, and
//! zero padding up to the next 512-byte boundary; the archive ends with two zero
//! blocks. Names over 100 bytes (up to the 255 a file name may have) get a GNU long-name
//! entry (`././@LongLink`, type `L`) before their header, which Go's `archive/tar`
//! (Pachyderm), GNU tar, bsdtar and the `tar` crate all read.
//!
//! Where bytes are still copied, and why: the headers (and long names) are built
//! into one buffer per archive, because a header has to exist somewhere as bytes;
//! that is about 512 bytes per file and one allocation per archive. Every file's
//! header starts as a copy of one made per archive, with the fields all files share
//! (type, mode, owner, mtime) already formatted: formatting a numeric field costs
//! an allocation in the `tar` crate, and a header has six of them, so only the name,
//! size and checksum are written per file. Padding and the
//! closing blocks are slices of a static zero block. Payload bytes are never copied
//! here; the only copy left is the kernel's, from these slices into the pipe or file.

use bytes::{Bytes, BytesMut};
use tar::{EntryType, Header};

use super::CommitFile;

pub const BLOCK: usize = 512;
/// The longest name a header's own name field holds.
const NAME_FIELD: usize = 100;
const LONG_LINK: &[u8] = b"././@LongLink";
/// Padding and the end-of-archive marker are sliced from here.
static ZEROS: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// A complete tar archive as slices to write in order: headers, payload slices
/// (shared, not copied), padding and the closing zero blocks.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    pub chunks: Vec<Bytes>,
    pub len: u64,
    /// The most bytes one file takes: its headers, payload and padding. From any
    /// byte of the archive, the next header (or end marker) is at most this far.
    pub longest_entry: u64,
}

impl Archive {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len() as u64;
        self.chunks.push(chunk);
    }

    fn pad(&mut self, written: u64) {
        let tail = (written % BLOCK as u64) as usize;
        if tail != 0 {
            self.push(Bytes::from_static(&ZEROS[..BLOCK - tail]));
        }
    }
}

/// Encodes one commit's files as one archive stamped with the current time.
pub fn encode_now(files: &[CommitFile]) -> Archive {
    encode(files, crate::message::unix_nanos() / 1_000_000_000)
}

/// Encodes one commit's files as one archive; `mtime` in seconds since the epoch.
pub fn encode(files: &[CommitFile], mtime: u64) -> Archive {
    let mut headers = BytesMut::with_capacity(files.iter().map(|f| header_len(&f.name)).sum());
    let regular = header(EntryType::Regular, mtime);
    for file in files {
        write_headers(&mut headers, &regular, file);
    }
    let mut headers = headers.freeze();
    let payload_chunks: usize = files.iter().map(|f| f.data.chunks().len()).sum();
    let chunks = Vec::with_capacity(payload_chunks + 2 * files.len() + 1);
    let mut archive = Archive { chunks, len: 0, longest_entry: 0 };
    for file in files {
        let entry = header_len(&file.name) as u64 + file.data.len().div_ceil(BLOCK as u64) * BLOCK as u64;
        archive.longest_entry = archive.longest_entry.max(entry);
        archive.push(headers.split_to(header_len(&file.name)));
        for chunk in file.data.chunks() {
            archive.push(chunk.clone());
        }
        archive.pad(file.data.len());
    }
    archive.push(Bytes::from_static(&ZEROS));
    archive
}

/// The bytes of metadata before a file's payload: its header, and for a long name
/// the long-name entry (header plus the NUL-terminated name, padded) before it.
fn header_len(name: &str) -> usize {
    if name.len() <= NAME_FIELD {
        BLOCK
    } else {
        2 * BLOCK + (name.len() + 1).div_ceil(BLOCK) * BLOCK
    }
}

/// Appends `file`'s header (after its long-name entry if it needs one), made from
/// `regular`, the archive's header with no name, size or checksum yet.
fn write_headers(out: &mut BytesMut, regular: &Header, file: &CommitFile) {
    let name = file.name.as_bytes();
    if name.len() > NAME_FIELD {
        // GNU tar counts the terminating NUL in the long name's size.
        let mut long = header(EntryType::GNULongName, 0);
        out.extend_from_slice(named(&mut long, LONG_LINK, name.len() as u64 + 1).as_bytes());
        out.extend_from_slice(name);
        let padded = (name.len() + 1).div_ceil(BLOCK) * BLOCK;
        out.extend_from_slice(&ZEROS[..padded - name.len()]);
    }
    out.extend_from_slice(named(&mut regular.clone(), name, file.data.len()).as_bytes());
}

/// A GNU header of `kind` with the fields every file of an archive shares.
fn header(kind: EntryType, mtime: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header
}

/// Completes `header` for `name` (cut to the name field when a long-name entry
/// carries it) and `size`.
fn named<'h>(header: &'h mut Header, name: &[u8], size: u64) -> &'h Header {
    let field = &mut header.as_old_mut().name;
    let kept = name.len().min(NAME_FIELD);
    field[..kept].copy_from_slice(&name[..kept]);
    header.set_size(size);
    header.set_cksum();
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Payload;
    use proptest::prelude::*;
    use std::io::Read;

    fn file(name: &str, chunks: &[&[u8]]) -> CommitFile {
        CommitFile {
            name: name.into(),
            data: chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect::<Vec<_>>().into(),
        }
    }

    fn flatten(archive: &Archive) -> Vec<u8> {
        let bytes: Vec<u8> = archive.chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(bytes.len() as u64, archive.len);
        bytes
    }

    /// Reads an archive back with the `tar` crate: (name, bytes, mode, mtime) per entry.
    fn read_back(bytes: &[u8]) -> Vec<(String, Vec<u8>, u32, u64)> {
        let mut reader = tar::Archive::new(bytes);
        reader
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                assert_eq!(entry.header().entry_type(), EntryType::Regular);
                let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
                let (mode, mtime) = (entry.header().mode().unwrap(), entry.header().mtime().unwrap());
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                (name, data, mode, mtime)
            })
            .collect()
    }

    #[test]
    fn payload_slices_are_shared_not_copied() {
        let payload = Bytes::from_static(b"hello, pipe");
        let files = [CommitFile { name: "a".into(), data: Payload::from(payload.clone()) }];
        let archive = encode(&files, 0);
        assert!(archive.chunks.iter().any(|c| c.as_ptr() == payload.as_ptr()));
        assert_eq!(archive.len, 512 + 512 + 1024);
    }

    #[test]
    fn headers_share_one_buffer() {
        let files = [file("a", &[b"x"]), file(&"n".repeat(200), &[b"y"]), file("c", &[])];
        let archive = encode(&files, 0);
        let headers: Vec<&Bytes> = archive.chunks.iter().filter(|c| c.len() >= 512 && c[0] != 0).collect();
        assert_eq!(headers.len(), 3);
        for pair in headers.windows(2) {
            assert_eq!(pair[0].as_ptr().wrapping_add(pair[0].len()), pair[1].as_ptr(), "contiguous");
        }
    }

    #[test]
    fn archive_ends_with_two_zero_blocks_and_keeps_metadata() {
        let archive = encode(&[file("dir/f.txt", &[b"ab", b"cd"])], 1_700_000_000);
        let bytes = flatten(&archive);
        assert_eq!(bytes.len() % 512, 0);
        assert!(bytes[bytes.len() - 1024..].iter().all(|&b| b == 0));
        assert_eq!(read_back(&bytes), [("dir/f.txt".into(), b"abcd".to_vec(), 0o644, 1_700_000_000)]);
    }

    #[test]
    fn exactly_block_sized_payload_needs_no_padding() {
        let archive = encode(&[file("a", &[&[7; 512]])], 0);
        assert_eq!(archive.chunks.len(), 3);
        assert_eq!(archive.len, 512 + 512 + 1024);
    }

    fn name() -> impl Strategy<Value = String> {
        // Up to 255 bytes in `/`-separated segments, so lengths cross 100 and 512-byte edges.
        prop::collection::vec("[A-Za-z0-9._-]{1,60}", 1..6)
            .prop_map(|segments| segments.join("/"))
            .prop_filter("at most 255 bytes", |n| n.len() <= 255)
    }

    fn chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..700), 0..4)
    }

    proptest! {
        #[test]
        fn round_trips_through_the_tar_crate(
            files in prop::collection::vec((name(), chunks()), 0..6),
            mtime in 0u64..(1 << 33),
        ) {
            let files: Vec<CommitFile> = files
                .iter()
                .map(|(n, cs)| file(n, &cs.iter().map(Vec::as_slice).collect::<Vec<_>>()))
                .collect();
            let archive = encode(&files, mtime);
            let bytes = flatten(&archive);
            prop_assert_eq!(bytes.len() % 512, 0);
            let expected: Vec<_> = files.iter().map(|f| (f.name.clone(), f.data.to_vec(), 0o644, mtime)).collect();
            prop_assert_eq!(read_back(&bytes), expected);
        }
    }
}
