//! A spooled message opened for delivery: the relay's header fields, then
//! the body, read in chunks of [`BUFFER`] bytes.
//!
//! Delivery used to read the whole message into memory for each attempt, so
//! its memory was the delivery concurrency times the largest message. Here
//! only a body that fits one chunk is held (every body the free-file pool
//! could recycle is one); a larger one is read from its open file as it is
//! sent, so an attempt holds a chunk whatever the message's size.
//!
//! The body is checked against its envelope's length and SHA-256 when it is
//! opened (a damaged body is never sent: the spool sets it aside). A body
//! read from its file is hashed again as it is sent, and a [`Reader`]
//! reports a body that changed in between as an error before it hands out
//! the end of the message, so that the sender never ends the transaction
//! with bytes that were not the ones checked.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use sha2::Digest;

use super::body::{BUFFER, hex};
use super::envelope::Envelope;

// A body the free-file pool may recycle (overwrite in place once its last
// envelope is gone) must be held, never read from its file as it is sent.
const _: () = assert!(super::pool::MAX_SIZE <= BUFFER as u64);

/// A piece of a message: shared with the [`Stored`] when it holds the
/// bytes (every share of an MX delivery reads the same), else read for
/// this reader.
#[derive(Debug)]
pub enum Chunk {
    Shared(Arc<[u8]>),
    Read(Vec<u8>),
}

impl std::ops::Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Chunk::Shared(b) => b,
            Chunk::Read(b) => b,
        }
    }
}

/// A message ready to be sent, checked against its envelope.
#[derive(Debug, Clone)]
pub struct Stored {
    head: Arc<[u8]>,
    body: Source,
    body_len: u64,
    /// The body's digest when it was checked (the envelope's own, or, for
    /// an envelope from before digests, the one read then): what it is
    /// checked against again as it is sent.
    sha256: Arc<str>,
    eight_bit: bool,
}

#[derive(Debug, Clone)]
enum Source {
    /// A body of at most one chunk, read whole when it was checked.
    Held(Arc<[u8]>),
    /// A larger body, read from its file (by offset: readers share it).
    File(Arc<File>),
}

/// Why a body could not be opened for delivery.
#[derive(Debug)]
pub(super) enum OpenError {
    /// No file: the body is gone.
    Missing,
    /// The file is not the body the envelope recorded.
    Mismatch {
        len: u64,
        sha256: String,
    },
    /// The name is a symbolic link, a FIFO, a device: nothing the spool
    /// wrote, so nothing to read (a FIFO would block, `/dev/zero` never end).
    NotAFile,
    Io(io::Error),
}

impl Stored {
    /// Opens the body at `path` for `envelope` and checks it (reads it once
    /// through; blocking). With a recorded length, a longer file is found
    /// one byte past it, never read to its end: a body opened on a runtime
    /// thread (one recorded as a single chunk) stays a small read whatever
    /// the file became.
    pub(super) fn open(path: &Path, envelope: &Envelope) -> Result<Stored, OpenError> {
        let file = open_regular(path)?;
        let recorded = envelope.body_record();
        let limit = recorded.map_or(u64::MAX, |(len, _)| len.saturating_add(1));
        let mut reader = (&file).take(limit);
        let mut hasher = sha2::Sha256::new();
        let mut held = Vec::new();
        let mut buf = vec![0; BUFFER];
        let (mut len, mut eight_bit) = (0u64, false);
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(OpenError::Io(e)),
            };
            hasher.update(&buf[..n]);
            eight_bit = eight_bit || !buf[..n].is_ascii();
            if len + n as u64 <= BUFFER as u64 {
                held.extend_from_slice(&buf[..n]);
            }
            len += n as u64;
        }
        let sha256 = hex(&hasher.finalize());
        if recorded.is_some_and(|r| r != (len, sha256.as_str())) {
            return Err(OpenError::Mismatch { len, sha256 });
        }
        let body = if len <= BUFFER as u64 {
            Source::Held(held.into())
        } else {
            Source::File(Arc::new(file))
        };
        Ok(Stored {
            head: envelope.head.as_bytes().into(),
            body,
            body_len: len,
            sha256: sha256.into(),
            eight_bit,
        })
    }

    /// A message held in memory, as if checked: for tests.
    #[cfg(test)]
    pub fn from_bytes(bytes: &[u8]) -> Stored {
        Stored {
            head: Arc::from(&[][..]),
            body: Source::Held(bytes.into()),
            body_len: bytes.len() as u64,
            sha256: "".into(),
            eight_bit: !bytes.is_ascii(),
        }
    }

    /// The whole message's length in bytes.
    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.body_len
    }

    /// Whether the body holds bytes past US-ASCII (`BODY=8BITMIME`): seen
    /// when it was read to be checked, not taken from the client's word.
    pub fn eight_bit(&self) -> bool {
        self.eight_bit
    }

    /// Whether the message has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the message from its start.
    pub fn reader(&self) -> Reader<'_> {
        Reader {
            stored: self,
            head_sent: false,
            offset: 0,
            hasher: sha2::Sha256::new(),
            failed: false,
        }
    }

    /// The first `max` bytes of the message at most (a DSN's copy of the
    /// header section), or all of it.
    pub async fn prefix(&self, max: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut reader = self.reader();
        while out.len() < max {
            match reader.next().await? {
                Some(chunk) => {
                    let take = chunk.len().min(max - out.len());
                    out.extend_from_slice(&chunk[..take]);
                }
                None => break,
            }
        }
        Ok(out)
    }

    /// The whole message in memory: for the directory target and tests,
    /// never for delivery over SMTP.
    pub async fn to_vec(&self) -> io::Result<Vec<u8>> {
        self.prefix(usize::try_from(self.len()).unwrap_or(usize::MAX))
            .await
    }

    /// [`Self::to_vec`] on the calling thread.
    #[cfg(test)]
    pub(super) fn to_vec_blocking(&self) -> io::Result<Vec<u8>> {
        let mut out = self.head.to_vec();
        match &self.body {
            Source::Held(bytes) => out.extend_from_slice(bytes),
            Source::File(file) => {
                let mut body = vec![0; self.body_len as usize];
                file.read_exact_at(&mut body, 0)?;
                out.extend_from_slice(&body);
            }
        }
        Ok(out)
    }
}

