//! Where the spool keeps what, under `[spool] path`:
//!
//! - `msg/BODY.eml`: a message's body as the client sent it (without the
//!   client's copies of the relay's fields), stored once however many
//!   tenants it was attributed to;
//! - `queue/ID.json`: one envelope per tenant — recipients, delivery state,
//!   the header fields the relay writes in front of the body, and the name
//!   of the body — **the commit record**;
//! - `tmp/`: envelope files being written;
//! - `free/`: files of delivered bodies kept for reuse (`pool.rs`);
//! - `corrupt/`: what recovery or delivery found damaged, set aside for an
//!   operator, never delivered.
//!
//! Every path is made here and nowhere else, each directory private
//! (`private.rs`).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{SpoolError, io};
use super::ids::{BodyId, SpoolId};
use super::pool::Pool;
use super::private::private_dir;

/// `queue/` under `root`.
pub(super) fn queue_dir(root: &Path) -> PathBuf {
    root.join("queue")
}

/// The body file `body` under `root`.
pub(super) fn body_path(root: &Path, body: &BodyId) -> PathBuf {
    root.join("msg").join(format!("{body}.eml"))
}

/// The envelope file of `id` under `root`.
pub(super) fn envelope_path(root: &Path, id: &SpoolId) -> PathBuf {
    queue_dir(root).join(format!("{id}.json"))
}

/// The spool's directories, with the two the committer syncs kept open
/// (one `open` fewer per sync).
#[derive(Debug, Clone)]
pub(super) struct Layout {
    pub(super) root: PathBuf,
    pub(super) msg: PathBuf,
    pub(super) queue: PathBuf,
    pub(super) tmp: PathBuf,
    corrupt: PathBuf,
    pub(super) msg_dir: Arc<File>,
    pub(super) queue_dir: Arc<File>,
    /// Files to recycle (`free/`).
    pub(super) pool: Arc<Pool>,
}

impl Layout {
    /// Opens the layout at `root`, creating the directories mail is written
    /// to (`corrupt/` only when something is set aside).
    pub(super) fn open(root: &Path) -> Result<Layout, SpoolError> {
        let (msg, queue, tmp) = (root.join("msg"), queue_dir(root), root.join("tmp"));
        for d in [root, &msg, &queue, &tmp] {
            private_dir(d).map_err(io(d))?;
        }
        let free = root.join("free");
        Ok(Layout {
            pool: Arc::new(Pool::open(&free).map_err(io(&free))?),
            msg_dir: Arc::new(File::open(&msg).map_err(io(&msg))?),
            queue_dir: Arc::new(File::open(&queue).map_err(io(&queue))?),
            root: root.to_path_buf(),
            corrupt: root.join("corrupt"),
            msg,
            queue,
            tmp,
        })
    }

    pub(super) fn body_path(&self, body: &BodyId) -> PathBuf {
        body_path(&self.root, body)
    }

    pub(super) fn envelope_path(&self, id: &SpoolId) -> PathBuf {
        envelope_path(&self.root, id)
    }

    /// A file in `tmp/` for a new version of envelope `id`; `serial`
    /// keeps two rewrites of one envelope apart.
    pub(super) fn envelope_tmp(&self, id: &SpoolId, serial: u64) -> PathBuf {
        self.tmp.join(format!("{id}.json.{serial}"))
    }

    /// Moves `path` (an envelope or a body) to `corrupt/`, under the same
    /// name. Best effort: what cannot be moved stays where it is, and is
    /// found again at the next recovery.
    pub(super) fn set_aside(&self, path: &Path) {
        let _ = private_dir(&self.corrupt);
        let _ = fs::rename(
            path,
            self.corrupt.join(path.file_name().unwrap_or_default()),
        );
    }

    /// Syncs `dir` (open on `path`), so that names placed in it survive a
    /// crash.
    pub(super) fn sync(dir: &File, path: &Path) -> Result<(), SpoolError> {
        dir.sync_all().map_err(io(path))
    }
}
