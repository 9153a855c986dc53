//! The durable spool: messages the relay answered `250` for, until they are
//! delivered or bounced.
//!
//! Layout under `[spool] path`:
//! - `msg/BODY.eml`: a message's body as the client sent it (without the
//!   client's copies of the relay's fields), stored once however many
//!   tenants it was attributed to;
//! - `queue/ID.json`: one envelope per tenant — recipients, delivery state,
//!   the header fields the relay writes in front of the body, and the name
//!   of the body — **the commit record**;
//! - `tmp/`: envelope files being written.
//!
//! A body is streamed to its file as the client sends it ([`Body`]); the
//! body and its envelopes become durable together through the group
//! committer ([`Spool::commit`], `commit.rs`), and only then does SMTP
//! answer `250`. A body no envelope names (a crash or a refusal before the
//! commit) is removed at recovery; a body is removed with the last envelope
//! that names it.
//!
//! A full disk is a temporary condition, never a lasting one: a write that
//! fails removes what it had written, and new mail is refused while less
//! than `[spool] min_free_bytes` would remain free (`room.rs`), so that the
//! envelope rewrites of delivery and the DSNs for mail already accepted
//! still find room.

mod body;
mod commit;
mod crash;
mod envelope;
mod pool;
mod room;
mod stored;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub use body::{BUFFER, Body};
pub use envelope::{Envelope, QueueEntry, Recipient, RecipientState};
pub use stored::{Chunk, Reader, Stored};

use commit::{Committer, Job, Layout};
use room::Room;
use stored::OpenError;

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
            SpoolError::Corrupt { .. } => false,
        }
    }
}

/// The default of `[spool] min_free_bytes`. Postfix refuses mail unless
/// 1.5 × its message size limit is free; a fixed 64 MiB leaves room for the
/// envelope rewrites of thousands of deliveries and their DSNs (a few KiB
/// each) while a disk fills, without refusing mail on a small spool volume.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 << 20;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Every message in the spool's queue, oldest first. Reads each envelope:
/// meant for an operator's look at the queue, not for periodic scraping.
pub fn listing(spool: &Spool) -> Vec<QueueEntry> {
    let (envelopes, _) = spool.recover_list();
    let mut out: Vec<QueueEntry> = envelopes.into_iter().map(QueueEntry::from).collect();
    out.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
    out
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The spool directory.
#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    layout: Layout,
    counter: Arc<AtomicU64>,
    room: Arc<Room>,
    /// How many queued envelopes name each shared body: the last one
    /// removed removes the body. Rebuilt by [`Spool::recover`].
    bodies: Arc<Mutex<HashMap<String, usize>>>,
    committer: Committer,
}

/// A durable write that failed: the path it failed on, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl WriteError {
    fn at(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
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

/// Creates `path` with `bytes`, fsynced.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
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

/// Forgets envelope `id`'s claim on `body`; whether it was the last. A
/// body the spool never counted (an envelope from before bodies were
/// shared, `None`, owns its file alone) is the envelope's own; a shared one
/// it does not know of is kept, for recovery to judge.
fn release(bodies: &Mutex<HashMap<String, usize>>, id: &str, body: Option<&str>) -> bool {
    let Some(body) = body else {
        return true;
    };
    let mut bodies = bodies.lock().unwrap_or_else(|e| e.into_inner());
    match bodies.get_mut(body) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            bodies.remove(body);
            true
        }
        None => {
            tracing::warn!(queue_id = %id, body = %body, "a body the spool does not count: kept until the next start");
            false
        }
    }
}

