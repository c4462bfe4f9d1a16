//! `DIR/writer-id`: the name a spool gives the sidecar that writes it, among the
//! writers of a `pfs://` branch. Made once, when the spool is first used, and read
//! back at every start, so a restarted sidecar has the marker file of its earlier
//! life and recognises the batches that life landed (see the `pfs` sink's `marker`).
//! One sidecar per spool (the lock), so the name is also one writer's only.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use super::SpoolError;
use crate::message::random_u64;

const FILE: &str = "writer-id";

/// The spool's writer id, made (`spool-` and 16 random hex digits) if it has none.
pub fn writer_id(dir: &Path) -> Result<String, SpoolError> {
    let path = dir.join(FILE);
    let io_error = |doing| {
        let path = path.clone();
        move |source| SpoolError::Io { doing, path, source }
    };
    fs::create_dir_all(dir).map_err(|source| SpoolError::Io { doing: "creating", path: dir.to_owned(), source })?;
    let existing = read(&path).map_err(io_error("reading"))?;
    if let Some(id) = existing.as_deref().and_then(valid) {
        return Ok(id.to_owned());
    }
    // Written whole under a temporary name, then linked into place: a crash leaves no
    // half-written id, and of two sidecars racing for a new spool, both take the one
    // that got there first (the second is then refused by the lock). A damaged id (a
    // crash on a file system that does not order these writes) is replaced.
    let id = format!("spool-{:016x}", random_u64());
    let temp = dir.join(format!(".{FILE}-{}", std::process::id()));
    let made = fs::File::create(&temp)
        .and_then(|mut file| file.write_all(id.as_bytes()).and_then(|()| file.sync_all()))
        .and_then(|()| match existing {
            Some(_) => {
                tracing::warn!("{} held no valid writer id; made a new one, {id}", path.display());
                fs::rename(&temp, &path)
            }
            None => fs::hard_link(&temp, &path),
        })
        .and_then(|()| fs::File::open(dir)?.sync_all());
    let _ = fs::remove_file(&temp);
    match made {
        Ok(()) => Ok(id),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            let raced = read(&path).map_err(io_error("reading"))?;
            raced.as_deref().and_then(valid).map(str::to_owned).ok_or_else(|| io_error("reading")(error))
        }
        Err(error) => Err(io_error("making")(error)),
    }
}

/// The file's text, if it exists.
fn read(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// The id `text` holds, if it is one: a name the `pfs://` marker file can take.
fn valid(text: &str) -> Option<&str> {
    let id = text.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let id = writer_id(&spool).unwrap();
        assert!(id.starts_with("spool-") && id.len() == 22, "{id}");
        assert_eq!(writer_id(&spool).unwrap(), id);
        let files: Vec<_> = fs::read_dir(&spool).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files, [FILE]);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(writer_id(other.path()).unwrap(), id);
    }

    #[test]
    fn a_damaged_id_is_made_anew() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE), "").unwrap();
        let id = writer_id(dir.path()).unwrap();
        assert!(id.starts_with("spool-"), "{id}");
        assert_eq!(writer_id(dir.path()).unwrap(), id);
    }
}