/// Reads a [`Stored`] message chunk by chunk, checking as it goes.
pub struct Reader<'a> {
    stored: &'a Stored,
    head_sent: bool,
    /// The next offset in the body.
    offset: u64,
    hasher: sha2::Sha256,
    /// The body did not read back as checked: every later call fails too,
    /// never reports a clean end.
    failed: bool,
}

impl Reader<'_> {
    /// The next chunk of the message, or `None` at its end. A body that no
    /// longer matches what was checked when it was opened is an error
    /// (`InvalidData`), returned instead of its last chunk.
    pub async fn next(&mut self) -> io::Result<Option<Chunk>> {
        if self.failed {
            return Err(changed());
        }
        if !self.head_sent {
            self.head_sent = true;
            if !self.stored.head.is_empty() {
                return Ok(Some(Chunk::Shared(self.stored.head.clone())));
            }
        }
        let remaining = self.stored.body_len - self.offset;
        if remaining == 0 {
            return Ok(None);
        }
        let chunk = match &self.stored.body {
            Source::Held(bytes) => Chunk::Shared(bytes.clone()),
            Source::File(file) => {
                let want = remaining.min(BUFFER as u64) as usize;
                let read = read_at(file.clone(), self.offset, want).await;
                let chunk = read.inspect_err(|_| self.failed = true)?;
                self.hasher.update(&chunk);
                Chunk::Read(chunk)
            }
        };
        if self.offset + chunk.len() as u64 == self.stored.body_len && !self.matches() {
            self.failed = true;
            return Err(changed());
        }
        self.offset += chunk.len() as u64;
        Ok(Some(chunk))
    }

    /// At the body's end: the bytes read are the bytes checked.
    fn matches(&mut self) -> bool {
        match self.stored.body {
            Source::Held(_) => true,
            Source::File(_) => {
                let sha256 = hex(&std::mem::take(&mut self.hasher).finalize());
                sha256 == *self.stored.sha256
            }
        }
    }
}

fn changed() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the spooled body changed while it was being sent",
    )
}

/// `path` opened for reading if it is a regular file: a symbolic link is
/// not followed, and a FIFO is not waited for.
fn open_regular(path: &Path) -> Result<File, OpenError> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(OpenError::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(OpenError::NotAFile),
        Err(e) => return Err(OpenError::Io(e)),
    };
    match file.metadata() {
        Ok(m) if m.file_type().is_file() => Ok(file),
        Ok(_) => Err(OpenError::NotAFile),
        Err(e) => Err(OpenError::Io(e)),
    }
}

/// Exactly `len` bytes at `offset`, on the blocking pool; a file that ends
/// sooner (truncated since it was checked) is an error.
async fn read_at(file: Arc<File>, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn chunks(stored: &Stored) -> io::Result<Vec<Vec<u8>>> {
        let mut reader = stored.reader();
        let mut out = Vec::new();
        while let Some(c) = reader.next().await? {
            out.push(c.to_vec());
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_message_held_in_memory_reads_back_whole() {
        let stored = Stored::from_bytes(b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(stored.len(), 20);
        assert_eq!(
            chunks(&stored).await.unwrap(),
            vec![b"Subject: x\r\n\r\nbody\r\n".to_vec()]
        );
        assert_eq!(stored.prefix(7).await.unwrap(), b"Subject");
    }
}