/// A digest as the envelope records it: lowercase hex.
fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Spool {
    /// Opens (creating if needed) the spool at `root`, with the default
    /// free-space reserve ([`DEFAULT_MIN_FREE_BYTES`]).
    pub fn open(root: &Path) -> Result<Spool, SpoolError> {
        Spool::open_with(root, DEFAULT_MIN_FREE_BYTES)
    }

    /// Opens (creating if needed) the spool at `root`; new mail must leave
    /// `min_free_bytes` free on its filesystem (0: no reserve). Starts the
    /// spool's committer thread.
    pub fn open_with(root: &Path, min_free_bytes: u64) -> Result<Spool, SpoolError> {
        for sub in ["msg", "queue", "tmp"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let layout = Layout::open(root).map_err(io(root))?;
        let counter = Arc::new(AtomicU64::new(0));
        let committer = Committer::start(layout.clone()).map_err(io(root))?;
        Ok(Spool {
            root: root.to_path_buf(),
            layout,
            counter,
            room: Arc::new(Room::new(root, min_free_bytes)),
            bodies: Arc::default(),
            committer,
        })
    }

    /// The free-space reserve new mail must leave, in bytes.
    pub fn min_free_bytes(&self) -> u64 {
        self.room.min_free_bytes
    }

    /// Bytes the relay may still write on the spool's filesystem (blocks
    /// available to unprivileged users).
    pub fn available(&self) -> Result<u64, SpoolError> {
        self.room.available()
    }

    /// Refuses new mail of `incoming` bytes that would leave less than the
    /// reserve free ([`SpoolError::Full`]). Asked at `MAIL FROM` with the
    /// declared `SIZE`; a [`Body`] asks again as it is written, so a client
    /// hears "come back later" before it sends a message the disk cannot
    /// hold. With no reserve (0) it never refuses.
    pub fn ensure_room(&self, incoming: u64) -> Result<(), SpoolError> {
        self.room.ensure(incoming)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A new queue id: time-ordered and unique within this spool.
    pub fn new_id(&self) -> String {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "{micros:014X}{:05X}{:04X}",
            std::process::id() & 0xFFFFF,
            n & 0xFFFF
        )
    }

    fn body_path(&self, body: &str) -> PathBuf {
        self.layout.msg.join(format!("{body}.eml"))
    }

    fn envelope_path(&self, id: &str) -> PathBuf {
        self.layout.envelope_path(id)
    }

    /// A new body for a client's message, held to the free-space reserve
    /// as it is written.
    pub fn body(&self) -> Body {
        let id = self.new_id();
        Body::new(
            id.clone(),
            self.body_path(&id),
            self.room.clone(),
            self.layout.pool.clone(),
            true,
        )
    }

    /// A body known whole (a DSN): not held to the reserve, because it
    /// reports on mail already accepted and the original stays queued until
    /// its DSN is stored; refusing the DSN would hold both.
    pub fn body_of(&self, bytes: &[u8]) -> Body {
        let id = self.new_id();
        let mut body = Body::new(
            id.clone(),
            self.body_path(&id),
            self.room.clone(),
            self.layout.pool.clone(),
            false,
        );
        body.append(bytes);
        body
    }

    /// Makes `body` and its `envelopes` durable together, through the
    /// group committer (see `commit.rs`); when this returns `Ok`, the relay
    /// may answer `250`. Returns the envelopes with the body's name, length
    /// and SHA-256. When it fails, nothing of the message stays in the spool.
    pub async fn commit(
        &self,
        body: Body,
        envelopes: Vec<Envelope>,
    ) -> Result<Vec<Envelope>, SpoolError> {
        let (layout, counter) = (self.layout.clone(), self.counter.clone());
        let staged = tokio::task::spawn_blocking(move || {
            commit::stage(&layout, &counter, Job { body, envelopes })
        })
        .await
        .map_err(|e| SpoolError::Io {
            path: self.root.clone(),
            source: std::io::Error::other(e),
        })?;
        let outcome = self.committer.submit(staged).await;
        let outcome = outcome.unwrap_or_else(|_| {
            Err(SpoolError::Io {
                path: self.root.clone(),
                source: std::io::Error::other("the spool's committer stopped"),
            })
        });
        self.retain(&outcome);
        outcome
    }

    /// [`Spool::commit`] on the calling thread, for callers outside the
    /// async runtime: the same steps, in a batch of one.
    pub fn commit_blocking(
        &self,
        body: Body,
        envelopes: Vec<Envelope>,
    ) -> Result<Vec<Envelope>, SpoolError> {
        let staged = commit::stage(&self.layout, &self.counter, Job { body, envelopes });
        let outcome = commit::write_batch(&self.layout, vec![staged], false)
            .0
            .pop()
            .expect("one outcome per job");
        self.retain(&outcome);
        outcome
    }

    /// Counts the envelopes of a committed body.
    fn retain(&self, outcome: &Result<Vec<Envelope>, SpoolError>) {
        if let Ok(envelopes) = outcome
            && let Some(body) = envelopes.first().and_then(|e| e.body.clone())
        {
            *self
                .bodies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(body)
                .or_default() += envelopes.len();
        }
    }

    /// Stores a whole message with one envelope, on the calling thread
    /// ([`Spool::commit_blocking`]); fills in the envelope's body fields.
    pub fn store(&self, envelope: &mut Envelope, message: &[u8]) -> Result<(), SpoolError> {
        let body = if envelope.is_dsn {
            self.body_of(message)
        } else {
            let mut body = self.body();
            body.append(message);
            body
        };
        let mut stored = self.commit_blocking(body, vec![envelope.clone()])?;
        *envelope = stored.pop().expect("one envelope in, one out");
        Ok(())
    }

    /// Opens `envelope`'s message for delivery, checked against the
    /// length and SHA-256 its envelope records ([`Stored`]). A missing or
    /// damaged body is never delivered: the envelope (and a damaged body)
    /// is moved to `corrupt/` and the error says so.
    pub async fn open_checked(&self, envelope: &Envelope) -> Result<Stored, SpoolError> {
        let path = self.body_path(envelope.body_id());
        // A body recorded as one chunk (most mail) is read here: a small
        // read, bounded by the recorded length whatever the file holds. A
        // larger one, or one from before lengths were recorded, is read
        // through and hashed on the blocking pool.
        let small = !envelope.message_sha256.is_empty() && envelope.message_len <= BUFFER as u64;
        let opened = if small {
            Stored::open(&path, envelope)
        } else {
            let (p, e) = (path.clone(), envelope.clone());
            tokio::task::spawn_blocking(move || Stored::open(&p, &e))
                .await
                .map_err(|e| io(&path)(std::io::Error::other(e)))?
        };
        self.checked(envelope, path, opened)
    }

    /// What [`Self::open_checked`] makes of an opened body: a missing one,
    /// one that is not what the envelope recorded or not a file at all is
    /// moved to `corrupt/` (with its envelope) and reported.
    fn checked(
        &self,
        envelope: &Envelope,
        path: PathBuf,
        opened: Result<Stored, OpenError>,
    ) -> Result<Stored, SpoolError> {
        let (with_body, detail) = match opened {
            Ok(stored) => return Ok(stored),
            Err(OpenError::Io(e)) => return Err(io(&path)(e)),
            Err(OpenError::Missing) => (
                false,
                "message body missing: envelope moved to corrupt/, not delivered".to_string(),
            ),
            Err(OpenError::Mismatch { len, sha256 }) => (
                true,
                format!(
                    "message file is {len} bytes with SHA-256 {sha256}, expected {} bytes with {}: moved to corrupt/, not delivered",
                    envelope.message_len, envelope.message_sha256
                ),
            ),
            Err(OpenError::NotAFile) => (
                true,
                "message body is not a regular file: moved to corrupt/, not delivered".to_string(),
            ),
        };
        self.set_aside(envelope, with_body);
        Err(SpoolError::Corrupt { path, detail })
    }

    /// The whole message, checked, on the calling thread: for tests.
    #[cfg(test)]
    pub fn read_checked(&self, envelope: &Envelope) -> Result<Vec<u8>, SpoolError> {
        let path = self.body_path(envelope.body_id());
        let stored = self.checked(envelope, path.clone(), Stored::open(&path, envelope))?;
        stored.to_vec_blocking().map_err(io(&path))
    }

    /// Moves `envelope` (and its body, when `with_body`) to `corrupt/`.
    /// Other envelopes of a body moved aside then find it missing and
    /// follow it there.
    fn set_aside(&self, envelope: &Envelope, with_body: bool) {
        let aside = self.root.join("corrupt");
        let _ = fs::create_dir_all(&aside);
        let mut paths = vec![self.envelope_path(&envelope.id)];
        if with_body {
            paths.push(self.body_path(envelope.body_id()));
        }
        for p in paths {
            let _ = fs::rename(&p, aside.join(p.file_name().unwrap_or_default()));
        }
        self.release(envelope);
    }

    /// Rewrites an envelope (delivery progress) atomically. Never held to
    /// the free-space reserve: the reserve exists for this bookkeeping.
    pub fn update(&self, envelope: &Envelope) -> Result<(), SpoolError> {
        let json = serde_json::to_vec_pretty(envelope).expect("envelopes serialize");
        let target = self.envelope_path(&envelope.id);
        let tmp = self.layout.tmp.join(format!(
            "{}.json.{}",
            envelope.id,
            self.counter.fetch_add(1, Ordering::Relaxed)
        ));
        replace_durably(&tmp, &target, &json).map_err(SpoolError::from)
    }

    pub fn read_envelope(&self, id: &str) -> Result<Envelope, SpoolError> {
        let p = self.envelope_path(id);
        let bytes = fs::read(&p).map_err(io(&p))?;
        serde_json::from_slice(&bytes).map_err(|e| SpoolError::Corrupt {
            path: p,
            detail: e.to_string(),
        })
    }

    /// Removes a finished envelope, and its body when no other envelope
    /// names it (into the pool of recycled files, `pool.rs`): the envelope
    /// first, and the body only once the envelope's
    /// removal is durable (the `queue/` sync is shared with the
    /// committer's batch), so that a crash in between leaves an orphan body
    /// (removed at recovery), never an envelope without one. A failure is
    /// logged: the message was delivered, and recovery removes what is
    /// left. (A crash before the sync may deliver the message again:
    /// at-least-once, as with any MTA.)
    pub async fn remove(&self, envelope: &Envelope) {
        let pool = self.layout.pool.clone();
        let syncer = self.committer.queue_syncer();
        let bodies = self.bodies.clone();
        let (id, body) = (envelope.id.clone(), envelope.body.clone());
        let (path, body_path) = (
            self.envelope_path(&envelope.id),
            self.body_path(envelope.body_id()),
        );
        // One trip to a blocking thread: the envelope out, the wait for
        // the committer's next `queue/` sync, and the body out if it was
        // the last envelope naming it.
        let removed = tokio::task::spawn_blocking(move || {
            let Ok(retired) = pool.retire(&path) else {
                return false;
            };
            if syncer.sync().is_err() {
                return false;
            }
            // Reused only now that its old name cannot come back.
            pool.offer(retired);
            crash::point("remove:envelope");
            if release(&bodies, &id, body.as_deref()) {
                pool.recycle(&body_path);
            }
            true
        });
        if !matches!(removed.await, Ok(true)) {
            tracing::warn!(queue_id = %envelope.id, "a delivered envelope's removal is not durable; its body stays until the next start");
        }
    }

    /// [`Spool::remove`] on the calling thread.
    pub fn remove_blocking(&self, envelope: &Envelope) {
        let pool = &self.layout.pool;
        let Ok(retired) = pool.retire(&self.envelope_path(&envelope.id)) else {
            return;
        };
        if self.layout.queue_dir.sync_all().is_ok() {
            pool.offer(retired);
            if self.release(envelope) {
                pool.recycle(&self.body_path(envelope.body_id()));
            }
        }
    }

    /// Forgets `envelope`'s claim on its body ([`release`]).
    fn release(&self, envelope: &Envelope) -> bool {
        release(&self.bodies, &envelope.id, envelope.body.as_deref())
    }

    /// Everything queued, after a restart: envelopes whose body exists.
    /// Removes leftovers of interrupted writes (`tmp/`, bodies no envelope
    /// names) and counts each body's envelopes. A corrupt envelope is moved
    /// aside to `corrupt/` and reported, never silently dropped; while there
    /// is one, unnamed bodies go there too (one may be its body).
    pub fn recover(&self) -> Result<(Vec<Envelope>, Vec<SpoolError>), SpoolError> {
        let tmp = &self.layout.tmp;
        for entry in fs::read_dir(tmp).map_err(io(tmp))?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        let (mut envelopes, problems, set_aside) = self.read_queue()?;
        let named: HashSet<&str> = envelopes.iter().map(|e| e.body_id()).collect();
        self.sweep_bodies(&named, set_aside)?;
        // Old envelopes own their file alone; only shared bodies are counted.
        let mut counts: HashMap<String, usize> = HashMap::new();
        for body in envelopes.iter().filter_map(|e| e.body.clone()) {
            *counts.entry(body).or_default() += 1;
        }
        *self.bodies.lock().unwrap_or_else(|e| e.into_inner()) = counts;
        envelopes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((envelopes, problems))
    }

    /// Every envelope in `queue/` whose body exists, the problems with the
    /// others (each moved to `corrupt/`), and whether an envelope file was
    /// moved there because it could not be read (then unnamed bodies may be
    /// its own).
    fn read_queue(&self) -> Result<(Vec<Envelope>, Vec<SpoolError>, bool), SpoolError> {
        let mut envelopes = Vec::new();
        let mut problems = Vec::new();
        let mut set_aside = false;
        let aside = self.root.join("corrupt");
        let queue = &self.layout.queue;
        for entry in fs::read_dir(queue).map_err(io(queue))?.flatten() {
            let path = entry.path();
            let Some(id) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                continue;
            };
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let read = self.read_envelope(&id).and_then(|e| {
                // A file that does not hold its own envelope (a crash
                // reusing a file, an operator's copy) would be delivered
                // and never removed.
                if e.id == id {
                    Ok(e)
                } else {
                    Err(SpoolError::Corrupt {
                        path: path.clone(),
                        detail: format!("holds the envelope of {}", e.id),
                    })
                }
            });
            match read {
                Ok(e) if self.body_path(e.body_id()).exists() => envelopes.push(e),
                // Never attempted, never removed: it would stay in queue/
                // (and in every listing) for ever.
                Ok(_) => {
                    let _ = fs::create_dir_all(&aside);
                    let _ = fs::rename(&path, aside.join(path.file_name().unwrap_or_default()));
                    problems.push(SpoolError::Corrupt {
                        path: path.clone(),
                        detail: "message body missing: envelope moved to corrupt/, not delivered"
                            .into(),
                    });
                }
                Err(e) => {
                    let _ = fs::create_dir_all(&aside);
                    let _ = fs::rename(&path, aside.join(path.file_name().unwrap_or_default()));
                    set_aside = true;
                    problems.push(e);
                }
            }
        }
        Ok((envelopes, problems, set_aside))
    }

    /// Removes the bodies in `msg/` that no envelope `named`: never
    /// acknowledged, since the envelope is the commit record. While an
    /// envelope was `set_aside`, they go to `corrupt/` instead, for an
    /// operator to inspect beside it (one may be its body).
    fn sweep_bodies(&self, named: &HashSet<&str>, set_aside: bool) -> Result<(), SpoolError> {
        let aside = self.root.join("corrupt");
        let msg = &self.layout.msg;
        for entry in fs::read_dir(msg).map_err(io(msg))?.flatten() {
            let p = entry.path();
            let id = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if named.contains(id.as_str()) {
                continue;
            }
            if set_aside {
                let _ = fs::rename(&p, aside.join(p.file_name().unwrap_or_default()));
            } else {
                let _ = fs::remove_file(&p);
            }
        }
        Ok(())
    }

    /// The queued envelopes, read-only (no clean-up): for metrics.
    pub fn recover_list(&self) -> (Vec<Envelope>, usize) {
        let mut out = Vec::new();
        let mut bad = 0;
        if let Ok(dir) = fs::read_dir(&self.layout.queue) {
            for entry in dir.flatten() {
                let id = entry
                    .path()
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                match self.read_envelope(&id) {
                    Ok(e) => out.push(e),
                    Err(_) => bad += 1,
                }
            }
        }
        (out, bad)
    }

    /// Number of queued messages (for status and metrics).
    pub fn len(&self) -> usize {
        fs::read_dir(&self.layout.queue)
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(spool: &Spool) -> Envelope {
        Envelope {
            id: spool.new_id(),
            sender: "a@contoso.com".into(),
            recipients: vec![Recipient {
                address: "b@example.org".into(),
                state: RecipientState::Pending,
            }],
            tenant: Some("contoso".into()),
            received_at: now(),
            attempts: 0,
            next_attempt: now(),
            last_error: None,
            is_dsn: false,
            client: "203.0.113.5".into(),
            authenticated: true,
            head: String::new(),
            body: None,
            message_sha256: String::new(),
            message_len: 0,
        }
    }

    #[test]
    fn store_recover_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut e = envelope(&spool);
        spool.store(&mut e, b"Subject: x\r\n\r\nbody\r\n").unwrap();
        // An interrupted write and an unacknowledged message are cleaned up.
        std::fs::write(dir.path().join("tmp/junk"), b"x").unwrap();
        std::fs::write(dir.path().join("msg/ORPHAN.eml"), b"x").unwrap();
        let reopened = Spool::open(dir.path()).unwrap();
        let (found, problems) = reopened.recover().unwrap();
        assert_eq!(found, vec![e.clone()]);
        assert!(problems.is_empty());
        assert!(!dir.path().join("tmp/junk").exists());
        assert!(!dir.path().join("msg/ORPHAN.eml").exists());
        assert_eq!(
            reopened.read_checked(&e).unwrap(),
            b"Subject: x\r\n\r\nbody\r\n"
        );
        reopened.remove_blocking(&e);
        assert_eq!(names(&dir.path().join("msg")), Vec::<String>::new());
        assert!(reopened.recover().unwrap().0.is_empty());
    }

    /// Every chunk a delivery reads, in order.
    async fn read_all(stored: &Stored) -> std::io::Result<Vec<u8>> {
        let mut reader = stored.reader();
        let mut out = Vec::new();
        while let Some(chunk) = reader.next().await? {
            assert!(chunk.len() <= BUFFER.max(stored.len() as usize - out.len()));
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_large_body_is_read_in_chunks_and_checked_again_as_it_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut e = envelope(&spool);
        let mut message = b"Subject: big\r\n\r\n".to_vec();
        message.extend((0..300_000u32).map(|i| b'a' + (i % 26) as u8));
        message.extend_from_slice(b"\r\n");
        spool.store(&mut e, &message).unwrap();
        let stored = spool.open_checked(&e).await.unwrap();
        assert_eq!(stored.len(), (e.head.len() + message.len()) as u64);
        let mut expected = e.head.as_bytes().to_vec();
        expected.extend_from_slice(&message);
        assert_eq!(read_all(&stored).await.unwrap(), expected);
        // Changed in place after the check: the reader refuses to hand out
        // the end of the message.
        let path = dir.path().join("msg").join(format!("{}.eml", e.body_id()));
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"EVIL", 100_000).unwrap();
        let err = read_all(&stored).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        // A reader that failed never reports a clean end afterwards.
        let mut reader = stored.reader();
        while reader.next().await.is_ok() {}
        assert!(reader.next().await.is_err());
        // An envelope from before digests is checked against the body as
        // it was read when opened.
        let mut old = e.clone();
        old.message_sha256.clear();
        std::os::unix::fs::FileExt::write_all_at(&file, b"aaaa", 100_000).unwrap();
        let opened = spool.open_checked(&old).await.unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"EVIL", 100_000).unwrap();
        assert!(read_all(&opened).await.is_err());
        // Cut short after the check: an error too, not a shorter message.
        file.set_len(200_000).unwrap();
        assert!(read_all(&stored).await.is_err());
        // And the next attempt's check sets it aside.
        let err = spool.open_checked(&e).await.unwrap_err().to_string();
        assert!(err.contains("moved to corrupt/, not delivered"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_that_is_no_regular_file_is_set_aside_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        for swap in ["symlink to /dev/zero", "fifo", "grown"] {
            let mut e = envelope(&spool);
            spool.store(&mut e, b"Subject: x\r\n\r\nsmall\r\n").unwrap();
            let path = dir.path().join("msg").join(format!("{}.eml", e.body_id()));
            std::fs::remove_file(&path).unwrap();
            match swap {
                "fifo" => rustix::fs::mkfifoat(
                    rustix::fs::CWD,
                    &path,
                    rustix::fs::Mode::from_raw_mode(0o600),
                )
                .unwrap(),
                "grown" => std::fs::write(&path, vec![b'x'; 50 << 20]).unwrap(),
                _ => std::os::unix::fs::symlink("/dev/zero", &path).unwrap(),
            }
            // Each answers at once: nothing waits on a writer or reads on
            // without end (a recorded small body is read on a runtime
            // thread, so the open runs as a task of its own and the test
            // waits for it from another).
            let opening = tokio::spawn({
                let spool = spool.clone();
                async move { spool.open_checked(&e).await.map(|_| ()) }
            });
            let opened = tokio::time::timeout(std::time::Duration::from_secs(5), opening)
                .await
                .unwrap_or_else(|_| panic!("{swap}: open_checked hung"))
                .unwrap();
            let err = opened.unwrap_err().to_string();
            assert!(err.contains("moved to corrupt/"), "{swap}: {err}");
        }
    }

    #[tokio::test]
    async fn an_eight_bit_body_is_seen_when_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut e = envelope(&spool);
        spool
            .store(&mut e, "Subject: x\r\n\r\nGrüße\r\n".as_bytes())
            .unwrap();
        assert!(spool.open_checked(&e).await.unwrap().eight_bit());
        let mut e = envelope(&spool);
        spool.store(&mut e, b"Subject: x\r\n\r\nhello\r\n").unwrap();
        assert!(!spool.open_checked(&e).await.unwrap().eight_bit());
    }

    #[test]
    fn a_torn_message_file_is_never_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut e = envelope(&spool);
        spool
            .store(
                &mut e,
                b"Subject: x\r\n\r\na body that a crash will cut\r\n",
            )
            .unwrap();
        assert!(spool.read_checked(&e).is_ok());
        // Cut the file in half, as a crash on a filesystem without ordered writes could.
        let path = dir.path().join("msg").join(format!("{}.eml", e.body_id()));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let (found, _) = spool.recover().unwrap();
        let err = spool.read_checked(&found[0]).unwrap_err().to_string();
        assert!(err.contains("moved to corrupt/, not delivered"), "{err}");
        assert!(
            dir.path()
                .join("corrupt")
                .join(format!("{}.eml", e.body_id()))
                .exists()
        );
        assert!(spool.recover().unwrap().0.is_empty());
    }

    #[test]
    fn ids_are_unique_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let ids: Vec<String> = (0..1000).map(|_| spool.new_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 1000);
    }

    fn names(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_failed_store_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_with(dir.path(), 0).unwrap();
        // The envelope's rename fails (ENOTDIR), even for root, after the
        // message file was placed and the envelope's tmp file written.
        std::fs::remove_dir(dir.path().join("queue")).unwrap();
        std::fs::write(dir.path().join("queue"), b"not a directory").unwrap();
        let mut e = envelope(&spool);
        let err = spool.store(&mut e, b"Subject: x\r\n\r\nbody\r\n");
        assert!(matches!(err, Err(SpoolError::Io { .. })), "{err:?}");
        assert!(!err.unwrap_err().is_full());
        assert_eq!(names(&dir.path().join("tmp")), Vec::<String>::new());
        assert_eq!(names(&dir.path().join("msg")), Vec::<String>::new());
    }

    #[test]
    fn the_reserve_refuses_new_mail_but_not_bookkeeping_or_dsns() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_with(dir.path(), u64::MAX / 2).unwrap();
        let err = spool.ensure_room(0).unwrap_err();
        assert!(
            matches!(err, SpoolError::Full { needed, available, .. } if needed == u64::MAX / 2 && available < needed),
            "{err:?}"
        );
        assert!(err.is_full());
        assert!(err.to_string().contains("min_free_bytes"), "{err}");

        let mut e = envelope(&spool);
        let err = spool.store(&mut e, b"Subject: x\r\n\r\nbody\r\n");
        assert!(err.is_err_and(|e| e.is_full()));
        assert_eq!(names(&dir.path().join("msg")), Vec::<String>::new());
        assert_eq!(names(&dir.path().join("tmp")), Vec::<String>::new());

        // A DSN reports on mail already accepted: it may use the reserve,
        // and so may the envelope rewrites of delivery.
        let mut dsn = envelope(&spool);
        dsn.is_dsn = true;
        spool
            .store(&mut dsn, b"Subject: bounce\r\n\r\nx\r\n")
            .unwrap();
        dsn.attempts = 1;
        spool.update(&dsn).unwrap();
        assert_eq!(spool.read_envelope(&dsn.id).unwrap(), dsn);
    }

    #[test]
    fn messages_being_written_count_against_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let probe = Spool::open_with(dir.path(), 1).unwrap();
        let available = probe.available().unwrap();
        // A reserve that leaves room for one half of the free space.
        let spool = Spool::open_with(dir.path(), available / 2).unwrap();
        let mut first = room::Reservation::new(spool.room.clone(), true);
        first.grow(available / 3).unwrap();
        // Another session's message of the same size now no longer fits,
        // although the disk has not seen a byte of the first yet.
        assert!(spool.ensure_room(available / 3).unwrap_err().is_full());
        let mut second = room::Reservation::new(spool.room.clone(), true);
        assert!(second.grow(available / 3).unwrap_err().is_full());
        drop(first);
        assert!(spool.ensure_room(available / 3).is_ok());
    }

    #[test]
    fn no_reserve_never_refuses_and_a_small_one_measures_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let off = Spool::open_with(dir.path(), 0).unwrap();
        assert!(off.ensure_room(u64::MAX).is_ok());
        let small = Spool::open_with(dir.path(), 1).unwrap();
        assert!(small.available().unwrap() > 0);
        assert!(small.ensure_room(1).is_ok());
        assert!(small.ensure_room(u64::MAX).unwrap_err().is_full());
        assert_eq!(
            Spool::open(dir.path()).unwrap().min_free_bytes(),
            DEFAULT_MIN_FREE_BYTES
        );
    }

    #[test]
    fn full_means_no_space_or_no_quota() {
        let io_error = |errno: rustix::io::Errno| SpoolError::Io {
            path: PathBuf::from("spool/tmp/x"),
            source: std::io::Error::from(errno),
        };
        assert!(io_error(rustix::io::Errno::NOSPC).is_full());
        assert!(io_error(rustix::io::Errno::DQUOT).is_full());
        assert!(!io_error(rustix::io::Errno::ACCESS).is_full());
        assert!(!io_error(rustix::io::Errno::IO).is_full());
        let corrupt = SpoolError::Corrupt {
            path: PathBuf::from("queue/x.json"),
            detail: String::new(),
        };
        assert!(!corrupt.is_full());
    }

    #[test]
    fn corrupt_envelopes_are_set_aside_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("queue/BAD.json"), b"{not json").unwrap();
        std::fs::write(dir.path().join("msg/BAD.eml"), b"x").unwrap();
        let (found, problems) = spool.recover().unwrap();
        assert!(found.is_empty());
        assert_eq!(problems.len(), 1);
        assert!(dir.path().join("corrupt/BAD.json").exists());
        assert!(
            dir.path().join("corrupt/BAD.eml").exists(),
            "the message is kept for the operator"
        );
    }

    #[test]
    fn an_envelope_file_holding_another_envelope_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut e = envelope(&spool);
        spool.store(&mut e, b"Subject: x\r\n\r\nbody\r\n").unwrap();
        // Its envelope under another name, as a reused file could leave it.
        std::fs::copy(
            dir.path().join("queue").join(format!("{}.json", e.id)),
            dir.path().join("queue/ELSEWHERE.json"),
        )
        .unwrap();
        let (found, problems) = spool.recover().unwrap();
        assert_eq!(found, vec![e.clone()], "the true one is kept");
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].to_string().contains("holds the envelope of"),
            "{}",
            problems[0]
        );
        assert!(dir.path().join("corrupt/ELSEWHERE.json").exists());
    }
}
