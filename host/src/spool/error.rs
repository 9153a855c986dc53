//! What can go wrong in the spool, as its callers need to tell it apart:
//! a damaged message (set aside, never delivered), a full disk (a
//! temporary refusal), or any other I/O failure.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool {}: corrupt envelope: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    /// Storing the message would leave less than the free-space reserve.
    #[error(
        "spool {}: {available} bytes free, {needed} needed (the message and the min_free_bytes reserve)",
        path.display()
    )]
    Full {
        path: PathBuf,
        available: u64,
        needed: u64,
    },
    /// Another process owns the spool (`lock.rs`).
    #[error(
        "spool {}: another process holds its lock (a relay runs on this spool)",
        path.display()
    )]
    Locked { path: PathBuf },
    /// No message of that id is queued.
    #[error("no queued message has the id {id:?}")]
    NotQueued { id: String },
    /// There is no spool at the configured path.
    #[error("spool {}: no spool there (queue/ is missing); check [spool] path", path.display())]
    Missing { path: PathBuf },
}

impl SpoolError {
    /// A queued message found damaged (its envelope unreadable, its body
    /// missing or changed): it was moved to `corrupt/`, never delivered.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, SpoolError::Corrupt { .. })
    }

    /// The disk (or the relay user's quota) is full: the free-space reserve
    /// refused the message, or a write failed with `ENOSPC` or `EDQUOT`. A
    /// condition that passes as deliveries free space, so SMTP answers it
    /// `452 4.3.1` (RFC 3463: mail system full) rather than the catch-all
    /// `451 4.3.0`.
    pub fn is_full(&self) -> bool {
        match self {
            SpoolError::Full { .. } => true,
            SpoolError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ),
            SpoolError::Corrupt { .. }
            | SpoolError::Locked { .. }
            | SpoolError::Missing { .. }
            | SpoolError::NotQueued { .. } => false,
        }
    }
}

/// Maps an I/O error on `path` to [`SpoolError::Io`].
pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A durable write that failed: the path it failed on, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl WriteError {
    pub(super) fn at(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
        move |source| WriteError {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<WriteError> for SpoolError {
    fn from(e: WriteError) -> SpoolError {
        SpoolError::Io {
            path: e.path,
            source: e.source,
        }
    }
}
