//! Recycled files. A message costs two new files (its body and its
//! envelope) and, once delivered, two removals. Allocating an inode is the
//! costliest part of that — on ext4 without a journal it scans for
//! recently freed inodes it may not reuse yet, which under a steady
//! create-and-remove load took a third of the relay's CPU time — so the
//! files of delivered messages are kept in `free/` and renamed into place
//! for new ones, and overwritten there (their blocks reused too). Only
//! small files are kept, and at most [`CAP`], so the pool holds at most
//! `CAP` × [`MAX_SIZE`] bytes of disk.

use std::fs::{self, File};
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
        fs::create_dir_all(dir)?;
        let mut free = Vec::new();
        for entry in fs::read_dir(dir)?.flatten() {
            let path = entry.path();
            let small = entry
                .metadata()
                .is_ok_and(|m| m.is_file() && m.len() <= MAX_SIZE);
            if small && free.len() < CAP {
                free.push(path);
            } else {
                let _ = fs::remove_file(&path);
            }
        }
        let counter = AtomicU64::new(free.len() as u64);
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
        let file = File::options().write(true).create_new(true).open(path)?;
        Ok(Opened {
            file,
            recycled: false,
        })
    }

    /// Takes the file at `path` out of the spool: into the pool when it is
    /// small and the pool has room, else removed. Whether it is gone from
    /// `path` (false: a failure, already logged).
    pub(super) fn recycle(&self, path: &Path) -> bool {
        let small = fs::metadata(path).is_ok_and(|m| m.len() <= MAX_SIZE);
        let room = self.free.lock().unwrap_or_else(|e| e.into_inner()).len() < CAP;
        if small && room {
            let to = self
                .dir
                .join(self.counter.fetch_add(1, Ordering::Relaxed).to_string());
            if fs::rename(path, &to).is_ok() {
                self.free.lock().unwrap_or_else(|e| e.into_inner()).push(to);
                return true;
            }
        }
        match fs::remove_file(path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a delivered message's file");
                false
            }
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
}
