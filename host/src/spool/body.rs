//! A message body on its way into the spool: written to `msg/ID.eml` as it
//! arrives, through a bounded buffer, so that a session holds the same
//! memory whatever the message's size. The body becomes part of the queue
//! only when `Spool::commit` makes it and its envelopes durable;
//! until then dropping it removes the file.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest;

use super::crash;
use super::durable::discard;
use super::error::SpoolError;
use super::ids::BodyId;
use super::pool::Pool;
use super::room::{Reservation, Room};

/// Bytes a body buffers before they go to its file. 64 KiB: large enough
/// that a typical message (a few KiB) reaches the disk in one write by the
/// committer, small enough that a thousand sessions hold 64 MiB.
pub const BUFFER: usize = 64 * 1024;

/// A body being written.
#[derive(Debug)]
pub struct Body {
    pub(super) id: BodyId,
    pub(super) path: PathBuf,
    /// Created at the first flush, or when the body is staged.
    pub(super) file: Option<File>,
    /// The file came from the pool: what it held past `len` is cut off
    /// when the body is staged.
    recycled: bool,
    pool: Arc<Pool>,
    /// Bytes not yet written to `file`.
    pub(super) tail: Vec<u8>,
    pub(super) len: u64,
    hasher: sha2::Sha256,
    /// The bytes written so far, counted against the free-space reserve.
    reservation: Reservation,
    /// The first write that failed: later writes are dropped, and the
    /// commit reports it.
    failed: Option<SpoolError>,
    /// Committed: the file belongs to the queue now.
    pub(super) kept: bool,
}

impl Body {
    pub(super) fn new(
        id: BodyId,
        path: PathBuf,
        room: Arc<Room>,
        pool: Arc<Pool>,
        checked: bool,
    ) -> Body {
        Body {
            id,
            path,
            file: None,
            recycled: false,
            pool,
            tail: Vec::new(),
            len: 0,
            hasher: sha2::Sha256::new(),
            reservation: Reservation::new(room, checked),
            failed: None,
            kept: false,
        }
    }

    /// The body's id: its file is `msg/ID.eml`.
    pub fn id(&self) -> &BodyId {
        &self.id
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `bytes`, writing to the file (off the async runtime's
    /// threads) whenever [`BUFFER`] bytes have gathered. A failure (a full
    /// disk, the reserve reached) is kept for the commit to report; the
    /// caller goes on reading the client's data meanwhile.
    pub async fn write(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.append(bytes);
        if self.tail.len() >= BUFFER {
            self.flush().await;
        }
    }

    /// Appends `bytes` to the buffer only (the committer writes it): for a
    /// body that is known whole, such as a DSN.
    pub(super) fn append(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        self.tail.extend_from_slice(bytes);
    }

    async fn flush(&mut self) {
        if let Err(e) = self.reservation.grow(self.tail.len() as u64) {
            self.fail(e);
            return;
        }
        let (path, pool) = (self.path.clone(), self.pool.clone());
        let file = self.file.take();
        let tail = std::mem::take(&mut self.tail);
        let mut recycled = self.recycled;
        let written = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let r = write_to(&pool, &path, &mut file, &mut recycled, &tail);
            (file, recycled, tail, r)
        })
        .await;
        match written {
            Ok((file, recycled, mut tail, r)) => {
                self.file = file;
                self.recycled = recycled;
                tail.clear();
                self.tail = tail;
                if let Err(e) = r {
                    self.fail(e);
                }
                crash::point("body:flushed");
            }
            Err(e) => self.fail(SpoolError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            }),
        }
    }

    fn fail(&mut self, e: SpoolError) {
        self.tail = Vec::new();
        self.failed = Some(e);
    }

    /// Writes what is buffered (the committer's part): after this the file
    /// holds the whole body, not yet synced.
    pub(super) fn write_rest(&mut self) -> Result<(), SpoolError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.reservation.grow(self.tail.len() as u64)?;
        let tail = std::mem::take(&mut self.tail);
        write_to(
            &self.pool,
            &self.path,
            &mut self.file,
            &mut self.recycled,
            &tail,
        )?;
        if self.recycled
            && let Some(f) = &self.file
        {
            f.set_len(self.len).map_err(|source| SpoolError::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// The SHA-256 of the body, in hex.
    pub(super) fn sha256(&self) -> String {
        hex(&self.hasher.clone().finalize())
    }
}

/// Writes `bytes` to `file`, first creating it at `path` from the pool if
/// needed (never over an existing file: ids are unique, so one would be
/// another body).
fn write_to(
    pool: &Pool,
    path: &Path,
    file: &mut Option<File>,
    recycled: &mut bool,
    bytes: &[u8],
) -> Result<(), SpoolError> {
    let at = |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    };
    if file.is_none() {
        let opened = pool.create(path).map_err(at)?;
        *recycled = opened.recycled;
        *file = Some(opened.file);
    }
    let f = file.as_mut().expect("created above");
    f.write_all(bytes).map_err(at)
}

impl Drop for Body {
    /// A body that was not committed (the message was refused, the client
    /// left, the commit failed) leaves no file behind.
    fn drop(&mut self) {
        // Whether or not this body holds the file now: a flush cancelled
        // half way may have created it on a blocking thread.
        if !self.kept {
            discard(&self.path);
        }
    }
}

/// A digest as the envelope records it: lowercase hex.
pub(super) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
