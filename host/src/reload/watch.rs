//! What triggers a reload: SIGHUP, and notifications about the configuration
//! and the files it names, however they are replaced.
//!
//! A file can be replaced in three ways, and each must be noticed: written
//! in place (an editor's save), a new file renamed over it (what the docs
//! advise), or a symbolic link re-pointed — on Kubernetes a ConfigMap is
//! mounted as `relay.toml -> ..data/relay.toml` with `..data` re-pointed
//! atomically from one version's folder to the next. So each watched path
//! is resolved link by link ([`link_hops`]); the folder of every link and of
//! the file finally reached is watched, a notification naming any of them
//! triggers, and after every reload the links are resolved again (the
//! target may have moved). Notifications name paths as the folders were
//! watched, so paths are compared as written, never canonicalized (that
//! would resolve the very link that was re-pointed).

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::reloader::Reloader;

/// The trigger of a file notification.
const FILE_CHANGE: &str = "file change";
/// How long the watched files must stay unchanged before a notification's
/// reload reads them.
pub const SETTLE: Duration = Duration::from_millis(500);
/// How long at most to wait for them to settle (a file rewritten without
/// end is read anyway, and still checked by [`Reloader::reload_after_change`]).
const SETTLE_AT_MOST: Duration = Duration::from_secs(10);
/// Symbolic links followed at most to resolve one path (Linux's own limit
/// is 40).
const MAX_HOPS: usize = 40;

/// `p` made absolute against the working directory, with `.` and `..`
/// taken out by the text alone.
fn lexical(p: &Path) -> PathBuf {
    let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Every path a change to `file` may be notified under: `file` itself, each
/// symbolic link met while resolving it (in a folder of its path too), and
/// the file finally reached — in that order, as absolute paths.
///
/// Components are taken from the left as the kernel takes them: a link is
/// replaced by its target before anything after it is looked at, so a `..`
/// that follows a link climbs out of the link's target, not out of the
/// folder holding the link, and a `..` is taken out by the text only once
/// every component before it is known to be a real folder.
pub fn link_hops(file: &Path) -> Vec<PathBuf> {
    let mut hops = Vec::new();
    let mut path = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    'resolve: for _ in 0..MAX_HOPS {
        let parts: Vec<Component> = path.components().collect();
        let mut prefix = PathBuf::new();
        for (i, part) in parts.iter().enumerate() {
            match part {
                Component::CurDir => continue,
                Component::ParentDir => {
                    prefix.pop();
                    continue;
                }
                Component::Normal(_) => prefix.push(part),
                other => {
                    prefix.push(other);
                    continue;
                }
            }
            let Ok(target) = std::fs::read_link(&prefix) else {
                continue;
            };
            hops.push(prefix.clone());
            let folder = prefix.parent().unwrap_or(Path::new("/"));
            let mut next = folder.join(target);
            next.extend(&parts[i + 1..]);
            path = next;
            continue 'resolve;
        }
        path = prefix;
        break;
    }
    hops.push(lexical(&path));
    hops
}

/// Each file's length and modification time, to tell when writing stopped.
fn snapshot(files: &[PathBuf]) -> Vec<Option<(u64, std::time::SystemTime)>> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .map(|m| (m.len(), m.modified().unwrap_or(std::time::UNIX_EPOCH)))
        })
        .collect()
}

/// Waits until no notification arrived and no watched file changed for
/// [`SETTLE`], or [`SETTLE_AT_MOST`] passed.
async fn settle(rx: &mut tokio::sync::mpsc::UnboundedReceiver<&'static str>, files: &[PathBuf]) {
    let started = Instant::now();
    loop {
        let before = snapshot(files);
        tokio::time::sleep(SETTLE).await;
        let mut quiet = true;
        while rx.try_recv().is_ok() {
            quiet = false;
        }
        if (quiet && snapshot(files) == before) || started.elapsed() >= SETTLE_AT_MOST {
            return;
        }
    }
}

/// The paths whose notifications trigger, and the folders to watch for
/// them.
fn watch_list(files: &[PathBuf]) -> (BTreeSet<PathBuf>, BTreeSet<PathBuf>) {
    let hops: BTreeSet<PathBuf> = files.iter().flat_map(|f| link_hops(f)).collect();
    let folders = hops
        .iter()
        .filter_map(|h| h.parent().map(Path::to_path_buf))
        .collect();
    (hops, folders)
}

