//! What the `--spool-*` options say: where the spool lives, how durable a record is
//! before its request is answered, and how much disk it may take.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// `--spool-sync`: how durable a record is before its request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolSync {
    /// `fdatasync` before the 202 (shared by concurrent requests): survives a power cut.
    Always,
    /// In the page cache before the 202: survives the process dying, not the machine.
    Never,
    /// In the page cache before the 202, `fdatasync` this often in the background.
    Every(Duration),
}

impl FromStr for SpoolSync {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(SpoolSync::Always),
            "never" => Ok(SpoolSync::Never),
            other => match humantime::parse_duration(other) {
                Ok(every) if !every.is_zero() => Ok(SpoolSync::Every(every)),
                _ => Err(format!("`{other}` is not `always`, `never` or a duration such as 100ms")),
            },
        }
    }
}

impl fmt::Display for SpoolSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolSync::Always => f.write_str("always"),
            SpoolSync::Never => f.write_str("never"),
            SpoolSync::Every(every) => write!(f, "{}", humantime::format_duration(*every)),
        }
    }
}

/// What `--spool-*` options say.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub sync: SpoolSync,
    pub max_bytes: u64,
}

impl SpoolConfig {
    /// Segments are an eighth of the limit (so deleting whole segments frees room
    /// in steps small enough to matter), between 64 KiB and 64 MiB.
    pub(super) fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 8).clamp(64 << 10, 64 << 20)
    }
}
