//! The durable spool: messages the relay answered `250` for, until they are
//! delivered or bounced.
//!
//! Layout under `[spool] path`:
//! - `msg/ID.eml`: the message as it will be sent (our headers prepended, CRLF);
//! - `queue/ID.json`: its envelope and delivery state — **the commit record**;
//! - `tmp/`: files being written.
//!
//! Every write goes to `tmp/`, is fsynced, renamed into place, and the target
//! directory is fsynced, so that after a crash a file is either complete or
//! absent. The message is written before its envelope and the envelope is the
//! commit point: the SMTP `250` is sent only after the envelope is durable,
//! and a message file without an envelope (a crash between the two writes,
//! before any `250`) is removed at recovery.
//!
//! A full disk is a temporary condition, never a lasting one: a write that
//! fails removes what it had written (a leftover in `tmp/` would keep the
//! disk full until a restart), and new mail is refused while less than
//! `[spool] min_free_bytes` would remain free ([`Spool::ensure_room`]), so
//! that the envelope rewrites of delivery and the DSNs for mail already
//! accepted still find room.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

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

/// Where one recipient stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum RecipientState {
    Pending,
    Delivered { reply: String },
    Failed { reply: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    #[serde(flatten)]
    pub state: RecipientState,
}

/// A queued message's envelope and delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    /// Reverse-path; empty for the null sender.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// The attributed tenant.
    pub tenant: Option<String>,
    /// Unix seconds.
    pub received_at: i64,
    pub attempts: u32,
    /// Unix seconds of the next delivery attempt.
    pub next_attempt: i64,
    pub last_error: Option<String>,
    /// A delivery status notification we generated (never bounced itself).
    #[serde(default)]
    pub is_dsn: bool,
    /// The client that sent it, for logs and DSNs.
    #[serde(default)]
    pub client: String,
    /// Whether a connector authenticated the sender: the mail originated at
    /// a tenant's server (by certificate or IP). Otherwise the reverse-path
    /// may be forged, so a DSN returns none of the message and DSNs are
    /// rate-limited per sender domain (backscatter, `delivery::dsn`).
    /// Envelopes spooled before this field existed read as `false`, the
    /// cautious side.
    #[serde(default)]
    pub authenticated: bool,
    /// SHA-256 and length of the message file, set by [`Spool::store`]: a
    /// file torn by a crash or a bad disk is detected, never delivered.
    #[serde(default)]
    pub message_sha256: String,
    #[serde(default)]
    pub message_len: u64,
}

impl Envelope {
    pub fn pending(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients
            .iter()
            .filter(|r| r.state == RecipientState::Pending)
    }
}

/// One queued message as `GET /queue` and `attrelay queue list` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueEntry {
    pub id: String,
    /// Empty for the null sender.
    pub sender: String,
    pub tenant: Option<String>,
    /// Recipients still to deliver.
    pub pending: Vec<String>,
    pub received_at: i64,
    pub attempts: u32,
    pub next_attempt: i64,
    pub last_error: Option<String>,
    pub is_dsn: bool,
    /// Bytes of the message file.
    pub size: u64,
}

/// Every message in the spool's queue, oldest first. Reads each envelope:
/// meant for an operator's look at the queue, not for periodic scraping.
pub fn listing(spool: &Spool) -> Vec<QueueEntry> {
    let (envelopes, _) = spool.recover_list();
    let mut out: Vec<QueueEntry> = envelopes
        .into_iter()
        .map(|e| QueueEntry {
            pending: e.pending().map(|r| r.address.clone()).collect(),
            id: e.id,
            sender: e.sender,
            tenant: e.tenant,
            received_at: e.received_at,
            attempts: e.attempts,
            next_attempt: e.next_attempt,
            last_error: e.last_error,
            is_dsn: e.is_dsn,
            size: e.message_len,
        })
        .collect();
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
    counter: AtomicU64,
    /// Bytes that new mail must leave free on the spool's filesystem; 0
    /// turns the check off (a full disk is then met at `ENOSPC` only).
    min_free_bytes: u64,
    /// Bytes of new messages being written right now: not yet visible in
    /// the filesystem's free space, so that sessions storing at the same
    /// time cannot each pass the check and together eat the reserve.
    writing: AtomicU64,
}

/// Bytes of a message being written, counted in [`Spool`]'s `writing`
/// until the write has ended (then the filesystem counts them).
#[derive(Debug)]
struct Reservation<'a> {
    writing: &'a AtomicU64,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.writing.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

fn fsync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
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
/// full. The spool and directory delivery both write this way.
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
/// fails, the spool's recovery empties `tmp/` at the next start, and a
/// retried directory delivery writes the same temporary name again.
pub fn discard(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a partly written file");
    }
}

impl Spool {
    /// Opens (creating if needed) the spool at `root`, with the default
    /// free-space reserve ([`DEFAULT_MIN_FREE_BYTES`]).
    pub fn open(root: &Path) -> Result<Spool, SpoolError> {
        Spool::open_with(root, DEFAULT_MIN_FREE_BYTES)
    }

