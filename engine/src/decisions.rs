//! The decision log: every decision's inputs and verdict as one JSON line, so
//! that `attrelay policy diff` can replay real traffic through two policies
//! before an operator deploys one of them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::throttle::Throttled;

use attrelay_policy::model::{SessionFacts, Verdict};
use serde::{Deserialize, Serialize};

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Identifies the SMTP session's policy session (facts are per session).
    pub session: String,
    pub facts: SessionFacts,
    /// "mail-from" or "rcpt-to".
    pub stage: String,
    /// The reverse-path (empty for `<>`).
    pub sender: String,
    /// The recipient, for "rcpt-to".
    pub recipient: Option<String>,
    pub verdict: Verdict,
    /// SHA-256 of the policy component that decided.
    pub policy: String,
}

/// Records waiting for the writer at most.
pub const QUEUE_RECORDS: usize = 4096;

/// Bytes of records waiting for the writer at most. A record is about a
/// kilobyte, but one with a client certificate of 256 names or a policy's
/// 64 explanation lines of 1000 bytes is far more: the bound is in bytes.
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// Bytes the writer puts in one `write` at most: records that queued up
/// while it was writing go out together, each line whole.
const BATCH_BYTES: usize = 64 * 1024;

/// The default size at which the log is rotated (`[policy]
/// decision_log_max_mib`): the file becomes `<path>.1`, replacing the one
/// before, so the log takes at most twice this on disk.
pub const DEFAULT_MAX_MIB: u64 = 256;

/// The mode a new log file is created with (`[policy] decision_log_mode`):
/// its owner's only, since it names every sender, recipient and client.
pub const DEFAULT_MODE: u32 = 0o600;

/// An append-only JSON Lines file, written by a thread of its own.
///
/// A policy call only serialises its record and hands the line over
/// ([`DecisionLog::append`] never blocks and takes no lock the writer
/// holds): a slow or stalled disk, or a log on a FIFO nobody reads, must
/// not hold up the decisions it records. When [`QUEUE_RECORDS`] lines or
/// [`QUEUE_BYTES`] bytes are waiting, the record is dropped and counted,
/// with a throttled warning.
///
/// One writer serves a path for as long as anything uses it. Opening the
/// path again — a reload (file change, SIGHUP, `POST /reload`), which is
/// how external rotation (`logrotate` with `postrotate` sending SIGHUP)
/// works — hands that writer a newly opened file after the lines already
/// queued: sessions from before and after the reload write through the
/// same writer, so only one ever rotates the file, and a writer stuck on a
/// dead disk is not joined by another one at every reload. Besides, the
/// writer rotates a regular file by size itself (`max_bytes`, 0 for never).
pub struct DecisionLog {
    shared: Arc<Shared>,
}

/// What every handle on one path's log shares.
struct Shared {
    queue: SyncSender<Item>,
    queued: Arc<AtomicUsize>,
    dropped: AtomicU64,
    warning: Mutex<Throttled>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the writer is handed.
enum Item {
    Line(Vec<u8>),
    /// The path opened again (a reload): write on in this file.
    Reopen(OpenFile),
}

/// A log file as it was opened.
struct OpenFile {
    file: File,
    size: u64,
    regular: bool,
    max_bytes: u64,
    /// The mode the file is created with (and its rotation's next one).
    mode: u32,
}

impl OpenFile {
    fn open(path: &Path, max_bytes: u64, mode: u32) -> std::io::Result<OpenFile> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(mode)
            .open(path)?;
        let meta = file.metadata()?;
        let has = meta.permissions().mode() & 0o777;
        if meta.is_file() && has & !mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = %format!("{has:04o}"),
                "the decision log is open to more local users than decision_log_mode ({mode:04o}) allows: chmod {mode:o} {}",
                path.display()
            );
        }
        Ok(OpenFile {
            file,
            size: meta.len(),
            regular: meta.is_file(),
            max_bytes,
            mode,
        })
    }
}

/// The live logs by path.
fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Shared>>> {
    static LOGS: OnceLock<Mutex<HashMap<PathBuf, Weak<Shared>>>> = OnceLock::new();
    LOGS.get_or_init(Default::default)
}

impl DecisionLog {
    /// Opens (creating) the log at `path`: starts its writer, or hands the
    /// writer already serving `path` the file opened anew. Errors opening
    /// the file are reported here, to the reload that asked.
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<DecisionLog> {
        DecisionLog::open_with_mode(path, max_bytes, DEFAULT_MODE)
    }

