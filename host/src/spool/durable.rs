//! Writing a file so that after a crash it is complete or absent, and
//! cleaning up after a write that failed. Used by the spool's envelope
//! rewrites and by delivery into a directory.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use super::error::WriteError;

/// Puts `bytes` at `target` so that after a crash it is complete or absent:
/// written to `tmp` (on the same filesystem), fsynced, renamed over
/// `target`, and `target`'s directory fsynced. A failure before the rename
/// removes `tmp`, because on a full disk a partial file would keep the disk
/// full. Envelope rewrites and directory delivery write this way.
pub fn replace_durably(tmp: &Path, target: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let placed = write_synced(tmp, bytes)
        .map_err(WriteError::at(tmp))
        .and_then(|()| fs::rename(tmp, target).map_err(WriteError::at(target)));
    if let Err(e) = placed {
        discard(tmp);
        return Err(e);
    }
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(WriteError::at(dir))
}

/// Creates `path` with `bytes`, fsynced, readable by its owner only: it
/// holds mail.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(super::private::FILE_MODE)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Removes a file a failed write left behind. Best effort: if even that
/// fails, the spool's recovery empties `tmp/` and removes unnamed bodies at
/// the next start, and a retried directory delivery writes the same
/// temporary name again.
pub fn discard(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a partly written file");
    }
}
