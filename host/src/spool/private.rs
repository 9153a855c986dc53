//! The spool holds other people's mail: its directories are made `0700`
//! and its files `0600`, and a directory an older relay or an operator left
//! open to other users is reported at start with the `chmod` that closes
//! it (the relay does not change modes it did not set).

use std::fs;
use std::path::Path;

/// The mode of the spool's directories: its owner's only.
pub(super) const DIR_MODE: u32 = 0o700;
/// The mode of the spool's files (bodies, envelopes).
pub(super) const FILE_MODE: u32 = 0o600;

/// Makes `dir` (and any parent missing) with [`DIR_MODE`]; a directory
/// already there that others may enter draws a warning.
pub(super) fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %dir.display(),
            mode = %format!("{mode:04o}"),
            "the spool directory is open to other local users, who may read the mail in it: chmod 700 {}",
            dir.display()
        );
    }
    Ok(())
}
