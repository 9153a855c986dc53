//! The durable spool: messages the relay answered `250` for, until they are
//! delivered or bounced. Its files are laid out in `layout.rs`.
//!
//! A body is streamed to its file as the client sends it (`Body`); the
//! body and its envelopes become durable together through the group
//! committer ([`Spool::commit`], `commit.rs`), and only then does SMTP
//! answer `250`. A body no envelope names (a crash or a refusal before the
//! commit) is removed at recovery (`recover.rs`); a body is removed with
//! the last envelope that names it (`shares.rs`).
//!
//! A full disk is a temporary condition, never a lasting one: a write that
//! fails removes what it had written, and new mail is refused while less
//! than `[spool] min_free_bytes` would remain free (`room.rs`), so that the
//! envelope rewrites of delivery and the DSNs for mail already accepted
//! still find room.
//!
//! The children never import this file: what they share (the error, the
//! envelope, the layout, the names) lives in children of its own.

mod body;
mod commit;
mod crash;
mod durable;
mod envelope;
mod error;
mod ids;
mod layout;
mod lock;
mod peek;
mod pool;
mod private;
mod recover;
mod room;
mod shares;
mod stored;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) use body::{BUFFER, Body};
pub(crate) use durable::{discard, replace_durably};
pub use envelope::{ENVELOPE_VERSION, Envelope, QueueEntry, Recipient, RecipientState};
pub use error::SpoolError;
pub(crate) use error::WriteError;
pub use ids::{BodyId, SpoolId};
pub use lock::SpoolLock;
pub use peek::{Listing, MAX_SHOWN_HEADER, Shown, list, show};
pub(crate) use stored::Stored;

use commit::{Committer, Job};
use error::io;
use ids::Names;
use layout::Layout;
use room::Room;
use shares::Shares;
use stored::OpenError;

/// The default of `[spool] min_free_bytes`. Postfix refuses mail unless
/// 1.5 × its message size limit is free; a fixed 64 MiB leaves room for the
/// envelope rewrites of thousands of deliveries and their DSNs (a few KiB
/// each) while a disk fills, without refusing mail on a small spool volume.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 << 20;

