//! Recycled files. A message costs two new files (its body and its
//! envelope) and, once delivered, two removals. Allocating an inode is the
//! costliest part of that — on ext4 without a journal it scans for
//! recently freed inodes it may not reuse yet, which under a steady
//! create-and-remove load took a third of the relay's CPU time — so the
//! files of delivered messages are kept in `free/` and renamed into place
//! for new ones, and overwritten there (their blocks reused too). Only
//! small files are kept, and at most [`CAP`], so the pool holds at most
//! `CAP` × [`MAX_SIZE`] bytes of disk.
//!
//! `free/` is never synced, so after a crash a file may have both its new
//! name (made durable by the `msg/` or `queue/` sync) and its old one in
//! `free/`: a file with more than one link is never handed out (its
//! `free/` name is removed). And an envelope's file joins the pool only
//! once its removal from `queue/` is durable ([`Pool::retire`], then
//! [`Pool::offer`]), so that no new message can overwrite it while a crash
//! could still bring its old name back.

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Files kept at most.
pub const CAP: usize = 1024;
/// Largest file kept (bigger ones are removed: their blocks are worth more
/// free than an inode saved).
pub const MAX_SIZE: u64 = 64 * 1024;

#[derive(Debug)]
pub(super) struct Pool {
    dir: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    counter: AtomicU64,
}

/// A file opened for writing from its start, and whether it was recycled
/// (then its old contents past what is written must be cut off).
pub(super) struct Opened {
    pub(super) file: File,
    pub(super) recycled: bool,
}

impl Pool {
    /// The pool in `dir`, with the files a previous run left there (up to
    /// [`CAP`]; the rest are removed).
    pub(super) fn open(dir: &Path) -> std::io::Result<Pool> {
        super::private::private_dir(dir)?;
        let mut free = Vec::new();
        for entry in fs::read_dir(dir)?.flatten() {
            let path = entry.path();
            // A file also named elsewhere belongs to a message (see above).
            let usable = entry.metadata().is_ok_and(|m| {
                m.is_file()
                        && m.len() <= MAX_SIZE
                        && m.nlink() == 1
                        // A file an older relay left readable by others is
                        // not handed a message.
                        && m.mode() & 0o077 == 0
            });
            if usable && free.len() < CAP {
                free.push(path);
            } else {
                let _ = fs::remove_file(&path);
            }
        }
        let next = free
            .iter()
            .filter_map(|p| p.file_name()?.to_str()?.parse::<u64>().ok())
            .max()
            .map_or(0, |n| n + 1);
        let counter = AtomicU64::new(next);
        Ok(Pool {
            dir: dir.to_path_buf(),
            free: Mutex::new(free),
            counter,
        })
    }

    fn take(&self) -> Option<PathBuf> {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// A file at `path` (which must not exist), recycled when the pool has
    /// one, else new.
    pub(super) fn create(&self, path: &Path) -> std::io::Result<Opened> {
        while let Some(free) = self.take() {
            // A file still named elsewhere (see the module's documentation)
            // belongs to a message: only its name here goes.
            if !fs::metadata(&free).is_ok_and(|m| m.nlink() == 1) {
                let _ = fs::remove_file(&free);
                continue;
            }
            if fs::rename(&free, path).is_ok() {
                match File::options().write(true).open(path) {
                    Ok(file) => {
                        return Ok(Opened {
                            file,
                            recycled: true,
                        });
                    }
                    Err(_) => {
                        let _ = fs::remove_file(path);
                    }
                }
            }
        }
        let file = File::options()
            .write(true)
            .create_new(true)
            .mode(super::private::FILE_MODE)
            .open(path)?;
        Ok(Opened {
            file,
            recycled: false,
        })
    }

    /// Takes the file at `path` out of the spool and into the pool at
    /// once ([`Pool::retire`] and [`Pool::offer`]): for a file whose
    /// removal needs no sync first (a body, once its last envelope's
    /// removal is durable). Whether it is gone from `path`.
    pub(super) fn recycle(&self, path: &Path) -> bool {
        match self.retire(path) {
            Ok(kept) => {
                self.offer(kept);
                true
            }
            Err(()) => false,
        }
    }

    /// Takes the file at `path` out of the spool: renamed into `free/`
    /// when it is small and the pool has room (returned, not yet offered
    /// for reuse), else removed. `Err` when it is still there (logged).
    #[allow(clippy::result_unit_err)]
    pub(super) fn retire(&self, path: &Path) -> Result<Option<PathBuf>, ()> {
        let small = fs::metadata(path).is_ok_and(|m| m.len() <= MAX_SIZE);
        let room = self.free.lock().unwrap_or_else(|e| e.into_inner()).len() < CAP;
        if small && room {
            let to = self
                .dir
                .join(self.counter.fetch_add(1, Ordering::Relaxed).to_string());
            if fs::rename(path, &to).is_ok() {
                return Ok(Some(to));
            }
        }
        match fs::remove_file(path) {
            Ok(()) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a delivered message's file");
                Err(())
            }
        }
    }

    /// Makes a retired file available for new messages.
    pub(super) fn offer(&self, retired: Option<PathBuf>) {
        if let Some(path) = retired {
            self.free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(path);
        }
    }

    /// Files in the pool.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_recycled_file_is_overwritten_and_small_ones_only_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(&dir.path().join("free")).unwrap();
        let a = dir.path().join("a");
        let mut first = pool.create(&a).unwrap();
        assert!(!first.recycled);
        first.file.write_all(b"a longer first life").unwrap();
        assert!(pool.recycle(&a));
        assert!(!a.exists());
        assert_eq!(pool.len(), 1);
        let b = dir.path().join("b");
        let mut second = pool.create(&b).unwrap();
        assert!(second.recycled);
        second.file.write_all(b"short").unwrap();
        second.file.set_len(5).unwrap();
        let mut text = String::new();
        File::open(&b).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "short");
        assert_eq!(pool.len(), 0);
        // A big file is removed, not kept.
        std::fs::write(&a, vec![0u8; MAX_SIZE as usize + 1]).unwrap();
        assert!(pool.recycle(&a));
        assert!(!a.exists());
        assert_eq!(pool.len(), 0);
        // What a previous run left is used again.
        assert!(pool.recycle(&b));
        let reopened = Pool::open(&dir.path().join("free")).unwrap();
        assert_eq!(reopened.len(), 1);
    }

    #[test]
    fn a_file_still_named_in_the_spool_is_never_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let free = dir.path().join("free");
        let pool = Pool::open(&free).unwrap();
        // As a crash can leave it: a committed body also named in free/.
        let body = dir.path().join("body.eml");
        std::fs::write(&body, b"a committed body").unwrap();
        assert!(pool.recycle(&body));
        let kept = std::fs::read_dir(&free)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::hard_link(&kept, &body).unwrap();
        let mut fresh = pool.create(&dir.path().join("new.eml")).unwrap();
        assert!(!fresh.recycled, "the doubly named file is not reused");
        fresh.file.write_all(b"new").unwrap();
        assert_eq!(std::fs::read(&body).unwrap(), b"a committed body");
        assert!(!kept.exists(), "only its free/ name went");
        // And at the next start too.
        assert!(pool.recycle(&dir.path().join("new.eml")));
        let other = std::fs::read_dir(&free)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::hard_link(&other, dir.path().join("again.eml")).unwrap();
        assert_eq!(Pool::open(&free).unwrap().len(), 0);
        assert!(dir.path().join("again.eml").exists());
    }
}