    /// [`DecisionLog::open`], creating the file with `mode` (and its
    /// rotations too); an existing file more open than `mode` draws a
    /// warning with the `chmod` that closes it.
    pub fn open_with_mode(path: &Path, max_bytes: u64, mode: u32) -> std::io::Result<DecisionLog> {
        let file = OpenFile::open(path, max_bytes, mode)?;
        let mut logs = registry().lock().unwrap_or_else(|e| e.into_inner());
        logs.retain(|_, w| w.strong_count() > 0);
        if let Some(shared) = logs.get(path).and_then(Weak::upgrade) {
            // Behind a full queue (a stalled writer) the new file waits its
            // turn or is dropped: the writer keeps the file it has.
            let _ = shared.queue.try_send(Item::Reopen(file));
            return Ok(DecisionLog { shared });
        }
        let (queue, items) = sync_channel(QUEUE_RECORDS);
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            path: path.to_path_buf(),
            out: file,
            queued: queued.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("attrelay-decisions".into())
            .spawn(move || writer.run(items))?;
        let shared = Arc::new(Shared {
            queue,
            queued,
            dropped: AtomicU64::new(0),
            warning: Mutex::new(Throttled::default()),
            writer: Mutex::new(Some(handle)),
        });
        logs.insert(path.to_path_buf(), Arc::downgrade(&shared));
        Ok(DecisionLog { shared })
    }

    /// Hands one record to the writer; drops it (counted, with a throttled
    /// warning) when the writer is too far behind.
    pub fn append(&self, record: DecisionRecord) {
        let shared = &self.shared;
        let Ok(mut line) = serde_json::to_vec(&record) else {
            return;
        };
        line.push(b'\n');
        let len = line.len();
        let waiting = shared.queued.fetch_add(len, Ordering::Relaxed) + len;
        if waiting <= QUEUE_BYTES && shared.queue.try_send(Item::Line(line)).is_ok() {
            return;
        }
        shared.queued.fetch_sub(len, Ordering::Relaxed);
        let dropped = shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut w) = shared.warning.try_lock() {
            w.warn(
                "decision log: the writer is behind (a slow or stalled disk); records dropped",
                &format_args!("{dropped} dropped so far"),
            );
        }
    }

    /// Records dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// When this is the last handle on its path: waits until every record
    /// handed over is written. Dropping the log instead lets the writer
    /// finish on its own, which a relay prefers: a stalled disk must not
    /// hold up a reload or a shutdown.
    pub fn close(self) {
        let Ok(shared) = Arc::try_unwrap(self.shared) else {
            return;
        };
        let handle = shared
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(shared);
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// The writer thread's side: the path and the file it writes.
struct Writer {
    path: PathBuf,
    out: OpenFile,
    queued: Arc<AtomicUsize>,
}

impl Writer {
    /// Writes lines as they come, in batches, until every handle is gone.
    fn run(mut self, items: Receiver<Item>) {
        let mut failed = Throttled::default();
        let mut next = items.recv().ok();
        while let Some(item) = next.take() {
            let mut batch = match item {
                Item::Reopen(file) => {
                    self.out = file;
                    next = items.recv().ok();
                    continue;
                }
                Item::Line(l) => l,
            };
            while batch.len() < BATCH_BYTES {
                match items.try_recv() {
                    Ok(Item::Line(l)) => batch.extend_from_slice(&l),
                    // A reopen ends the batch: its lines go to the old file.
                    Ok(reopen) => {
                        next = Some(reopen);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if let Err(e) = self.write(&batch) {
                failed.warn("cannot append to the decision log", &e);
            }
            self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
            if next.is_none() {
                next = items.recv().ok();
            }
        }
    }

    /// Appends `batch` (whole lines), rotating wherever the next line
    /// would take the file past its bound: a burst that arrives as one
    /// batch is split between the files like lines written one by one.
    fn write(&mut self, mut batch: &[u8]) -> std::io::Result<()> {
        while !batch.is_empty() {
            let part = self.fitting(batch);
            self.append(&batch[..part])?;
            batch = &batch[part..];
        }
        Ok(())
    }

    /// How much of `batch` goes into the current file: the whole lines that
    /// fit under the bound, after a rotation when not even one does. A
    /// line longer than the bound goes alone into a fresh file.
    fn fitting(&mut self, batch: &[u8]) -> usize {
        let out = &self.out;
        if !out.regular || out.max_bytes == 0 {
            return batch.len();
        }
        let whole_lines = |room: u64| {
            let end = batch.len().min(room.min(usize::MAX as u64) as usize);
            batch[..end]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1)
        };
        let fit = whole_lines(out.max_bytes.saturating_sub(out.size));
        if fit > 0 {
            return fit;
        }
        if out.size > 0
            && let Err(e) = self.rotate()
        {
            // Keep appending to the file as it is: losing records is worse
            // than a log past its bound.
            tracing::warn!(path = %self.path.display(), error = %e, "cannot rotate the decision log");
            return batch.len();
        }
        match whole_lines(self.out.max_bytes.saturating_sub(self.out.size)) {
            0 => batch
                .iter()
                .position(|&b| b == b'\n')
                .map_or(batch.len(), |i| i + 1),
            fit => fit,
        }
    }

    fn append(&mut self, part: &[u8]) -> std::io::Result<()> {
        match self.out.file.write_all(part) {
            Ok(()) => {
                self.out.size += part.len() as u64;
                Ok(())
            }
            Err(e) => {
                // A write cut short (a full disk) would leave half a line,
                // and the next batch would run into it: cut the file back
                // to its last whole line.
                if self.out.regular {
                    let _ = self.out.file.set_len(self.out.size);
                }
                Err(e)
            }
        }
    }

    /// `<path>` becomes `<path>.1` (replacing it) and a new `<path>` is
    /// started.
    fn rotate(&mut self) -> std::io::Result<()> {
        std::fs::rename(&self.path, rotated(&self.path))?;
        self.out = OpenFile::open(&self.path, self.out.max_bytes, self.out.mode)?;
        tracing::info!(path = %self.path.display(), "decision log rotated");
        Ok(())
    }
}

/// Where a rotated decision log goes: `<path>.1`.
pub fn rotated(path: &Path) -> PathBuf {
    let mut old = path.to_path_buf().into_os_string();
    old.push(".1");
    PathBuf::from(old)
}

/// Records one SMTP connection may append to the decision log.
///
/// Each record is close to a kilobyte (the session facts are repeated in
/// every one), so without a bound one client sending hundreds of refused
/// recipients grows the log by hundreds of kilobytes per connection. 256
/// holds two full transactions at the default `max_recipients` (100), which
/// is what `policy diff` needs to replay real traffic; beyond it the
/// connection's decisions are still made and answered, only not logged.
///
/// The rest of the session is dropped rather than marked with a final
/// record: `policy diff` replays every record as a decision, so a marker
/// would be replayed too. What is logged is a prefix of the session, which
/// replays exactly as it was decided; one warning naming the session says
/// that the rest was not logged.
pub const MAX_RECORDS_PER_SESSION: u32 = 256;

/// What one SMTP connection has used of its [`MAX_RECORDS_PER_SESSION`].
///
/// Shared (cheap to clone) by the successive policy sessions of one
/// connection: EHLO opens a new policy session with new facts and a new
/// session id, and must not renew the allowance.
#[derive(Debug, Clone, Default)]
pub struct DecisionBudget {
    appended: Arc<AtomicU32>,
}

/// Whether one more record may be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Append it.
    Append,
    /// The first record over the bound: do not append, say so once.
    Exhausted,
    /// Over the bound, already said.
    Silent,
}

impl DecisionBudget {
    /// Takes one record from the allowance. The count stops one past the
    /// bound, so it never wraps however long a connection lasts.
    pub fn take(&self) -> Grant {
        let before = self
            .appended
            .try_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n <= MAX_RECORDS_PER_SESSION).then_some(n + 1)
            });
        match before {
            Ok(n) if n < MAX_RECORDS_PER_SESSION => Grant::Append,
            Ok(_) => Grant::Exhausted,
            Err(_) => Grant::Silent,
        }
    }
}

