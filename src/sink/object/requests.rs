//! Every request the object sinks make, timed and counted by operation
//! (`spout_object_requests_total`, `spout_object_request_bytes_total`,
//! `spout_object_request_duration_seconds`), and the upload of one object: a
//! single PUT when it fits in one part, else a multipart upload with a bounded
//! number of parts in flight.

use std::future::Future;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use object_store::path::Path;
use object_store::{Attribute, Attributes, ObjectStore, PutMultipartOptions, PutOptions, PutPayload};

use super::body::{Parts, Planned};
use super::manifest::ObjectEntry;
use super::Compression;
use crate::metrics::METRICS;

/// Parts of a multipart upload; a compressed object up to this size is one PUT.
/// S3 wants parts of at least 5 MiB (but the last).
pub const PART_SIZE: usize = 8 << 20;
/// An uncompressed object up to this size is one PUT: its bytes are in memory
/// already, so one request costs no more memory than parts, and saves three
/// requests (create, a second part, complete). A batch's tar object at the default
/// `--max-batch-bytes` fits; a failed PUT resends at most this much.
const SINGLE_PUT_LIMIT: usize = 16 << 20;
/// Parts of one object uploading at once: with compression, what is held
/// compressed is at most this many parts.
const PARTS_IN_FLIGHT: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::Display)]
#[strum(serialize_all = "snake_case")]
pub enum Op {
    /// A whole object (or manifest) in one request.
    Put,
    /// Starting a multipart upload.
    CreateMultipart,
    PutPart,
    CompleteMultipart,
    AbortMultipart,
    Delete,
    Head,
    List,
}

/// A request that failed: which, on what key, and the store's error.
#[derive(Debug, thiserror::Error)]
#[error("{op} {key}: {source}")]
pub struct RequestError {
    pub op: Op,
    pub key: String,
    #[source]
    pub source: object_store::Error,
}

/// Runs one request, recording its outcome, latency and the bytes it sent.
pub async fn timed<T>(
    op: Op,
    key: &Path,
    bytes: u64,
    request: impl Future<Output = object_store::Result<T>>,
) -> Result<T, RequestError> {
    let started = Instant::now();
    let result = request.await;
    let label: &'static str = op.into();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    METRICS.object_requests.with_label_values(&[label, outcome]).inc();
    METRICS.object_request_duration.with_label_values(&[label]).observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        METRICS.object_request_bytes.with_label_values(&[label]).inc_by(bytes);
    }
    result.map_err(|source| RequestError { op, key: key.to_string(), source })
}

/// Why one object could not be uploaded.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("compressing {key}: {source}")]
    Compress { key: String, source: std::io::Error },
}

/// Uploads `object` under its key (replacing what a failed attempt left there) and
/// says what was stored.
pub async fn upload(
    store: &dyn ObjectStore,
    object: &Planned,
    compression: Option<Compression>,
) -> Result<ObjectEntry, UploadError> {
    let key = &object.key;
    let compress_error = |source| UploadError::Compress { key: key.to_string(), source };
    let size: usize = object.chunks.iter().map(|chunk| chunk.len()).sum();
    let part_size = match compression {
        None if size <= SINGLE_PUT_LIMIT => SINGLE_PUT_LIMIT,
        _ => PART_SIZE,
    };
    let mut parts = Parts::new(object, compression, part_size).map_err(compress_error)?;
    let first = parts.next_part().map_err(compress_error)?.unwrap_or_default();
    let mut attributes = Attributes::new();
    if let Some(compression) = compression {
        attributes.insert(Attribute::ContentEncoding, compression.as_str().into());
    }
    match parts.next_part().map_err(compress_error)? {
        None => {
            let payload: PutPayload = first.into_iter().collect();
            let bytes = payload.content_length() as u64;
            let options = PutOptions { attributes, ..PutOptions::default() };
            timed(Op::Put, key, bytes, store.put_opts(key, payload, options)).await?;
        }
        Some(second) => {
            let options = PutMultipartOptions { attributes, ..PutMultipartOptions::default() };
            let mut upload = timed(Op::CreateMultipart, key, 0, store.put_multipart_opts(key, options)).await?;
            let sent = async {
                let mut in_flight = FuturesUnordered::new();
                let mut next = Some(second);
                in_flight.push(send_part(upload.as_mut(), key, first));
                while let Some(part) = next.take() {
                    while in_flight.len() >= PARTS_IN_FLIGHT {
                        in_flight.next().await.expect("parts in flight")?;
                    }
                    in_flight.push(send_part(upload.as_mut(), key, part));
                    next = parts.next_part().map_err(compress_error)?;
                }
                while let Some(done) = in_flight.next().await {
                    done?;
                }
                Ok::<(), UploadError>(())
            }
            .await;
            let completed = match sent {
                Ok(()) => timed(Op::CompleteMultipart, key, 0, upload.complete()).await.map_err(UploadError::from),
                Err(error) => Err(error),
            };
            if let Err(error) = completed {
                // Best effort: an upload left open costs storage until the bucket's
                // lifecycle rule for incomplete uploads removes it.
                let _ = timed(Op::AbortMultipart, key, 0, upload.abort()).await;
                return Err(error);
            }
        }
    }
    let (size, crc32c) = parts.digest();
    Ok(ObjectEntry { key: key.to_string(), files: object.files.clone(), size, crc32c })
}

/// Starts uploading one part; the request runs once the returned future is polled.
fn send_part(
    upload: &mut dyn object_store::MultipartUpload,
    key: &Path,
    part: Vec<bytes::Bytes>,
) -> impl Future<Output = Result<(), RequestError>> + 'static {
    let payload: PutPayload = part.into_iter().collect();
    let bytes = payload.content_length() as u64;
    let request = upload.put_part(payload);
    let key = key.clone();
    async move { timed(Op::PutPart, &key, bytes, request).await }
}
