//! An operator's look at a spool, changing nothing: safe beside the relay
//! that owns it (no lock, no clean-up, no file created), and an error, not
//! an empty queue, where there is no spool.

use std::fs;
use std::io::Read as _;
use std::path::Path;

use super::envelope::Envelope;
use super::error::{SpoolError, io};
use super::ids::SpoolId;
use super::layout::{body_path, queue_dir};
use super::recover::{queued_id, read_envelope_at};

/// The most of a message's header section `queue show` reads: the
/// relay's own fields and the client's, enough to recognise a message.
pub const MAX_SHOWN_HEADER: usize = 64 * 1024;

/// What [`list`] found in `queue/`.
#[derive(Debug, Default)]
pub struct Listing {
    /// The readable envelopes, oldest first.
    pub envelopes: Vec<Envelope>,
    /// Envelope files that could not be read (recovery sets them aside).
    pub unreadable: usize,
}

/// One queued message as `queue show` shows it.
#[derive(Debug)]
pub struct Shown {
    pub envelope: Envelope,
    /// The header section as it will be sent (the relay's fields, then the
    /// client's), at most [`MAX_SHOWN_HEADER`] bytes, not decoded.
    pub header: Vec<u8>,
}

/// `root`'s `queue/`, or [`SpoolError::Missing`].
fn queue_of(root: &Path) -> Result<std::path::PathBuf, SpoolError> {
    let queue = queue_dir(root);
    if queue.is_dir() {
        Ok(queue)
    } else {
        Err(SpoolError::Missing {
            path: root.to_path_buf(),
        })
    }
}

/// The queued envelopes of the spool at `root`, oldest first. Reads each
/// envelope: not for periodic scraping of a large queue.
pub fn list(root: &Path) -> Result<Listing, SpoolError> {
    let queue = queue_of(root)?;
    let mut listing = Listing::default();
    for id in fs::read_dir(&queue)
        .map_err(io(&queue))?
        .flatten()
        .filter_map(|entry| queued_id(&entry.path()))
    {
        match read_envelope_at(root, &id) {
            Ok(e) => listing.envelopes.push(e),
            Err(_) => listing.unreadable += 1,
        }
    }
    listing
        .envelopes
        .sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
    Ok(listing)
}

/// Message `id` of the spool at `root`: its envelope and the start of its
/// header section. `id` is checked before it becomes a path.
pub fn show(root: &Path, id: &SpoolId) -> Result<Shown, SpoolError> {
    queue_of(root)?;
    if !id.is_sound() {
        return Err(SpoolError::NotQueued { id: id.to_string() });
    }
    let envelope = match read_envelope_at(root, id) {
        Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(SpoolError::NotQueued { id: id.to_string() });
        }
        other => other?,
    };
    let mut header = envelope.head.as_bytes().to_vec();
    header.truncate(MAX_SHOWN_HEADER);
    let path = body_path(root, &envelope.body);
    let mut body = Vec::new();
    fs::File::open(&path)
        .map_err(io(&path))?
        .take(match envelope.body_record() {
            Some((len, _)) => len.min((MAX_SHOWN_HEADER - header.len()) as u64),
            None => (MAX_SHOWN_HEADER - header.len()) as u64,
        })
        .read_to_end(&mut body)
        .map_err(io(&path))?;
    let end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(body.len(), |i| i + 2);
    header.extend_from_slice(&body[..end]);
    Ok(Shown { envelope, header })
}