/// Reads a decision log; a malformed line is an error naming its number.
pub fn read(path: &Path) -> Result<Vec<DecisionRecord>, String> {
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .map_err(|e| format!("{}:{}: not a decision record: {e}", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> DecisionRecord {
        DecisionRecord {
            session: format!("s{i}"),
            facts: SessionFacts {
                client_ip: std::net::IpAddr::from([192, 0, 2, 1]),
                helo: "client.example".into(),
                server_hostname: "relay.example.test".into(),
                time: 0,
                tls: None,
            },
            stage: "rcpt-to".into(),
            sender: "a@internet.example".into(),
            recipient: Some(format!("user{i}@contoso.com")),
            verdict: attrelay_policy::replies::recipient_ok(Some("contoso".into()), "incoming"),
            policy: "0".repeat(64),
        }
    }

    /// Twenty records written to a log bounded at four and a half of them,
    /// `pause` after each; the two files, each checked to be within the
    /// bound.
    fn rotated(pause: Option<std::time::Duration>) -> (tempfile::TempDir, [PathBuf; 2]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let line = serde_json::to_vec(&record(0)).unwrap().len() as u64 + 1;
        let bound = 4 * line + line / 2;
        let log = DecisionLog::open(&path, bound).unwrap();
        for i in 0..20 {
            log.append(record(i));
            if let Some(pause) = pause {
                std::thread::sleep(pause);
            }
        }
        log.close();
        let old = dir.path().join("decisions.jsonl.1");
        for file in [&path, &old] {
            let size = std::fs::metadata(file).unwrap().len();
            assert!(size <= bound, "{}: {size} bytes", file.display());
        }
        (dir, [path, old])
    }

    /// The writer itself, handed batches of lines as a burst gives them.
    #[test]
    fn a_batch_is_split_between_the_files_at_line_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut writer = Writer {
            path: path.clone(),
            out: OpenFile::open(&path, 10, DEFAULT_MODE).unwrap(),
            queued: Arc::default(),
        };
        // Four 4-byte lines in one batch: two fit under 10 bytes.
        writer.write(b"aaa\nbbb\nccc\nddd\n").unwrap();
        let old = dir.path().join("log.1");
        assert_eq!(std::fs::read(&old).unwrap(), b"aaa\nbbb\n");
        assert_eq!(std::fs::read(&path).unwrap(), b"ccc\nddd\n");
        // A line longer than the bound goes alone into a fresh file.
        writer.write(b"a line of twenty b\nx\n").unwrap();
        assert_eq!(std::fs::read(&old).unwrap(), b"a line of twenty b\n");
        assert_eq!(std::fs::read(&path).unwrap(), b"x\n");
        // A rotation that fails (log.1 a directory with something in it)
        // keeps appending: losing records is worse than a log past its bound.
        std::fs::remove_file(&old).unwrap();
        std::fs::create_dir(&old).unwrap();
        std::fs::write(old.join("in the way"), b"").unwrap();
        writer.write(b"yyyyyyyy\nzzzzzzzz\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x\nyyyyyyyy\nzzzzzzzz\n");
    }

    #[test]
    fn a_burst_written_as_one_batch_keeps_both_files_within_the_bound() {
        let (_dir, [path, _]) = rotated(None);
        assert_eq!(read(&path).unwrap().last().unwrap().session, "s19");
    }

    #[test]
    fn the_log_rotates_at_its_bound() {
        // One record per batch, as when traffic is not bursting.
        let (_dir, [path, old]) = rotated(Some(std::time::Duration::from_millis(5)));
        let (now, before) = (read(&path).unwrap(), read(&old).unwrap());
        assert!(!now.is_empty() && !before.is_empty());
        // The newest records, whole and in order; older generations are gone.
        assert_eq!(now.last().unwrap().session, "s19");
        assert_eq!(
            before.last().unwrap().session,
            format!("s{}", 19 - now.len())
        );
    }

    #[test]
    fn opening_the_path_again_reopens_it_in_the_same_writer() {
        // logrotate renames the file, then a reload opens the path again:
        // what was queued before goes to the renamed file, everything after
        // (through old handles and new) to the new one, by one writer.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let before = DecisionLog::open(&path, 0).unwrap();
        before.append(record(1));
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::rename(&path, dir.path().join("decisions.jsonl.old")).unwrap();
        let after = DecisionLog::open(&path, 0).unwrap();
        assert!(
            Arc::ptr_eq(&before.shared, &after.shared),
            "one writer per path"
        );
        before.append(record(2));
        after.append(record(3));
        drop(before);
        after.close();
        let old = read(&dir.path().join("decisions.jsonl.old")).unwrap();
        let new = read(&path).unwrap();
        assert_eq!(
            old.iter().map(|r| r.session.as_str()).collect::<Vec<_>>(),
            ["s1"]
        );
        assert_eq!(
            new.iter().map(|r| r.session.as_str()).collect::<Vec<_>>(),
            ["s2", "s3"]
        );
    }

    #[test]
    fn a_writer_behind_drops_records_without_waiting() {
        // A FIFO with a reader that never reads: the writer blocks once the
        // pipe is full, and appends go on at once, dropping past the queue.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let _reader = rustix::fs::open(
            &path,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let log = DecisionLog::open(&path, 0).unwrap();
        let started = std::time::Instant::now();
        let n = QUEUE_RECORDS + 1000;
        for i in 0..n {
            log.append(record(i));
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // The queue holds QUEUE_RECORDS; the pipe and the writer's batch in
        // hand take a few hundred more.
        assert!(log.dropped() >= 500, "dropped {}", log.dropped());
        // Not closed: its writer stays blocked on the pipe, as on a dead disk.
    }

    #[test]
    fn a_budget_grants_its_records_then_says_so_once() {
        let budget = DecisionBudget::default();
        let shared = budget.clone();
        for _ in 0..MAX_RECORDS_PER_SESSION {
            assert_eq!(budget.take(), Grant::Append);
        }
        assert_eq!(shared.take(), Grant::Exhausted, "clones share the count");
        for _ in 0..1000 {
            assert_eq!(budget.take(), Grant::Silent);
        }
        assert_eq!(DecisionBudget::default().take(), Grant::Append);
    }
}
