//! The ModifyFile stream one batch becomes: `set_commit` naming the branch, the
//! writer's marker file replaced (`delete_file`, `add_file`; see `marker`), then per
//! file an optional `delete_file` (`--overwrite`, and always for a source's checkpoint)
//! and its bytes as `add_file` requests.
//!
//! pachd takes gRPC messages of at most 20 MiB, so a file's bytes go in pieces of at
//! most [`MAX_PIECE`]; pieces for one path append to each other. A piece is a
//! `Bytes` slice of the payload, not a copy, except where several small chunks
//! (NDJSON lines and their newlines under `--layout batch`) are joined into one
//! piece: one copy of a few KiB costs less than a request per line. tonic then
//! encodes each request into its send buffer, the one copy every byte takes.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::proto::google::protobuf::BytesValue;
use super::proto::pfs_v2::{add_file, modify_file_request::Body, AddFile, Commit, DeleteFile, ModifyFileRequest};
use crate::encode::{checkpoint, CommitFile};
use crate::message::Payload;

/// The largest piece of a file in one request: well under pachd's 20 MiB limit.
pub const MAX_PIECE: usize = 3 << 20;
/// Chunks smaller than this are joined with their small neighbours.
const SMALL_CHUNK: usize = 64 << 10;

/// The requests for one batch, made lazily file by file; `marker` is the marker
/// file's path and its new content.
pub fn modify_file_requests(
    commit: Commit,
    marker: (String, Bytes),
    files: Arc<[CommitFile]>,
    overwrite: bool,
) -> impl Iterator<Item = ModifyFileRequest> + Send + 'static {
    let set_commit = request(Body::SetCommit(commit));
    let (path, mark) = marker;
    let marker = [delete(path.clone()), add(path, mark)];
    std::iter::once(set_commit)
        .chain(marker)
        .chain((0..files.len()).flat_map(move |i| file_requests(&files[i], overwrite)))
}

fn file_requests(file: &CommitFile, overwrite: bool) -> Vec<ModifyFileRequest> {
    // A source's checkpoint has the same path in every commit, and pachd appends to
    // a file that is there: it is replaced, always.
    let replaced = overwrite || file.name.starts_with(checkpoint::DIR);
    let delete = replaced.then(|| delete(file.name.clone()));
    let adds = pieces(&file.data).into_iter().map(|piece| add(file.name.clone(), piece));
    delete.into_iter().chain(adds).collect()
}

fn delete(path: String) -> ModifyFileRequest {
    request(Body::DeleteFile(DeleteFile { path, datum: String::new() }))
}

fn add(path: String, piece: Bytes) -> ModifyFileRequest {
    request(Body::AddFile(AddFile {
        path,
        datum: String::new(),
        source: Some(add_file::Source::Raw(BytesValue { value: piece })),
    }))
}

fn request(body: Body) -> ModifyFileRequest {
    ModifyFileRequest { body: Some(body) }
}

/// The payload cut into pieces of at most [`MAX_PIECE`] bytes, in order. An empty
/// payload is one empty piece, so the file still appears in the commit.
pub fn pieces(payload: &Payload) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut run = SmallRun::default();
    for chunk in payload.chunks() {
        if chunk.len() < SMALL_CHUNK {
            if run.len + chunk.len() > MAX_PIECE {
                run.flush(&mut out);
            }
            run.len += chunk.len();
            run.chunks.push(chunk.clone());
        } else {
            run.flush(&mut out);
            let mut start = 0;
            while start < chunk.len() {
                let end = (start + MAX_PIECE).min(chunk.len());
                out.push(chunk.slice(start..end));
                start = end;
            }
        }
    }
    run.flush(&mut out);
    if out.is_empty() {
        out.push(Bytes::new());
    }
    out
}

/// Consecutive small chunks waiting to become one piece.
#[derive(Default)]
struct SmallRun {
    chunks: Vec<Bytes>,
    len: usize,
}

impl SmallRun {
    fn flush(&mut self, out: &mut Vec<Bytes>) {
        match self.chunks.len() {
            0 => {}
            // A lone chunk goes as it is: joining is only worth it for several.
            1 => out.push(self.chunks.pop().expect("one chunk")),
            _ => {
                let mut joined = BytesMut::with_capacity(self.len);
                for chunk in self.chunks.drain(..) {
                    joined.extend_from_slice(&chunk);
                }
                out.push(joined.freeze());
            }
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(sizes: &[usize]) -> Payload {
        let chunks: Vec<Bytes> =
            sizes.iter().enumerate().map(|(i, &n)| Bytes::from(vec![b'a' + (i % 26) as u8; n])).collect();
        Payload::from(chunks)
    }

    fn joined(pieces: &[Bytes]) -> Vec<u8> {
        pieces.iter().flat_map(|p| p.iter().copied()).collect()
    }

    #[test]
    fn big_chunks_are_sliced_not_copied() {
        let data = payload(&[MAX_PIECE * 2 + 5]);
        let cut = pieces(&data);
        assert_eq!(cut.iter().map(Bytes::len).collect::<Vec<_>>(), [MAX_PIECE, MAX_PIECE, 5]);
        assert_eq!(cut[0].as_ptr(), data.chunks()[0].as_ptr(), "a slice of the payload");
        assert_eq!(joined(&cut), data.to_vec());
    }

    #[test]
    fn small_chunks_are_joined_up_to_the_limit_in_order() {
        let sizes: Vec<usize> = std::iter::repeat_n(40_000, 100).chain([SMALL_CHUNK, 3]).collect();
        let data = payload(&sizes);
        let cut = pieces(&data);
        assert!(cut.iter().all(|p| p.len() <= MAX_PIECE));
        assert_eq!(cut.len(), 4, "78 + 22 small chunks, the large one, the lone small one");
        assert_eq!(joined(&cut), data.to_vec());
        let lone = payload(&[10]);
        assert_eq!(pieces(&lone)[0].as_ptr(), lone.chunks()[0].as_ptr());
    }

    #[test]
    fn an_empty_file_is_one_empty_add() {
        assert_eq!(pieces(&Payload::new()), vec![Bytes::new()]);
    }

    #[test]
    fn the_marker_is_replaced_first_checkpoints_always_and_overwrite_deletes_before_adding() {
        let files: Arc<[CommitFile]> = vec![
            CommitFile { name: "a".into(), data: payload(&[MAX_PIECE + 1]) },
            CommitFile { name: "b".into(), data: payload(&[1]) },
            CommitFile { name: ".spout/checkpoints/s.r.json".into(), data: payload(&[1]) },
        ]
        .into();
        let kinds = |overwrite| {
            modify_file_requests(Commit::default(), ("m".into(), Bytes::from("mark")), files.clone(), overwrite)
                .map(|r| match r.body.unwrap() {
                    Body::SetCommit(_) => "set".to_owned(),
                    Body::AddFile(add) => format!("add {}", add.path),
                    Body::DeleteFile(delete) => format!("delete {}", delete.path),
                })
                .collect::<Vec<_>>()
        };
        let checkpoint = ["delete .spout/checkpoints/s.r.json", "add .spout/checkpoints/s.r.json"];
        assert_eq!(kinds(false), [&["set", "delete m", "add m", "add a", "add a", "add b"][..], &checkpoint].concat());
        let overwritten = ["set", "delete m", "add m", "delete a", "add a", "add a", "delete b", "add b"];
        assert_eq!(kinds(true), [&overwritten[..], &checkpoint].concat());
    }
}
