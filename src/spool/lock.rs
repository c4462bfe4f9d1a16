//! One sidecar per spool: an exclusive `flock` on `DIR/lock`, held for the process's
//! life. The kernel drops it when the process dies, however it dies, so a crash never
//! leaves a stale lock for a human to delete. The file names the holder's pid, for the
//! message a second sidecar gives. The lock is held on a read-only descriptor, so the
//! spool's file system can be remounted read-only while the sidecar runs.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;

use super::SpoolError;

#[derive(Debug)]
pub struct SpoolLock {
    _file: File,
}

impl SpoolLock {
    pub fn acquire(dir: &Path) -> Result<Self, SpoolError> {
        let path = dir.join("lock");
        let io_error = |source| SpoolError::Io { doing: "opening", path: path.clone(), source };
        OpenOptions::new().write(true).create(true).truncate(false).open(&path).map_err(io_error)?;
        let mut file = File::open(&path).map_err(io_error)?;
        if let Err(errno) = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            if errno != rustix::io::Errno::WOULDBLOCK {
                return Err(io_error(errno.into()));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(SpoolError::Locked { dir: dir.to_owned(), holder: holder.trim().to_owned() });
        }
        let pid = std::process::id().to_string();
        std::fs::write(&path, pid).map_err(io_error)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = SpoolLock::acquire(dir.path()).unwrap();
        let refused = SpoolLock::acquire(dir.path()).unwrap_err();
        let expected = format!(
            "the spool {} is in use by another sidecar (pid {}); give each sidecar a --spool-dir of its own",
            dir.path().display(),
            std::process::id()
        );
        assert_eq!(refused.to_string(), expected);
        drop(first);
        SpoolLock::acquire(dir.path()).unwrap();
    }
}