/// Reloads on SIGHUP and on changes to the watched files, until shutdown.
pub fn spawn_triggers(reloader: Arc<Reloader>, shutdown: CancellationToken) {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let file_tx = tx.clone();
    let paths = Arc::new(std::sync::Mutex::new(BTreeSet::<PathBuf>::new()));
    let watched = paths.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(ev) = event {
            let ours = watched
                .lock()
                .map(|w| ev.paths.iter().any(|p| w.contains(&lexical(p))))
                .unwrap_or(false);
            if ours && !ev.kind.is_access() {
                let _ = file_tx.send(FILE_CHANGE);
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, "file notifications unavailable; reload with SIGHUP or the admin endpoint");
            None
        }
    };
    let mut folders_watched = BTreeSet::<PathBuf>::new();
    let mut rewatch = move |reloader: &Reloader| {
        let (hops, folders) = watch_list(&reloader.watched_files());
        if let Some(w) = watcher.as_mut() {
            for gone in folders_watched.difference(&folders) {
                let _ = w.unwatch(gone);
            }
            // Every folder again, not only new ones: a folder replaced by
            // another of the same name (moved over, or deleted and made
            // again) is a new inode, which the old watch does not see.
            for folder in &folders {
                let _ = w.unwatch(folder);
                if let Err(e) = w.watch(folder, RecursiveMode::NonRecursive) {
                    debug!(folder = %folder.display(), error = %e, "cannot watch");
                }
            }
        }
        folders_watched = folders;
        if let Ok(mut p) = paths.lock() {
            *p = hops;
        }
    };
    rewatch(&reloader);
    #[cfg(unix)]
    {
        let hup_tx = tx.clone();
        let hup_shutdown = shutdown.clone();
        // Registered here, before the relay says it is listening: a SIGHUP
        // that came before a spawned task registered it would take the
        // signal's default action and end the process.
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        tokio::spawn(async move {
            let Ok(mut hup) = hup else {
                warn!("SIGHUP cannot be handled; reload with the admin endpoint");
                return;
            };
            loop {
                tokio::select! {
                    _ = hup.recv() => { let _ = hup_tx.send("SIGHUP"); }
                    _ = hup_shutdown.cancelled() => return,
                }
            }
        });
    }
    tokio::spawn(async move {
        loop {
            let why = tokio::select! {
                Some(why) = rx.recv() => why,
                _ = shutdown.cancelled() => return,
            };
            // Editors and tools write in several steps: wait until the
            // files have stopped changing.
            if why == FILE_CHANGE {
                settle(&mut rx, &reloader.watched_files()).await;
            } else {
                while rx.try_recv().is_ok() {}
            }
            let r = reloader.clone();
            let done = tokio::task::spawn_blocking(move || {
                let out = if why == FILE_CHANGE {
                    r.reload_after_change().map(|o| o.is_some())
                } else {
                    info!(target: "attrelay::reload", trigger = why, "reloading");
                    r.reload().map(|_| true)
                };
                (r, out)
            })
            .await;
            if let Ok((r, out)) = done {
                if let Ok(false) = out {
                    debug!(target: "attrelay::reload", "notified, but the watched files hold what was applied last");
                }
                // Whatever the outcome: a link may now lead elsewhere.
                rewatch(&r);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_followed_one_hop_at_a_time_folders_included() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("v1")).unwrap();
        std::fs::write(d.join("v1/relay.toml"), "x").unwrap();
        symlink("v1", d.join("..data")).unwrap();
        symlink("..data/relay.toml", d.join("relay.toml")).unwrap();
        let hops = link_hops(&d.join("relay.toml"));
        assert_eq!(
            hops,
            [
                d.join("relay.toml"),
                d.join("..data"),
                d.join("v1/relay.toml")
            ]
        );
        // A plain file is its own only hop; `..` and `.` come out by text.
        std::fs::create_dir(d.join("sub")).unwrap();
        assert_eq!(
            link_hops(&d.join("sub/../v1/./relay.toml")),
            [d.join("v1/relay.toml")]
        );
        // A `..` after a link climbs out of the link's target.
        std::fs::create_dir_all(d.join("deep/inner")).unwrap();
        std::fs::write(d.join("deep/relay.toml"), "y").unwrap();
        symlink("deep/inner", d.join("current")).unwrap();
        assert_eq!(
            link_hops(&d.join("current/../relay.toml")),
            [d.join("current"), d.join("deep/relay.toml")]
        );
        // A loop ends at the bound, not in a hang.
        symlink("loop-b", d.join("loop-a")).unwrap();
        symlink("loop-a", d.join("loop-b")).unwrap();
        assert!(link_hops(&d.join("loop-a")).len() <= MAX_HOPS + 1);
    }
}
