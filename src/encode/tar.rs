//! Tar encoding: one commit's files become one archive, as a list of slices for
//! vectored writes, large payloads shared rather than copied; whole ([`encode`]), or a
//! part at a time for a sink that streams it ([`next_part`]).
//!
//! Each file is a 512-byte header, its payload, and zero padding up to the next
//! 512-byte boundary; the archive ends with two zero blocks. Names over 100 bytes (up
//! to the 255 a file name may have) get a GNU long-name entry (`././@LongLink`, type
//! `L`) before their header, which Go's `archive/tar` (Pachyderm), GNU tar, bsdtar and
//! the `tar` crate all read.
//!
//! Where bytes are copied, and why: a header has to exist somewhere as bytes, so the
//! headers (and long names) are written into one buffer, about 512 bytes per file: one
//! allocation per archive, or one per streaming sink, reused part after part. A payload
//! under one block is copied there too, right after its header, with its padding: a
//! slice of its own would cost more than its bytes (a reference count, and an `iovec`
//! in every write, for a few dozen bytes), and an archive of small files becomes one
//! contiguous buffer. Larger payloads are never copied here: they are written as the
//! slices they arrived in, padded from a static zero block; the only copy left of them
//! is the kernel's.
//!
//! Every header starts as a copy of a template made per archive (per part when
//! streamed), with the fields all files share (type, mode, owner, mtime) and the sum of
//! its bytes: only the name and size are written per file, and the checksum is that sum
//! plus theirs, rather than a pass over 512 bytes (and two formatting allocations) per
//! file in the `tar` crate.

use bytes::{Bytes, BytesMut};
use tar::{EntryType, Header};

use super::CommitFile;

pub const BLOCK: usize = 512;
/// The longest name a header's own name field holds.
const NAME_FIELD: usize = 100;
/// Where the per-file fields lie in a header (POSIX ustar, which GNU headers share).
const SIZE_FIELD: std::ops::Range<usize> = 124..136;
const CHECKSUM_FIELD: std::ops::Range<usize> = 148..156;
/// The largest size the octal size field holds; beyond it, GNU's base-256 form.
const OCTAL_SIZE_LIMIT: u64 = 1 << 33;
const LONG_LINK: &[u8] = b"././@LongLink";
/// Padding and the end-of-archive marker are sliced from here.
static ZEROS: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// A complete tar archive as slices to write in order: metadata (headers, small
/// payloads, padding), payload slices (shared, not copied), and the closing zero blocks.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    pub chunks: Vec<Bytes>,
}

/// Encodes one commit's files as one archive stamped with the current time.
pub fn encode_now(files: &[CommitFile]) -> Archive {
    encode(files, mtime_now())
}

/// The current time as an archive's files carry it: seconds since the epoch.
pub fn mtime_now() -> u64 {
    crate::message::unix_nanos() / 1_000_000_000
}

/// Encodes one commit's files as one archive; `mtime` in seconds since the epoch.
pub fn encode(files: &[CommitFile], mtime: u64) -> Archive {
    let metadata: usize = files.iter().map(metadata_len).sum();
    let mut out = BytesMut::with_capacity(metadata + ZEROS.len());
    Archive { chunks: encode_part(files, 0, mtime, &mut out, usize::MAX).chunks }
}

/// What a writer needs to know of an archive before any of it is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub len: u64,
    /// The most bytes one file takes: its headers, payload and padding. From any
    /// byte of the archive, the next header (or end marker) is at most this far.
    pub longest_entry: u64,
}

pub fn shape(files: &[CommitFile]) -> Shape {
    let entries = files.iter().map(|f| header_len(&f.name) as u64 + padded(f.data.len() as usize) as u64);
    let (len, longest_entry) = entries.fold((0, 0), |(len, longest), entry| (len + entry, longest.max(entry)));
    Shape { len: len + ZEROS.len() as u64, longest_entry }
}

/// A stretch of an archive: its slices in order, and the index of the first file
/// after it (`files.len()` once the archive is ended).
#[derive(Debug, Default)]
pub struct Part {
    pub chunks: Vec<Bytes>,
    /// Per chunk, whether its bytes are the files' own (payload slices, static
    /// padding) rather than the part's metadata: those live as long as the files do,
    /// so a writer that keeps the files until its reader has read them may lend them
    /// to the kernel instead of copying them (`vmsplice`).
    pub shared: Vec<bool>,
    pub next: usize,
}