    /// Opens (creating if needed) the spool at `root`; new mail must leave
    /// `min_free_bytes` free on its filesystem (0: no reserve).
    pub fn open_with(root: &Path, min_free_bytes: u64) -> Result<Spool, SpoolError> {
        for sub in ["msg", "queue", "tmp"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(Spool {
            root: root.to_path_buf(),
            counter: AtomicU64::new(0),
            min_free_bytes,
            writing: AtomicU64::new(0),
        })
    }

    /// The free-space reserve new mail must leave, in bytes.
    pub fn min_free_bytes(&self) -> u64 {
        self.min_free_bytes
    }

    /// Bytes the relay may still write on the spool's filesystem (blocks
    /// available to unprivileged users: the root-only reserve of ext4 is not
    /// counted, so a relay running as root still stops before it).
    pub fn available(&self) -> Result<u64, SpoolError> {
        let st =
            rustix::fs::statvfs(&self.root).map_err(|e| io(&self.root)(std::io::Error::from(e)))?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Refuses new mail of `incoming` bytes that would leave less than the
    /// reserve free ([`SpoolError::Full`]). Asked at `MAIL FROM` with the
    /// declared `SIZE` and by [`Spool::store`] with the actual length, so a
    /// client hears "come back later" before it sends a message the disk
    /// cannot hold. With no reserve (0) it never refuses.
    pub fn ensure_room(&self, incoming: u64) -> Result<(), SpoolError> {
        let in_flight = self.writing.load(Ordering::SeqCst);
        self.check_room(incoming.saturating_add(in_flight))
    }

    /// Whether `bytes` more (in flight included) leave the reserve free.
    fn check_room(&self, bytes: u64) -> Result<(), SpoolError> {
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

    fn message_path(&self, id: &str) -> PathBuf {
        self.root.join("msg").join(format!("{id}.eml"))
    }

    fn envelope_path(&self, id: &str) -> PathBuf {
        self.root.join("queue").join(format!("{id}.json"))
    }

    /// Writes `bytes` to `target` durably, through a file in `tmp/`
    /// ([`replace_durably`]: nothing stays in `tmp/` when it fails).
    fn write_durably(&self, target: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.root.join("tmp").join(format!(
            "{name}.{}",
            self.counter.fetch_add(1, Ordering::Relaxed)
        ));
        replace_durably(&tmp, target, bytes).map_err(SpoolError::from)
    }

    /// Stores a new message durably; when this returns `Ok`, the relay may
    /// answer `250`. When it fails, nothing of the message stays in the spool.
    ///
    /// Mail from clients must leave the free-space reserve
    /// ([`Spool::ensure_room`]); a DSN (`is_dsn`) may use it, because it
    /// reports on mail already accepted and the original stays queued until
    /// its DSN is stored: refusing the DSN would hold both.
    pub fn store(&self, envelope: &mut Envelope, message: &[u8]) -> Result<(), SpoolError> {
        use sha2::Digest;
        let _reservation = if envelope.is_dsn {
            None
        } else {
            Some(self.reserve(message.len() as u64)?)
        };
        envelope.message_sha256 = sha2::Sha256::digest(message)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        envelope.message_len = message.len() as u64;
        let stored = self
            .write_durably(&self.message_path(&envelope.id), message)
            .and_then(|()| self.update(envelope));
        if stored.is_err() {
            self.discard_stored(&envelope.id);
        }
        stored
    }

    /// Counts `bytes` as being written, if they leave the reserve free with
    /// everything else being written: counted first and checked after, so
    /// that two stores racing each see the other.
    fn reserve(&self, bytes: u64) -> Result<Reservation<'_>, SpoolError> {
        let in_flight = self.writing.fetch_add(bytes, Ordering::SeqCst) + bytes;
        let reservation = Reservation {
            writing: &self.writing,
            bytes,
        };
        self.check_room(in_flight)?;
        Ok(reservation)
    }

    /// Undoes a [`Spool::store`] that failed part way (a full disk while
    /// writing the envelope, a failed directory fsync): the client is told
    /// to try again, so neither file may stay to be delivered or to take
    /// space. Best effort; recovery removes an orphan message file anyway.
    fn discard_stored(&self, id: &str) {
        let removed = self
            .remove(id)
            .and_then(|()| fsync_dir(&self.root.join("msg")));
        if let Err(e) = removed {
            discard(&self.message_path(id));
            tracing::warn!(queue_id = %id, error = %e, "cannot remove a message whose storing failed");
        }
    }

    /// The message of `envelope`, checked against the length and SHA-256
    /// recorded when it was stored. A mismatch moves both files to
    /// `corrupt/` for the operator and is an error.
    pub fn read_checked(&self, envelope: &Envelope) -> Result<Vec<u8>, SpoolError> {
        use sha2::Digest;
        let bytes = self.read_message(&envelope.id)?;
        if envelope.message_sha256.is_empty() {
            return Ok(bytes);
        }
        let sha: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if bytes.len() as u64 == envelope.message_len && sha == envelope.message_sha256 {
            return Ok(bytes);
        }
        let aside = self.root.join("corrupt");
        let _ = fs::create_dir_all(&aside);
        for p in [
            self.message_path(&envelope.id),
            self.envelope_path(&envelope.id),
        ] {
            let _ = fs::rename(&p, aside.join(p.file_name().unwrap_or_default()));
        }
        Err(SpoolError::Corrupt {
            path: self.message_path(&envelope.id),
            detail: format!(
                "message file is {} bytes with SHA-256 {sha}, expected {} bytes with {}: moved to corrupt/, not delivered",
                bytes.len(),
                envelope.message_len,
                envelope.message_sha256
            ),
        })
    }

    /// Rewrites an envelope (delivery progress) atomically. Never held to
    /// the free-space reserve: the reserve exists for this bookkeeping.
    pub fn update(&self, envelope: &Envelope) -> Result<(), SpoolError> {
        let json = serde_json::to_vec_pretty(envelope).expect("envelopes serialize");
        self.write_durably(&self.envelope_path(&envelope.id), &json)
    }

    pub fn read_message(&self, id: &str) -> Result<Vec<u8>, SpoolError> {
        let p = self.message_path(id);
        fs::read(&p).map_err(io(&p))
    }

    pub fn read_envelope(&self, id: &str) -> Result<Envelope, SpoolError> {
        let p = self.envelope_path(id);
        let bytes = fs::read(&p).map_err(io(&p))?;
        serde_json::from_slice(&bytes).map_err(|e| SpoolError::Corrupt {
            path: p,
            detail: e.to_string(),
        })
    }

    /// Removes a finished message: the envelope first, so that a crash in
    /// between leaves an orphan message file, not a dangling envelope.
    pub fn remove(&self, id: &str) -> Result<(), SpoolError> {
        let env = self.envelope_path(id);
        match fs::remove_file(&env) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&env)(e)),
        }
        fsync_dir(&self.root.join("queue"))?;
        let msg = self.message_path(id);
        match fs::remove_file(&msg) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&msg)(e)),
        }
    }

    /// Everything queued, after a restart: envelopes whose message exists.
    /// Removes leftovers of interrupted writes (tmp files, orphan messages).
    /// A corrupt envelope is moved aside to `corrupt/` and reported, never
    /// silently dropped.
    pub fn recover(&self) -> Result<(Vec<Envelope>, Vec<SpoolError>), SpoolError> {
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io(&tmp))?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        let mut envelopes = Vec::new();
        let mut problems = Vec::new();
        let mut corrupt = std::collections::HashSet::new();
        let aside = self.root.join("corrupt");
        let queue = self.root.join("queue");
        for entry in fs::read_dir(&queue).map_err(io(&queue))?.flatten() {
            let path = entry.path();
            let Some(id) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                continue;
            };
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match self.read_envelope(&id) {
                Ok(e) if self.message_path(&id).exists() => envelopes.push(e),
                Ok(_) => problems.push(SpoolError::Corrupt {
                    path: path.clone(),
                    detail: "message file missing".into(),
                }),
                Err(e) => {
                    let _ = fs::create_dir_all(&aside);
                    let _ = fs::rename(&path, aside.join(path.file_name().unwrap_or_default()));
                    corrupt.insert(id);
                    problems.push(e);
                }
            }
        }
        let ids: std::collections::HashSet<String> =
            envelopes.iter().map(|e| e.id.clone()).collect();
        let msg = self.root.join("msg");
        for entry in fs::read_dir(&msg).map_err(io(&msg))?.flatten() {
            let p = entry.path();
            let id = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if corrupt.contains(&id) {
                // Kept beside its envelope for an operator to inspect.
                let _ = fs::rename(&p, aside.join(p.file_name().unwrap_or_default()));
            } else if !ids.contains(&id) && !self.envelope_path(&id).exists() {
                // Never acknowledged: the envelope is the commit record.
                let _ = fs::remove_file(&p);
            }
        }
        envelopes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((envelopes, problems))
    }

    /// The queued envelopes, read-only (no clean-up): for metrics.
    pub fn recover_list(&self) -> (Vec<Envelope>, usize) {
        let mut out = Vec::new();
        let mut bad = 0;
        if let Ok(dir) = fs::read_dir(self.root.join("queue")) {
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
        fs::read_dir(self.root.join("queue"))
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
            reopened.read_message(&e.id).unwrap(),
            b"Subject: x\r\n\r\nbody\r\n"
        );
        reopened.remove(&e.id).unwrap();
        assert!(reopened.recover().unwrap().0.is_empty());
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
        let path = dir.path().join("msg").join(format!("{}.eml", e.id));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let (found, _) = spool.recover().unwrap();
        let err = spool.read_checked(&found[0]).unwrap_err().to_string();
        assert!(err.contains("moved to corrupt/, not delivered"), "{err}");
        assert!(
            dir.path()
                .join("corrupt")
                .join(format!("{}.eml", e.id))
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
        let first = spool.reserve(available / 3).unwrap();
        // Another session's message of the same size now no longer fits,
        // although the disk has not seen a byte of the first yet.
        assert!(spool.ensure_room(available / 3).unwrap_err().is_full());
        assert!(spool.reserve(available / 3).unwrap_err().is_full());
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
}
