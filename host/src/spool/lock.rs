//! One process at a time owns a spool: the relay while it runs, or an
//! operator's `attrelay queue` command while it does not. Two relays on one
//! spool would deliver every message twice and remove each other's files;
//! a command changing envelopes under a running relay would be undone by
//! its next attempt. The owner holds an exclusive `flock` on `ROOT/lock`,
//! which the kernel releases when the process ends, however it ends: a
//! crash leaves no stale lock to clean up.

use std::fs::{File, OpenOptions};
use std::path::Path;

use super::error::{SpoolError, io};
use super::private::FILE_MODE;

/// The file the lock is taken on, under the spool's root.
const LOCK_FILE: &str = "lock";

/// The spool's lock, held until dropped.
#[derive(Debug)]
pub struct SpoolLock {
    _file: File,
}

impl SpoolLock {
    /// Takes the lock of the spool at `root` (which must exist), without
    /// waiting: [`SpoolError::Locked`] when another process holds it.
    pub fn acquire(root: &Path) -> Result<SpoolLock, SpoolError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(SpoolLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(SpoolError::Locked { path }),
            Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_owner_at_a_time_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = SpoolLock::acquire(dir.path()).unwrap();
        let second = SpoolLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(second, SpoolError::Locked { .. }), "{second}");
        assert!(second.to_string().contains("another process"), "{second}");
        drop(first);
        SpoolLock::acquire(dir.path()).unwrap();
    }
}
