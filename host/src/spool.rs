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
}

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
}

fn fsync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl Spool {
    /// Opens (creating if needed) the spool at `root`.
    pub fn open(root: &Path) -> Result<Spool, SpoolError> {
        for sub in ["msg", "queue", "tmp"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(Spool {
            root: root.to_path_buf(),
            counter: AtomicU64::new(0),
        })
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

    /// Writes `bytes` to `target` durably (tmp, fsync, rename, fsync dir).
    fn write_durably(&self, target: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.root.join("tmp").join(format!(
            "{name}.{}",
            self.counter.fetch_add(1, Ordering::Relaxed)
        ));
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        fs::rename(&tmp, target).map_err(io(target))?;
        fsync_dir(target.parent().unwrap_or(&self.root))
    }

    /// Stores a new message durably; when this returns `Ok`, the relay may answer `250`.
    pub fn store(&self, envelope: &mut Envelope, message: &[u8]) -> Result<(), SpoolError> {
        use sha2::Digest;
        envelope.message_sha256 = sha2::Sha256::digest(message)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        envelope.message_len = message.len() as u64;
        self.write_durably(&self.message_path(&envelope.id), message)?;
        self.update(envelope)
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

    /// Rewrites an envelope (delivery progress) atomically.
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