impl Part {
    fn push(&mut self, chunk: Bytes, shared: bool) {
        self.chunks.push(chunk);
        self.shared.push(shared);
    }
}

/// Encodes `files[from..]` into `out` until their metadata passes `budget` bytes
/// (at least one file), and the end-of-archive marker after the last file. The parts
/// of an archive, in order, are byte for byte the archive `encode` makes.
///
/// A writer that streams an archive part by part can encode each into the room the
/// previous part's metadata left once it was written: an archive of small files holds
/// about 1 KiB of metadata per file (100 MB for 100,000 messages), and a fresh buffer
/// that size per batch cost a page fault and a zeroed page per 4 KiB, a fifth of the
/// sink's time with `--layout message`.
pub fn encode_part(files: &[CommitFile], from: usize, mtime: u64, out: &mut BytesMut, budget: usize) -> Part {
    let templates = Templates {
        regular: Template::new(EntryType::Regular, mtime),
        long_name: Template::new(EntryType::GNULongName, 0),
    };
    let mut part = Part { next: from, ..Part::default() };
    let mut metadata = 0;
    for file in &files[from..] {
        let len = metadata_len(file);
        if metadata > 0 && metadata + len > budget {
            break;
        }
        metadata += len;
        out.reserve(len);
        write_headers(out, &templates, file);
        if copied(file) {
            for chunk in file.data.chunks() {
                out.extend_from_slice(chunk);
            }
            out.extend_from_slice(&ZEROS[..padding(file.data.len() as usize)]);
        } else {
            // Same allocation: what is written so far goes first, the rest stays to fill.
            part.push(out.split().freeze(), false);
            for chunk in file.data.chunks() {
                part.push(chunk.clone(), true);
            }
            let pad = padding(file.data.len() as usize);
            if pad > 0 {
                part.push(Bytes::from_static(&ZEROS[..pad]), true);
            }
        }
        part.next += 1;
    }
    if part.next == files.len() {
        out.extend_from_slice(&ZEROS);
    }
    part.push(out.split().freeze(), false);
    part
}

/// The metadata (headers, small payloads) of one part of a streamed archive: small
/// enough to stay in cache from its encoding to its write.
pub const PART_METADATA: usize = 256 << 10;

/// The part of a streamed archive that starts at file `from`, encoded in `room`: once
/// the previous part's slices are dropped, that is where it was.
pub fn next_part(files: &[CommitFile], from: usize, mtime: u64, room: &mut BytesMut) -> Part {
    // A part may pass the budget by its end-of-archive marker.
    room.reserve(PART_METADATA + ZEROS.len());
    encode_part(files, from, mtime, room, PART_METADATA)
}

/// The bytes of a file's entry written into the metadata buffer: its headers, and
/// its payload with padding if that is copied there.
fn metadata_len(file: &CommitFile) -> usize {
    header_len(&file.name) + if copied(file) { padded(file.data.len() as usize) } else { 0 }
}

/// Whether a file's payload is copied into the metadata: one under a block.
fn copied(file: &CommitFile) -> bool {
    file.data.len() < BLOCK as u64
}

fn padded(len: usize) -> usize {
    len + padding(len)
}

/// The zeros after `len` bytes up to the next block boundary.
fn padding(len: usize) -> usize {
    (BLOCK - len % BLOCK) % BLOCK
}

/// The bytes of metadata before a file's payload: its header, and for a long name
/// the long-name entry (header plus the NUL-terminated name, padded) before it.
fn header_len(name: &str) -> usize {
    if name.len() <= NAME_FIELD {
        BLOCK
    } else {
        2 * BLOCK + padded(name.len() + 1)
    }
}

/// The two kinds of header an archive holds.
struct Templates {
    regular: Template,
    long_name: Template,
}

/// A GNU header of one kind with the fields every file of an archive shares, its
/// checksum field blank (spaces, as the checksum counts it), and the sum of its bytes.
struct Template {
    bytes: [u8; BLOCK],
    sum: u32,
}

impl Template {
    fn new(kind: EntryType, mtime: u64) -> Self {
        let mut bytes = *shared_fields(kind, mtime).as_bytes();
        bytes[CHECKSUM_FIELD].fill(b' ');
        Self { sum: byte_sum(&bytes), bytes }
    }

