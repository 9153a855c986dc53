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
    #[error("{} belongs to {owner}; run this as {owner} or as root (this process runs as {current})", path.display())]
    NotOwner {
        path: PathBuf,
        owner: String,
        current: String,
    },
}

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The user the process runs as now, by name.
pub fn current_user() -> String {
    crate::accounts::user_name(rustix::process::geteuid().as_raw())
}

/// Becomes `run_as`, after making `dirs` (created if missing: parents
/// as usual, the directory itself 0700) and `files` (when they exist) its
/// own. Nothing to do when the process runs as that user already.
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
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PrivilegeError::Own { path, source }
    };
    for dir in dirs {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(failed(dir))?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(failed(dir)(e)),
            _ => {}
        }
        own_tree(dir, run_as).map_err(failed(dir))?;
    }
    for file in files {
        own_file(file, run_as).map_err(failed(file))?;
    }
    switch(run_as)
}

/// How deep [`own_tree`] goes: the spool is `ROOT/DIR/FILE`, the policy
/// cache no deeper.
const MAX_DEPTH: usize = 4;

/// Makes `dir` and what is in it the user's. The tree may have been
/// written by the user the relay runs as, so nothing in it is trusted:
/// every step is relative to a directory already opened without following
/// a link (no path is looked up twice), nothing on another filesystem is
/// entered, only directories and regular files are changed (links, devices
/// and sockets are left as they are), and a regular file with more than one
/// name is left alone (it may be another name for a file outside the
/// tree, such as `/etc/shadow`).
fn own_tree(dir: &Path, run_as: &RunAs) -> std::io::Result<()> {
    use rustix::fs::{CWD, Mode, OFlags};
    let top = rustix::fs::openat(
        CWD,
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&top)?;
    let dev = stat.st_dev;
    if stat.st_uid != run_as.uid || stat.st_gid != run_as.gid {
        rustix::fs::fchown(&top, Some(uid(run_as)), Some(gid(run_as)))?;
    }
    own_entries(&top, dev, run_as, MAX_DEPTH)
}

/// [`own_tree`]'s walk below the open directory `dir`.
fn own_entries(
    dir: &rustix::fd::OwnedFd,
    dev: u64,
    run_as: &RunAs,
    depth: usize,
) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    if depth == 0 {
        return Ok(());
    }
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if stat.st_dev as u64 != dev {
            continue;
        }
        let mine = stat.st_uid == run_as.uid && stat.st_gid == run_as.gid;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => {
                let sub = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                if !mine {
                    rustix::fs::fchown(&sub, Some(uid(run_as)), Some(gid(run_as)))?;
                }
                own_entries(&sub, dev, run_as, depth - 1)?;
            }
            FileType::RegularFile if !mine && stat.st_nlink == 1 => {
                rustix::fs::chownat(
                    dir,
                    name,
                    Some(uid(run_as)),
                    Some(gid(run_as)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
            FileType::RegularFile if !mine => {
                tracing::warn!(file = ?name, "a file with several names in the relay's directories is left to its owner");
            }
            _ => {}
        }
    }
    Ok(())
}

/// A file the relay appends to (the decision log), made the user's when it
/// is there: a regular file with one name, never through a link.
fn own_file(path: &Path, run_as: &RunAs) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let file = match rustix::fs::openat(
        rustix::fs::CWD,
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        other => other?,
    };
    let stat = rustix::fs::fstat(&file)?;
    let regular =
        rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile;
    if !regular || stat.st_nlink != 1 {
        return Err(std::io::Error::other(
            "not a regular file with one name; not made the relay user's",
        ));
    }
    if stat.st_uid != run_as.uid || stat.st_gid != run_as.gid {
        rustix::fs::fchown(&file, Some(uid(run_as)), Some(gid(run_as)))?;
    }
    Ok(())
}

fn uid(run_as: &RunAs) -> rustix::process::Uid {
    rustix::process::Uid::from_raw(run_as.uid)
}

fn gid(run_as: &RunAs) -> rustix::process::Gid {
    rustix::process::Gid::from_raw(run_as.gid)
}

/// For `attrelay queue` acting on a stopped relay's spool as root: becomes
/// the user who owns the spool first, so that what it writes there stays
/// readable by the relay. Run as anyone else, it must be that owner.
pub fn become_owner_of(spool: &Path) -> Result<(), PrivilegeError> {
    let owner = std::fs::metadata(spool)
        .map(|m| (m.uid(), m.gid()))
        .map_err(|source| PrivilegeError::Own {
            path: spool.to_path_buf(),
            source,
        })?;
    let euid = rustix::process::geteuid().as_raw();
    if owner.0 == euid {
        return Ok(());
    }
    let run_as = RunAs {
        user: crate::accounts::user_name(owner.0),
        uid: owner.0,
        gid: owner.1,
    };
    if euid != 0 {
        return Err(PrivilegeError::NotOwner {
            path: spool.to_path_buf(),
            owner: run_as.user,
            current: current_user(),
        });
    }
    switch(&run_as)
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
    // The user's groups as /etc/group lists them (so that a key readable
    // by a group such as ssl-cert stays readable), or its group alone.
    let name = std::ffi::CString::new(run_as.user.as_bytes()).ok();
    let listed =
        crate::accounts::user(&run_as.user).is_some() && run_as.user.parse::<u32>().is_err();
    // SAFETY: plain system calls on integers, a one-element array and a
    // NUL-terminated string, each outliving its call.
    unsafe {
        let groups = match (&name, listed) {
            (Some(name), true) => libc::initgroups(name.as_ptr(), gid),
            _ => libc::setgroups(1, &gid),
        };
        if groups != 0 {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the relay's user may have put in its own directories cannot
    /// make the walk give it a file outside them: links are not followed,
    /// and a file with a second name stays its owner's.
    #[test]
    fn the_walk_gives_the_tree_and_nothing_outside_it() {
        if !is_root() {
            // Only root can give files away; as anyone else the walk has
            // nothing to change and must still succeed on its own files.
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("f"), b"x").unwrap();
            let me = RunAs {
                user: current_user(),
                uid: rustix::process::geteuid().as_raw(),
                gid: rustix::process::getegid().as_raw(),
            };
            own_tree(dir.path(), &me).unwrap();
            return;
        }
        let nobody = RunAs {
            user: "nobody".into(),
            uid: 65534,
            gid: 65534,
        };
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"root's").unwrap();
        let tree = tempfile::tempdir().unwrap();
        let sub = tree.path().join("queue");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("envelope.json"), b"{}").unwrap();
        std::fs::hard_link(&secret, sub.join("hard")).unwrap();
        std::os::unix::fs::symlink(&secret, sub.join("soft")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tree.path().join("dir-link")).unwrap();
        own_tree(tree.path(), &nobody).unwrap();
        let uid = |p: &Path| std::fs::symlink_metadata(p).unwrap().uid();
        assert_eq!(uid(tree.path()), 65534);
        assert_eq!(uid(&sub), 65534);
        assert_eq!(uid(&sub.join("envelope.json")), 65534);
        assert_eq!(uid(&secret), 0, "a second name is not followed");
        assert_eq!(
            uid(outside.path()),
            0,
            "a link to a directory is not followed"
        );
        assert_eq!(uid(&sub.join("soft")), 0, "links are left alone");
        // A decision log that is a link is refused, not followed.
        let log = tree.path().join("decisions.jsonl");
        std::os::unix::fs::symlink(&secret, &log).unwrap();
        assert!(own_file(&log, &nobody).is_err());
        assert_eq!(uid(&secret), 0);
    }
}
