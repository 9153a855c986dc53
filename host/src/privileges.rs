//! Giving up root (`[server] user` / `group`). A relay started as root
//! binds its listeners (port 25) and reads its TLS key first, then makes
//! the directories it writes (the spool, the policy cache) and the files it
//! appends to (the decision log) the user's, and runs as that user for the
//! rest of its life: a flaw in the SMTP server, a policy or a TLS library
//! then holds the relay's user, not the machine. The switch is checked:
//! a process that could become root again refuses to go on.
//!
//! Started as root with no `user`, the relay keeps running as root (the
//! demo and the tests do) but says so at start and in `/status`.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The user the relay runs as once its listeners are bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// As the configuration names it.
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

/// Why the relay could not become its user.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "[server] user = {user:?}: only root can switch to another user, and this process runs as {current}; start it as root, or as {user} without the setting"
    )]
    NotRoot { user: String, current: String },
    #[error("cannot make {path} the relay user's: {source}")]
    Own {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot switch to user {user} (uid {uid}, gid {gid}): {source}")]
    Switch {
        user: String,
        uid: u32,
        gid: u32,
        source: std::io::Error,
    },
    #[error("after switching to uid {0} the process could become root again; refusing to run")]
    Regained(u32),
}

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The user the process runs as now, by name.
pub fn current_user() -> String {
    crate::accounts::user_name(rustix::process::geteuid().as_raw())
}

/// Becomes `run_as`, after making `dirs` (created if missing, mode 0700)
/// and `files` (when they exist) its own. Nothing to do when the process
/// runs as that user already.
pub fn become_user(run_as: &RunAs, dirs: &[&Path], files: &[&Path]) -> Result<(), PrivilegeError> {
    let euid = rustix::process::geteuid().as_raw();
    if euid == run_as.uid {
        return Ok(());
    }
    if euid != 0 {
        return Err(PrivilegeError::NotRoot {
            user: run_as.user.clone(),
            current: current_user(),
        });
    }
    for dir in dirs {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .and_then(|()| own_tree(dir, run_as))
            .map_err(|source| PrivilegeError::Own {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    for file in files.iter().filter(|f| f.exists()) {
        own(file, run_as).map_err(|source| PrivilegeError::Own {
            path: file.to_path_buf(),
            source,
        })?;
    }
    switch(run_as)
}

/// Gives `path` to the user unless it has it already; a symbolic link
/// itself, never what it points to.
fn own(path: &Path, run_as: &RunAs) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.uid() != run_as.uid || meta.gid() != run_as.gid {
        std::os::unix::fs::lchown(path, Some(run_as.uid), Some(run_as.gid))?;
    }
    Ok(())
}

/// [`own`] for `dir` and everything in it, never following a link out.
fn own_tree(dir: &Path, run_as: &RunAs) -> std::io::Result<()> {
    own(dir, run_as)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            own_tree(&entry.path(), run_as)?;
        } else {
            own(&entry.path(), run_as)?;
        }
    }
    Ok(())
}

/// The switch itself: supplementary groups, group, user, in that order
/// (each later one removes the right to make the earlier), then a check
/// that root cannot come back. glibc applies each to every thread.
fn switch(run_as: &RunAs) -> Result<(), PrivilegeError> {
    let failed = |source| PrivilegeError::Switch {
        user: run_as.user.clone(),
        uid: run_as.uid,
        gid: run_as.gid,
        source,
    };
    let gid = run_as.gid as libc::gid_t;
    // SAFETY: plain system calls on integers and a one-element array that
    // outlives the call.
    unsafe {
        if libc::setgroups(1, &gid) != 0 {
            return Err(failed(std::io::Error::last_os_error()));
        }
        if libc::setgid(gid) != 0 {
            return Err(failed(std::io::Error::last_os_error()));
        }
        if libc::setuid(run_as.uid as libc::uid_t) != 0 {
            return Err(failed(std::io::Error::last_os_error()));
        }
        if run_as.uid != 0 && libc::setuid(0) == 0 {
            return Err(PrivilegeError::Regained(run_as.uid));
        }
    }
    Ok(())
}