    /// Appends this header completed for `name` (cut to the name field when a
    /// long-name entry carries it) and `size`.
    fn write(&self, out: &mut BytesMut, name: &[u8], size: u64) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        let header = &mut out[start..];
        let name = &name[..name.len().min(NAME_FIELD)];
        header[..name.len()].copy_from_slice(name);
        let size = size_field(size);
        header[SIZE_FIELD].copy_from_slice(&size);
        // The template's name and size fields are zeros: theirs are all they add.
        let sum = self.sum + byte_sum(name) + byte_sum(&size);
        octal(&mut header[CHECKSUM_FIELD], u64::from(sum));
    }
}

/// A GNU header of `kind` with the fields every file of an archive shares.
fn shared_fields(kind: EntryType, mtime: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header
}

/// Appends `file`'s header, after its long-name entry if it needs one.
fn write_headers(out: &mut BytesMut, templates: &Templates, file: &CommitFile) {
    let name = file.name.as_bytes();
    if name.len() > NAME_FIELD {
        // GNU tar counts the terminating NUL in the long name's size.
        templates.long_name.write(out, LONG_LINK, name.len() as u64 + 1);
        out.extend_from_slice(name);
        out.extend_from_slice(&ZEROS[..padded(name.len() + 1) - name.len()]);
    }
    templates.regular.write(out, name, file.data.len());
}

fn byte_sum(bytes: &[u8]) -> u32 {
    bytes.iter().map(|&b| u32::from(b)).sum()
}

/// The size field as the `tar` crate writes it: octal, or GNU's base-256 form for
/// sizes the octal digits cannot hold.
fn size_field(size: u64) -> [u8; 12] {
    let mut field = [0; 12];
    if size < OCTAL_SIZE_LIMIT {
        octal(&mut field, size);
    } else {
        field[4..].copy_from_slice(&size.to_be_bytes());
        field[0] |= 0x80;
    }
    field
}