/// The spool directory.
#[derive(Debug)]
pub struct Spool {
    layout: Layout,
    names: Arc<Names>,
    room: Arc<Room>,
    /// How many queued envelopes name each body. Rebuilt by
    /// [`Spool::recover`].
    shares: Arc<Shares>,
    committer: Committer,
    /// Held by the spool's owner ([`Spool::open_owned`]) for as long as it
    /// has the spool open.
    _lock: Option<SpoolLock>,
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
        let layout = Layout::open(root)?;
        let committer = Committer::start(layout.clone()).map_err(io(root))?;
        Ok(Spool {
            layout,
            names: Arc::default(),
            room: Arc::new(Room::new(root, min_free_bytes)),
            shares: Arc::default(),
            committer,
            _lock: None,
        })
    }

    /// [`Spool::open_with`] for the spool's owner (the relay, or `attrelay
    /// queue` acting on a stopped relay's spool): fails with
    /// [`SpoolError::Locked`] while another process owns it, and holds its
    /// lock until the spool is dropped.
    pub fn open_owned(root: &Path, min_free_bytes: u64) -> Result<Spool, SpoolError> {
        private::private_dir(root).map_err(io(root))?;
        let lock = SpoolLock::acquire(root)?;
        Spool::open_locked(root, min_free_bytes, lock)
    }

    /// [`Spool::open_with`] for the holder of its `lock`, which it keeps
    /// until the spool is dropped.
    pub fn open_locked(
        root: &Path,
        min_free_bytes: u64,
        lock: SpoolLock,
    ) -> Result<Spool, SpoolError> {
        Ok(Spool {
            _lock: Some(lock),
            ..Spool::open_with(root, min_free_bytes)?
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
    /// declared `SIZE`; a `Body` asks again as it is written, so a client
    /// hears "come back later" before it sends a message the disk cannot
    /// hold. With no reserve (0) it never refuses.
    pub fn ensure_room(&self, incoming: u64) -> Result<(), SpoolError> {
        self.room.ensure(incoming)
    }

    pub fn root(&self) -> &Path {
        &self.layout.root
    }

    /// A new queue id: time-ordered and unique within this spool.
    pub fn new_id(&self) -> SpoolId {
        self.names.spool_id()
    }

    /// A new body for a client's message, held to the free-space reserve
    /// as it is written.
    pub fn body(&self) -> Body {
        self.new_body(true)
    }

    fn new_body(&self, checked: bool) -> Body {
        let id = self.names.body_id();
        let path = self.layout.body_path(&id);
        Body::new(
            id,
            path,
            self.room.clone(),
            self.layout.pool.clone(),
            checked,
        )
    }

    /// A body known whole (a DSN): not held to the reserve, because it
    /// reports on mail already accepted and the original stays queued until
    /// its DSN is stored; refusing the DSN would hold both.
    pub fn body_of(&self, bytes: &[u8]) -> Body {
        let mut body = self.new_body(false);
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
        let (layout, names) = (self.layout.clone(), self.names.clone());
        let staged = tokio::task::spawn_blocking(move || {
            commit::stage(&layout, &names, Job { body, envelopes })
        })
        .await
        .map_err(|e| io(self.root())(std::io::Error::other(e)))?;
        let outcome = self.committer.submit(staged).await;
        let outcome = outcome.unwrap_or_else(|_| {
            Err(io(self.root())(std::io::Error::other(
                "the spool's committer stopped",
            )))
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
        let staged = commit::stage(&self.layout, &self.names, Job { body, envelopes });
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
            && let Some(first) = envelopes.first()
        {
            self.shares.add(&first.body, envelopes.len());
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
    /// length and SHA-256 its envelope records (`Stored`). A missing or
    /// damaged body is never delivered: the envelope (and a damaged body)
    /// is moved to `corrupt/` and the error says so.
    pub async fn open_checked(&self, envelope: &Envelope) -> Result<Stored, SpoolError> {
        let path = self.layout.body_path(&envelope.body);
        // A body recorded as one chunk (most mail) is read here: a small
        // read, bounded by the recorded length whatever the file holds. A
        // larger one, or one with no record, is read through and hashed on
        // the blocking pool.
        let small = envelope
            .body_record()
            .is_some_and(|(len, _)| len <= BUFFER as u64);
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
                    envelope.body_len, envelope.body_sha256
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
        let path = self.layout.body_path(&envelope.body);
        let stored = self.checked(envelope, path.clone(), Stored::open(&path, envelope))?;
        stored.to_vec_blocking().map_err(io(&path))
    }

    /// Moves `envelope` (and its body, when `with_body`) to `corrupt/`.
    /// Other envelopes of a body moved aside then find it missing and
    /// follow it there.
    fn set_aside(&self, envelope: &Envelope, with_body: bool) {
        self.layout
            .set_aside(&self.layout.envelope_path(&envelope.id));
        if with_body {
            self.layout
                .set_aside(&self.layout.body_path(&envelope.body));
        }
        self.shares.release(&envelope.id, &envelope.body);
    }

    /// Rewrites an envelope (delivery progress) atomically. Never held to
    /// the free-space reserve: the reserve exists for this bookkeeping.
    pub fn update(&self, envelope: &Envelope) -> Result<(), SpoolError> {
        let json = serde_json::to_vec_pretty(envelope).expect("envelopes serialize");
        let target = self.layout.envelope_path(&envelope.id);
        let tmp = self.layout.envelope_tmp(&envelope.id, self.names.serial());
        replace_durably(&tmp, &target, &json).map_err(SpoolError::from)
    }

    pub fn read_envelope(&self, id: &SpoolId) -> Result<Envelope, SpoolError> {
        recover::read_envelope(&self.layout, id)
    }

    /// Removes a finished envelope, and its body when no other envelope
    /// names it (into the pool of recycled files, `pool.rs`): the envelope
    /// first, and the body only once the envelope's
    /// removal is durable (the `queue/` sync is shared with the
    /// committer's batch), so that a crash in between leaves an orphan body
    /// (removed at recovery), never an envelope without one. A failure is
    /// logged: the message was delivered, and recovery removes what is
    /// left. (A crash before the sync may deliver the message again:
    /// at-least-once, as with any MTA.) Returns whether the removal is
    /// durable.
    pub async fn remove(&self, envelope: &Envelope) -> bool {
        let pool = self.layout.pool.clone();
        let syncer = self.committer.queue_syncer();
        let shares = self.shares.clone();
        let (id, body) = (envelope.id.clone(), envelope.body.clone());
        let (path, body_path) = (
            self.layout.envelope_path(&envelope.id),
            self.layout.body_path(&envelope.body),
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
            if shares.release(&id, &body) {
                pool.recycle(&body_path);
            }
            true
        });
        let durable = matches!(removed.await, Ok(true));
        if !durable {
            tracing::warn!(queue_id = %envelope.id, "an envelope's removal is not durable; it may come back at the next start");
        }
        durable
    }

    /// [`Spool::remove`] on the calling thread.
    pub fn remove_blocking(&self, envelope: &Envelope) {
        let pool = &self.layout.pool;
        let Ok(retired) = pool.retire(&self.layout.envelope_path(&envelope.id)) else {
            return;
        };
        if self.layout.queue_dir.sync_all().is_ok() {
            pool.offer(retired);
            if self.shares.release(&envelope.id, &envelope.body) {
                pool.recycle(&self.layout.body_path(&envelope.body));
            }
        }
    }

    /// Everything queued, after a restart (see `recover.rs`): envelopes
    /// whose body exists, and the problems with the others, each set aside.
    pub fn recover(&self) -> Result<(Vec<Envelope>, Vec<SpoolError>), SpoolError> {
        recover::recover(&self.layout, &self.shares)
    }

    /// The queued envelopes, oldest first, read-only (no clean-up): for an
    /// operator's look at the queue and for metrics.
    pub fn list(&self) -> Listing {
        peek::list(&self.layout.root).unwrap_or_default()
    }

    /// Every queued message as `queue list` and `GET /queue` show it.
    pub fn entries(&self) -> Vec<QueueEntry> {
        self.list()
            .envelopes
            .into_iter()
            .map(QueueEntry::from)
            .collect()
    }

    /// Number of queued messages (for status and metrics): the envelope
    /// files in `queue/`, as [`Spool::list`] counts them, without reading
    /// them.
    pub fn len(&self) -> usize {
        std::fs::read_dir(&self.layout.queue)
            .map(|d| {
                d.flatten()
                    .filter(|e| recover::queued_id(&e.path()).is_some())
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn envelope(spool: &Spool) -> Envelope {
        Envelope {
            tenant: Some("contoso".into()),
            client: "203.0.113.5".into(),
            authenticated: true,
            ..Envelope::new(
                spool.new_id(),
                "a@contoso.com".into(),
                vec![Recipient {
                    address: "b@example.org".into(),
                    state: RecipientState::Pending,
                }],
            )
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
        let path = dir.path().join("msg").join(format!("{}.eml", e.body));
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
        old.body_sha256.clear();
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
            let path = dir.path().join("msg").join(format!("{}.eml", e.body));
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
        let path = dir.path().join("msg").join(format!("{}.eml", e.body));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let (found, _) = spool.recover().unwrap();
        let err = spool.read_checked(&found[0]).unwrap_err().to_string();
        assert!(err.contains("moved to corrupt/, not delivered"), "{err}");
        assert!(
            dir.path()
                .join("corrupt")
                .join(format!("{}.eml", e.body))
                .exists()
        );
        assert!(spool.recover().unwrap().0.is_empty());
    }

    #[test]
    fn ids_are_unique_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let ids: Vec<SpoolId> = (0..1000).map(|_| spool.new_id()).collect();
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

    /// An envelope as the first relays wrote it: no `version`, no body
    /// name (its `msg/ID.eml` holds the message), no digest.
    const FORMAT_0: &str = r#"{"id":"OLD1","sender":"a@contoso.com",
        "recipients":[{"address":"b@example.org","state":"pending"}],
        "tenant":"contoso","received_at":1,"attempts":0,"next_attempt":1,
        "last_error":null}"#;

    #[tokio::test]
    async fn envelopes_of_format_0_are_read_delivered_and_removed_with_their_own_body() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("queue/OLD1.json"), FORMAT_0).unwrap();
        std::fs::write(
            dir.path().join("msg/OLD1.eml"),
            b"Subject: old\r\n\r\nx\r\n",
        )
        .unwrap();
        let (found, problems) = spool.recover().unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let old = &found[0];
        assert_eq!((old.version, old.body.as_str()), (0, "OLD1"));
        assert!(!old.authenticated, "missing reads as the cautious side");
        assert_eq!(old.body_record(), None);
        let stored = spool.open_checked(old).await.unwrap();
        assert_eq!(
            stored.to_vec_blocking().unwrap(),
            b"Subject: old\r\n\r\nx\r\n"
        );
        spool.remove(old).await;
        assert_eq!(names(&dir.path().join("msg")), Vec::<String>::new());
        assert_eq!(names(&dir.path().join("queue")), Vec::<String>::new());
    }

    #[test]
    fn envelopes_of_a_newer_format_or_without_their_record_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut e = envelope(&spool);
        spool.store(&mut e, b"Subject: x\r\n\r\nbody\r\n").unwrap();
        let mut newer = serde_json::to_value(&e).unwrap();
        newer["version"] = (ENVELOPE_VERSION + 1).into();
        let path = dir.path().join(format!("queue/{}.json", e.id));
        std::fs::write(&path, newer.to_string()).unwrap();
        let err = spool.read_envelope(&e.id).unwrap_err().to_string();
        assert!(err.contains("newer than this relay's"), "{err}");
        let mut unrecorded = serde_json::to_value(&e).unwrap();
        unrecorded.as_object_mut().unwrap().remove("message_sha256");
        std::fs::write(&path, unrecorded.to_string()).unwrap();
        let err = spool.read_envelope(&e.id).unwrap_err().to_string();
        assert!(err.contains("without its body's name and digest"), "{err}");
        let (found, problems) = spool.recover().unwrap();
        assert!(found.is_empty());
        assert_eq!(problems.len(), 1);
        assert!(dir.path().join(format!("corrupt/{}.json", e.id)).exists());
    }

    #[test]
    fn an_envelope_naming_a_body_outside_the_spool_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool").as_path()).unwrap();
        std::fs::write(dir.path().join("secret.eml"), b"not mail").unwrap();
        for (file, body) in [("UP", "../../secret"), ("ABS", "/etc/passwd"), ("DOT", ".")] {
            let json = FORMAT_0
                .replace("OLD1", file)
                .replace("\"tenant\"", &format!("\"body\":{body:?},\"tenant\""));
            std::fs::write(dir.path().join(format!("spool/queue/{file}.json")), json).unwrap();
        }
        let (found, problems) = spool.recover().unwrap();
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems
                .iter()
                .all(|p| p.to_string().contains("not one the spool makes"))
        );
        assert_eq!(
            std::fs::read(dir.path().join("secret.eml")).unwrap(),
            b"not mail"
        );
        assert_eq!(spool.len(), 0);
    }

    #[test]
    fn the_file_keeps_the_names_the_first_relays_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut e = envelope(&spool);
        spool.store(&mut e, b"Subject: x\r\n\r\nbody\r\n").unwrap();
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("queue/{}.json", e.id))).unwrap(),
        )
        .unwrap();
        assert_eq!(json["version"], ENVELOPE_VERSION);
        assert_eq!(json["message_len"], e.body_len);
        assert_eq!(json["message_sha256"], e.body_sha256.as_str());
        assert_eq!(json["body"], e.body.as_str());
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
