//! The free-space reserve: new mail must leave `[spool] min_free_bytes`
//! free, counting the bytes other sessions are writing right now.
//!
//! A full disk is a temporary condition, never a lasting one: new mail is
//! refused while less than the reserve would remain, so that the envelope
//! rewrites of delivery and the DSNs for mail already accepted still find
//! room.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::SpoolError;

/// The spool's filesystem as new mail sees it.
#[derive(Debug)]
pub(super) struct Room {
    root: PathBuf,
    /// Bytes that new mail must leave free; 0 turns the check off (a full
    /// disk is then met at `ENOSPC` only).
    pub(super) min_free_bytes: u64,
    /// Bytes of new messages being written right now: not yet visible in
    /// the filesystem's free space, so that sessions storing at the same
    /// time cannot each pass the check and together eat the reserve.
    writing: AtomicU64,
}

impl Room {
    pub(super) fn new(root: &Path, min_free_bytes: u64) -> Room {
        Room {
            root: root.to_path_buf(),
            min_free_bytes,
            writing: AtomicU64::new(0),
        }
    }

    /// Bytes the relay may still write on the filesystem (blocks available
    /// to unprivileged users: the root-only reserve of ext4 is not counted,
    /// so a relay running as root still stops before it).
    pub(super) fn available(&self) -> Result<u64, SpoolError> {
        let st = rustix::fs::statvfs(&self.root).map_err(|e| SpoolError::Io {
            path: self.root.clone(),
            source: std::io::Error::from(e),
        })?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Whether `incoming` more bytes, with those in flight, leave the
    /// reserve free.
    pub(super) fn ensure(&self, incoming: u64) -> Result<(), SpoolError> {
        let in_flight = self.writing.load(Ordering::SeqCst);
        self.check(incoming.saturating_add(in_flight))
    }

    fn check(&self, bytes: u64) -> Result<(), SpoolError> {
        if self.min_free_bytes == 0 {
            return Ok(());
        }
        let available = self.available()?;
        let needed = self.min_free_bytes.saturating_add(bytes);
        if available < needed {
            return Err(SpoolError::Full {
                path: self.root.clone(),
                available,
                needed,
            });
        }
        Ok(())
    }
}

/// Bytes of a message being written, counted in [`Room`]'s `writing` until
/// the reservation is dropped (the write has ended and the filesystem
/// counts them, or it failed).
#[derive(Debug)]
pub(super) struct Reservation {
    room: Arc<Room>,
    bytes: u64,
    /// Held to the reserve: a DSN is not (see `Spool::store`).
    checked: bool,
}

impl Reservation {
    /// An empty reservation that [`Reservation::grow`] checks against the
    /// reserve when `checked`.
    pub(super) fn new(room: Arc<Room>, checked: bool) -> Reservation {
        Reservation {
            room,
            bytes: 0,
            checked,
        }
    }

    /// Counts `bytes` more as being written, if they leave the reserve free
    /// with everything else being written: counted first and checked after,
    /// so that two writers racing each see the other. Refused bytes are not
    /// counted.
    pub(super) fn grow(&mut self, bytes: u64) -> Result<(), SpoolError> {
        let in_flight = self.room.writing.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if self.checked
            && let Err(e) = self.room.check(in_flight)
        {
            self.room.writing.fetch_sub(bytes, Ordering::SeqCst);
            return Err(e);
        }
        self.bytes += bytes;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.room.writing.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}
