//! Group commit: the one way a message becomes part of the queue.
//!
//! 1. [`stage`] writes a job's body rest to `msg/BODY.eml` and each
//!    envelope to a file in `tmp/`, and syncs their data — run by the
//!    session on the blocking pool, so that jobs write and sync in parallel;
//! 2. the job goes to the spool's one committer thread, which takes every
//!    job waiting when it wakes — no fixed wait, so a lone message commits at
//!    once, and messages that arrive while a batch is synced form the next
//!    batch (RocksDB's write group) — and for the whole batch:
//! 3. syncs `msg/` once, so every body's name is durable before any
//!    envelope names it;
//! 4. renames the envelopes into `queue/` — the commit point — and syncs
//!    `queue/` once (covering the removals waiting for it too).
//!
//! Only then is each job answered, and only then does SMTP send `250`.
//! A crash before step 4 leaves bodies no envelope names (removed at
//! recovery) and files in `tmp/` (emptied at recovery); after it, the
//! message is complete. `docs/ARCHITECTURE.md` says why files and not a log.

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::body::Body;
use super::crash;
use super::durable::discard;
use super::envelope::Envelope;
use super::error::SpoolError;
use super::ids::Names;
use super::layout::Layout;
use super::pool::Pool;

/// One message to commit: its body and the envelopes that share it.
pub(super) struct Job {
    pub(super) body: Body,
    pub(super) envelopes: Vec<Envelope>,
}

/// What a committed job hands back: its envelopes with the body's name,
/// length and SHA-256 filled in.
pub(super) type Outcome = Result<Vec<Envelope>, SpoolError>;

struct Waiting {
    staged: Staged,
    done: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Waiting>,
    /// Removals waiting for their envelope's unlink to be durable.
    syncs: Vec<oneshot::Sender<Result<(), SpoolError>>>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// The committer thread of one spool; stopped (after the jobs already
/// handed to it) when dropped.
pub(super) struct Committer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Committer")
    }
}

impl Committer {
    pub(super) fn start(layout: Layout) -> std::io::Result<Committer> {
        let shared = Arc::new(Shared::default());
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || run(&worker, &layout))?;
        Ok(Committer {
            shared,
            thread: Some(thread),
        })
    }

    /// Hands a job, written by [`stage`], to the committer; the receiver
    /// gets its outcome.
    pub(super) fn submit(&self, staged: Staged) -> oneshot::Receiver<Outcome> {
        let (done, outcome) = oneshot::channel();
        let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.jobs.push(Waiting { staged, done });
        drop(queue);
        self.shared.ready.notify_one();
        outcome
    }

    /// A handle that asks for `queue/` syncs, for a blocking thread.
    pub(super) fn queue_syncer(&self) -> QueueSyncer {
        QueueSyncer(self.shared.clone())
    }
}

/// Asks the committer for a `queue/` sync.
pub(super) struct QueueSyncer(Arc<Shared>);

