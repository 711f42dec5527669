//! One bus per store. A bus holds an advisory lock (`flock`) on `<store>.lock` for as long as
//! it runs; the operating system releases it when the process ends, however it ends, so a
//! killed bus never leaves a stale lock. A second bus on the same store is refused with
//! [`StoreError::InUse`], and repairs that a running bus would overwrite (`replay`) ask
//! [`holder`] first.
//!
//! The lock is on a file of its own, never on the database: closing any handle of the
//! database outside SQLite would drop the POSIX locks SQLite holds on it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::storage::StoreError;

/// The lock file of the store at `store`.
pub(crate) fn lock_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Held by a running bus; released on drop (and by the OS if the process dies).
#[derive(Debug)]
pub(crate) struct BusLock {
    _file: File,
}

impl BusLock {
    /// Takes the lock of the store at `store`, or says who holds it.
    ///
    /// # Errors
    /// [`StoreError::InUse`] when another bus holds it; [`StoreError::Io`] when the lock file
    /// cannot be created.
    pub(crate) fn acquire(store: &Path) -> Result<Self, StoreError> {
        let path = lock_path(store);
        let io = |e: std::io::Error| StoreError::io(&path, e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::InUse {
                    path: store.to_path_buf(),
                    holder: describe(&mut file),
                })
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Who holds it, for the error another process will print.
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "pid {}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

/// Whether a bus holds the lock of the store at `store`: `Some(who)` if one does.
///
/// # Errors
/// [`StoreError::Io`] when the lock file exists but cannot be opened.
pub(crate) fn holder(store: &Path) -> Result<Option<String>, StoreError> {
    let path = lock_path(store);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(path, e)),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(None), // released when `file` closes
        Err(TryLockError::WouldBlock) => Ok(Some(describe(&mut file))),
        Err(TryLockError::Error(e)) => Err(StoreError::io(path, e)),
    }
}

fn describe(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let text = text.trim();
    if text.is_empty() {
        "another process".to_owned()
    } else {
        format!("process {}", text.trim_start_matches("pid "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("bus.db");
        assert_eq!(holder(&store).unwrap(), None, "no lock file yet");
        let first = BusLock::acquire(&store).unwrap();
        let held = holder(&store).unwrap().expect("held");
        assert!(held.contains(&std::process::id().to_string()), "{held}");
        match BusLock::acquire(&store) {
            Err(StoreError::InUse { holder, .. }) => assert_eq!(holder, held),
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        assert_eq!(holder(&store).unwrap(), None);
        BusLock::acquire(&store).expect("free again");
    }
}