/// `value` in octal digits right-aligned in `field`, zero-padded, ending with a NUL.
fn octal(field: &mut [u8], mut value: u64) {
    let (last, digits) = field.split_last_mut().expect("a field has room for its NUL");
    *last = 0;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value & 7) as u8;
        value >>= 3;
    }
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
        archive.chunks.iter().flat_map(|c| c.iter().copied()).collect()
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
    fn payload_slices_of_a_block_or_more_are_shared_not_copied() {
        let payload = Bytes::from(vec![b'p'; 600]);
        let files = [CommitFile { name: "a".into(), data: Payload::from(payload.clone()) }];
        let archive = encode(&files, 0);
        assert!(archive.chunks.iter().any(|c| c.as_ptr() == payload.as_ptr()));
        assert_eq!(flatten(&archive).len(), 512 + 1024 + 1024);
        assert_eq!(shape(&files).len, 512 + 1024 + 1024);
    }

    #[test]
    fn small_payloads_are_copied_after_their_headers_into_one_buffer() {
        let files = [file("a", &[b"hello, ", b"pipe"]), file(&"n".repeat(200), &[&[1; 511]]), file("c", &[])];
        let archive = encode(&files, 7);
        assert_eq!(archive.chunks.len(), 1, "headers, payloads, padding and the end: one slice");
        assert_eq!(flatten(&archive).len(), (2 + 4 + 1 + 2) * 512);
        let expected: Vec<_> = files.iter().map(|f| (f.name.clone(), f.data.to_vec(), 0o644, 7)).collect();
        assert_eq!(read_back(&flatten(&archive)), expected);
    }

    #[test]
    fn metadata_shares_one_buffer_around_shared_payloads() {
        let files = [file("a", &[&[7; 600]]), file(&"n".repeat(200), &[&[7; 700]]), file("c", &[])];
        let archive = encode(&files, 0);
        let metadata: Vec<&Bytes> =
            archive.chunks.iter().filter(|c| c.len() >= 512 && c[0] != 0 && c[0] != 7).collect();
        assert_eq!(metadata.len(), 3);
        for pair in metadata.windows(2) {
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
    fn parts_reuse_the_room_of_the_part_before_once_it_is_dropped() {
        let files: Vec<CommitFile> = (0..10).map(|i| file(&format!("f{i}"), &[b"small"])).collect();
        let mut out = BytesMut::new();
        out.reserve(4096);
        let first = encode_part(&files, 0, 0, &mut out, 2048);
        assert_eq!((first.chunks.len(), first.next), (1, 2), "two files of 1 KiB each");
        let room = first.chunks[0].as_ptr();
        drop(first);
        out.reserve(4096);
        let second = encode_part(&files, 2, 0, &mut out, 2048);
        assert_eq!(second.chunks[0].as_ptr(), room, "written where the first part was");
        assert_eq!(second.next, 4);
    }

    #[test]
    fn exactly_block_sized_payload_needs_no_padding() {
        let archive = encode(&[file("a", &[&[7; 512]])], 0);
        assert_eq!(archive.chunks.len(), 3);
        assert_eq!(flatten(&archive).len(), 512 + 512 + 1024);
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

    /// A header as the `tar` crate completes it.
    fn tar_crate_header(kind: EntryType, mtime: u64, name: &[u8], size: u64) -> [u8; BLOCK] {
        let mut header = shared_fields(kind, mtime);
        let kept = name.len().min(NAME_FIELD);
        header.as_old_mut().name[..kept].copy_from_slice(&name[..kept]);
        header.set_size(size);
        header.set_cksum();
        *header.as_bytes()
    }

    /// Whether `chunk` lies in one of the files' payload slices or the static zeros.
    fn owned_by_the_files(chunk: &Bytes, files: &[CommitFile]) -> bool {
        let inside = |outer: &[u8]| {
            outer.as_ptr_range().start <= chunk.as_ptr_range().start
                && chunk.as_ptr_range().end <= outer.as_ptr_range().end
        };
        inside(&ZEROS) || files.iter().flat_map(|f| f.data.chunks()).any(|c| inside(c))
    }

    proptest! {
        #[test]
        fn parts_make_the_same_archive_whatever_the_budget(
            files in prop::collection::vec((name(), chunks()), 0..8),
            budget in 0usize..4096,
        ) {
            let files: Vec<CommitFile> = files
                .iter()
                .map(|(n, cs)| file(n, &cs.iter().map(Vec::as_slice).collect::<Vec<_>>()))
                .collect();
            let whole = flatten(&encode(&files, 9));
            let (mut parts, mut out, mut from) = (Vec::new(), BytesMut::new(), 0);
            loop {
                let part = encode_part(&files, from, 9, &mut out, budget);
                prop_assert!(part.next > from || files.is_empty(), "a part takes a file at least");
                prop_assert_eq!(part.shared.len(), part.chunks.len());
                for (chunk, &shared) in part.chunks.iter().zip(&part.shared) {
                    prop_assert_eq!(shared, owned_by_the_files(chunk, &files), "shared: the files' own bytes");
                }
                parts.extend(part.chunks.iter().flat_map(|c| c.iter().copied()));
                from = part.next;
                if from == files.len() {
                    break;
                }
            }
            prop_assert_eq!(parts, whole);
        }

        #[test]
        fn headers_are_byte_for_byte_the_tar_crates(
            name in prop::collection::vec(1u8..=255, 1..255),
            size in prop_oneof![0u64..4096, 0u64..(1 << 40), Just((1 << 33) - 1), Just(1 << 33), Just(u64::MAX)],
            mtime in 0u64..(1 << 33),
            long_name in any::<bool>(),
        ) {
            let kind = if long_name { EntryType::GNULongName } else { EntryType::Regular };
            let mut out = BytesMut::new();
            Template::new(kind, mtime).write(&mut out, &name, size);
            prop_assert_eq!(&out[..], &tar_crate_header(kind, mtime, &name, size)[..]);
        }

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
            // The shape is known before encoding; these are what encoding made.
            let entry_len = |f: &CommitFile| flatten(&encode(std::slice::from_ref(f), mtime)).len() - ZEROS.len();
            let longest_entry = files.iter().map(entry_len).max().unwrap_or(0) as u64;
            prop_assert_eq!(shape(&files), Shape { len: bytes.len() as u64, longest_entry });
            let expected: Vec<_> = files.iter().map(|f| (f.name.clone(), f.data.to_vec(), 0o644, mtime)).collect();
            prop_assert_eq!(read_back(&bytes), expected);
        }
    }
}