impl QueueSyncer {
    /// Waits until `queue/` has been synced in a batch that started after
    /// this call (an envelope was unlinked before it).
    pub(super) fn sync(&self) -> Result<(), SpoolError> {
        let (done, synced) = oneshot::channel();
        let mut queue = self.0.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.syncs.push(done);
        drop(queue);
        self.0.ready.notify_one();
        synced.blocking_recv().unwrap_or_else(|_| {
            Err(SpoolError::Io {
                path: PathBuf::from("queue"),
                source: std::io::Error::other("the spool's committer stopped"),
            })
        })
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.shared.ready.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, layout: &Layout) {
    loop {
        let (batch, syncs) = {
            let mut queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            while queue.jobs.is_empty() && queue.syncs.is_empty() && !queue.closed {
                queue = shared.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            if queue.jobs.is_empty() && queue.syncs.is_empty() {
                return;
            }
            (
                std::mem::take(&mut queue.jobs),
                std::mem::take(&mut queue.syncs),
            )
        };
        let (jobs, senders): (Vec<Staged>, Vec<_>) =
            batch.into_iter().map(|w| (w.staged, w.done)).unzip();
        let (outcomes, synced) = write_batch(layout, jobs, !syncs.is_empty());
        for done in syncs {
            let _ = done.send(synced.as_ref().map(|_| ()).map_err(copy_of));
        }
        for (outcome, done) in outcomes.into_iter().zip(senders) {
            // A session that went away still has its message queued: the
            // caller's task, not the session, waits for this.
            let _ = done.send(outcome);
        }
    }
}

/// A job written by [`stage`], on its way through [`write_batch`].
pub(super) struct Staged {
    job: Job,
    /// Envelope files in `tmp/`, with their final names.
    envelope_files: Vec<(File, PathBuf, PathBuf)>,
    /// Envelopes renamed into `queue/`.
    placed: Vec<PathBuf>,
    error: Option<SpoolError>,
}

impl Staged {
    fn ok(&self) -> bool {
        self.error.is_none()
    }

    fn fail(&mut self, e: SpoolError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// Undoes what was written of a failed job: its envelopes, here and in
    /// `tmp/`; its body goes when the job is dropped.
    fn undo(&mut self) {
        for (_, tmp, _) in self.envelope_files.drain(..) {
            discard(&tmp);
        }
        for placed in self.placed.drain(..) {
            discard(&placed);
        }
    }
}

/// Commits jobs written and synced by [`stage`] together (steps 3 and 4
/// in the module's documentation). When `sync_queue` (a removal waits for
/// it) `queue/` is synced even if no job placed an envelope. Returns each
/// job's outcome, in order, and how the `queue/` sync went. A failure that
/// touches one job (its rename) fails only that job; one that touches the
/// batch (a directory sync) fails every job in it.
pub(super) fn write_batch(
    layout: &Layout,
    mut staged: Vec<Staged>,
    sync_queue: bool,
) -> (Vec<Outcome>, Result<(), SpoolError>) {
    crash::point("commit:synced");
    if staged.iter().any(Staged::ok)
        && let Err(e) = Layout::sync(&layout.msg_dir, &layout.msg)
    {
        fail_all(&mut staged, &e);
    }
    crash::point("commit:bodies-named");
    for s in staged.iter_mut().filter(|s| s.ok()) {
        place(s);
    }
    crash::point("commit:placed");
    // A job that failed part way is undone before the sync, so that no
    // envelope of it is made durable and then removed unsynced.
    for s in staged.iter_mut().filter(|s| !s.ok()) {
        s.undo();
    }
    let queue_synced = if sync_queue || staged.iter().any(|s| !s.placed.is_empty()) {
        Layout::sync(&layout.queue_dir, &layout.queue)
    } else {
        Ok(())
    };
    if let Err(e) = &queue_synced {
        fail_all(&mut staged, e);
    }
    crash::point("commit:durable");
    let outcomes = staged
        .into_iter()
        .map(|mut s| match s.error.take() {
            Some(e) => {
                s.undo();
                Err(e)
            }
            None => {
                s.job.body.kept = true;
                s.placed.clear();
                Ok(std::mem::take(&mut s.job.envelopes))
            }
        })
        .collect();
    (outcomes, queue_synced)
}

fn fail_all(staged: &mut [Staged], e: &SpoolError) {
    for s in staged.iter_mut() {
        s.fail(copy_of(e));
    }
}

/// The same error again, for every job of a batch that one failure ends.
fn copy_of(e: &SpoolError) -> SpoolError {
    match e {
        SpoolError::Io { path, source } => SpoolError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => SpoolError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(other.to_string()),
        },
    }
}

impl Drop for Staged {
    /// A job dropped before it was committed (its caller cancelled, the
    /// committer gone) leaves none of its files; a committed one has none
    /// left to undo.
    fn drop(&mut self) {
        self.undo();
    }
}

impl Staged {
    fn files(&self) -> impl Iterator<Item = &File> {
        self.job
            .body
            .file
            .iter()
            .chain(self.envelope_files.iter().map(|(f, _, _)| f))
    }
}

/// Steps 1 and 2 for one job: the body's rest and the envelopes' files
/// written and their data synced. Done by the caller, on a blocking thread
/// of its own, so that jobs write and sync in parallel (the disk queues
/// their writes; a journalling filesystem joins their syncs into one
/// commit) and the committer's serial part holds only what must be in
/// order: the directory syncs and the renames.
pub(super) fn stage(layout: &Layout, names: &Names, mut job: Job) -> Staged {
    let written = job.body.write_rest();
    let (sha, len, id) = (job.body.sha256(), job.body.len, job.body.id.clone());
    for e in &mut job.envelopes {
        e.body = id.clone();
        e.body_sha256 = sha.clone();
        e.body_len = len;
    }
    let mut staged = Staged {
        job,
        envelope_files: Vec::new(),
        placed: Vec::new(),
        error: None,
    };
    if let Err(e) = written {
        staged.fail(e);
        return staged;
    }
    for i in 0..staged.job.envelopes.len() {
        let e = &staged.job.envelopes[i];
        let target = layout.envelope_path(&e.id);
        let tmp = layout.envelope_tmp(&e.id, names.serial());
        let json = serde_json::to_vec_pretty(e).expect("envelopes serialize");
        match create_with(&layout.pool, &tmp, &json) {
            Ok(f) => staged.envelope_files.push((f, tmp, target)),
            Err(source) => {
                discard(&tmp);
                staged.fail(SpoolError::Io { path: tmp, source });
                return staged;
            }
        }
    }
    crash::point("commit:staged");
    for f in staged.files() {
        start_writeback(f);
    }
    let synced = staged
        .files()
        .try_for_each(|f| rustix::fs::fdatasync(f).map_err(std::io::Error::from));
    if let Err(source) = synced {
        let path = staged.job.body.path.clone();
        staged.fail(SpoolError::Io { path, source });
    }
    staged
}

/// Step 4 for one job: its envelopes into `queue/`.
fn place(s: &mut Staged) {
    let files = std::mem::take(&mut s.envelope_files);
    let mut rest = files.into_iter();
    for (file, tmp, target) in rest.by_ref() {
        drop(file);
        if let Err(source) = fs::rename(&tmp, &target) {
            discard(&tmp);
            s.fail(SpoolError::Io {
                path: target,
                source,
            });
            break;
        }
        s.placed.push(target);
        crash::point("commit:placed-one");
    }
    s.envelope_files.extend(rest);
}

/// A file at `path` holding `bytes` (recycled from the pool if it can be).
fn create_with(pool: &Pool, path: &Path, bytes: &[u8]) -> std::io::Result<File> {
    let mut opened = pool.create(path)?;
    opened.file.write_all(bytes)?;
    if opened.recycled {
        opened.file.set_len(bytes.len() as u64)?;
    }
    Ok(opened.file)
}

/// Starts writing `file`'s dirty pages without waiting (Linux's
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that the `fdatasync`s
/// that follow find the data of the whole batch on its way at once. Only a
/// hint: the `fdatasync` is what makes the data durable, so a failure here
/// is ignored.
fn start_writeback(file: &File) {
    // SAFETY: sync_file_range reads no memory of ours; it is given an open
    // descriptor that `file` keeps alive for the call.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}
