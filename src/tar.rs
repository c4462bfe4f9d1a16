//! Zero-copy tar encoding. (Stub: being written.)

use bytes::Bytes;

use crate::message::File;

/// A complete tar archive as slices to write in order: headers, payload slices
/// (shared, not copied), padding and the closing zero blocks.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    pub chunks: Vec<Bytes>,
    pub len: u64,
}

/// Encodes one commit's files as one archive; `mtime` in seconds since the epoch.
pub fn encode(files: &[File], mtime: u64) -> Archive {
    let _ = (files, mtime);
    Archive::default()
}
