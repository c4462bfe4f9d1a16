//! The commit manifest, `DIR/<commit id>/_SPOUT_COMMIT.json`: written last, after
//! every object of the commit is in place, so a reader that lists manifests sees
//! whole commits only (the `_SUCCESS` convention of Hadoop and Spark).

use serde::Serialize;

/// The manifest's name inside its commit's prefix.
pub const NAME: &str = "_SPOUT_COMMIT.json";

#[derive(Debug, Serialize)]
pub struct Manifest<'a> {
    pub commit: &'a str,
    /// The sequence numbers of the batch's messages: `first_seq..=last_seq`.
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: u64,
    /// `files` or `tar`.
    pub format: &'static str,
    /// `gzip`, `zstd` or absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<&'static str>,
    pub objects: Vec<ObjectEntry>,
}

/// One object of the commit, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectEntry {
    /// The full key in the bucket.
    pub key: String,
    /// The commit's files it holds: its own, or those in a tar object.
    pub files: Vec<String>,
    /// Stored bytes (after compression).
    pub size: u64,
    /// CRC32C (Castagnoli, as S3's `x-amz-checksum-crc32c`) of the stored bytes, as
    /// 8 lowercase hex digits.
    pub crc32c: String,
}

impl Manifest<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest serializes")
    }
}
