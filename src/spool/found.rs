//! What a previous run left in the spool's directory, read at start-up: its segments,
//! each salvaged (a torn tail cut, damaged bytes quarantined to `DIR/quarantine/`),
//! their records in order, and the spare files new segments may write over.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::record::{Kind, Record};
use super::{io_error, salvage, Segment, SpoolError, SEGMENT_SUFFIX, SPARE_SUFFIX};
use crate::metrics::METRICS;

/// See the module comment.
pub(super) struct Found {
    /// Oldest first.
    pub segments: VecDeque<Segment>,
    /// Every whole record of `segments`, in the order they were written.
    pub records: Vec<Record>,
    pub spares: Vec<PathBuf>,
    /// The number the next new segment takes.
    pub next_number: u64,
}

/// Lists `dir` and salvages every segment in it. Fails only on I/O errors: damaged
/// contents are cut or quarantined, never refused.
pub(super) fn read(dir: &Path) -> Result<Found, SpoolError> {
    let mut numbered = Vec::new();
    let mut spares = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("listing", dir))? {
        let entry = entry.map_err(io_error("listing", dir))?;
        let name = entry.file_name();
        let numbered_as = |suffix| name.to_str()?.strip_suffix(suffix)?.parse::<u64>().ok();
        if let Some(number) = numbered_as(SEGMENT_SUFFIX) {
            numbered.push((number, entry.path()));
        } else if numbered_as(SPARE_SUFFIX).is_some() {
            spares.push(entry.path());
        }
    }
    numbered.sort();
    let mut segments = VecDeque::new();
    let mut records = Vec::new();
    for (number, path) in &numbered {
        let bytes = Bytes::from(fs::read(path).map_err(io_error("reading", path))?);
        let scanned = salvage::scan(&bytes, *number);
        for damage in &scanned.damage {
            quarantine(dir, path, damage)?;
        }
        if scanned.keep_len < bytes.len() as u64 {
            let file = fs::OpenOptions::new().write(true).open(path).map_err(io_error("opening", path))?;
            file.set_len(scanned.keep_len).map_err(io_error("truncating", path))?;
            tracing::info!(
            "spool segment {}: cut {} bytes past its last record (an unfinished write, or the file's earlier use) at offset {}",
            path.display(),
            bytes.len() as u64 - scanned.keep_len,
            scanned.keep_len
        );
        }
        let mut segment =
            Segment { number: *number, path: path.clone(), len: scanned.keep_len, charged: 0, max_seq: 0 };
        for record in &scanned.records {
            segment.max_seq = segment.max_seq.max(record.last_seq());
            if record.header.kind == Kind::Messages {
                segment.charged += record.header.record_len();
            }
        }
        records.extend(scanned.records);
        segments.push_back(segment);
    }
    let next_number = numbered.last().map_or(1, |(n, _)| n + 1);
    Ok(Found { segments, records, spares, next_number })
}

/// Sets damaged bytes aside as `DIR/quarantine/<segment>@<offset>.<kind>`, logging it.
fn quarantine(dir: &Path, segment: &Path, damage: &salvage::Damage) -> Result<(), SpoolError> {
    let quarantine = dir.join("quarantine");
    let name = segment.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let path = quarantine.join(format!("{name}@{}.{}", damage.offset, damage.kind.as_str()));
    fs::create_dir_all(&quarantine)
        .and_then(|()| fs::write(&path, &damage.bytes))
        .map_err(|source| SpoolError::Io { doing: "quarantining damaged records to", path: path.clone(), source })?;
    METRICS.spool_quarantined.with_label_values(&[damage.kind.as_str()]).inc();
    tracing::warn!(
        "spool segment {}: {} bytes at offset {} are not whole records ({}); moved to {}",
        segment.display(),
        damage.bytes.len(),
        damage.offset,
        damage.kind.as_str(),
        path.display()
    );
    Ok(())
}
