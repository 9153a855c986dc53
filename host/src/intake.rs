//! The one way a message enters the queue. A message is one or more copies
//! — each an envelope and the header fields the relay writes in front of it
//! (composed by `smtp::trace` for a client's message, one copy per
//! attributed tenant; by `delivery::dsn` for a bounce) — and the body they
//! share. [`accept`] stores every copy durably, or none, and only then
//! hands them to the queue: a client's retry after a failure is never a
//! duplicate, and nothing is queued that is not on disk.

use tracing::info;

use crate::spool::{Envelope, Spool, SpoolError};

/// One copy of a message: its envelope and the relay's header fields.
pub struct Copy {
    pub envelope: Envelope,
    /// Header lines (each ending in CRLF) written before the body.
    pub head: String,
}

/// A message ready to be accepted.
pub struct Message {
    pub copies: Vec<Copy>,
    /// What every copy carries after its head: the client's message without
    /// its copies of the relay's fields, or a DSN.
    pub body: Vec<u8>,
}

/// Stores every copy (one in memory at a time, however many), or none when
/// one fails (those already stored are removed), then hands each to
/// `enqueue`. Returns the queue ids. Blocking: call it off the async
/// runtime's threads.
pub fn accept(
    spool: &Spool,
    message: Message,
    mut enqueue: impl FnMut(Envelope),
) -> Result<Vec<String>, SpoolError> {
    let size = message.body.len();
    let mut stored: Vec<Envelope> = Vec::with_capacity(message.copies.len());
    for Copy { mut envelope, head } in message.copies {
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&message.body);
        if let Err(e) = spool.store(&mut envelope, &bytes) {
            for done in &stored {
                let _ = spool.remove(&done.id);
            }
            return Err(e);
        }
        stored.push(envelope);
    }
    let ids = stored.iter().map(|e| e.id.clone()).collect();
    for e in stored {
        info!(
            target: "attrelay::queue",
            queue_id = %e.id,
            client = if e.client.is_empty() { "-" } else { e.client.as_str() },
            sender = ?e.sender,
            recipients = e.recipients.len(),
            tenant = e.tenant.as_deref().unwrap_or("-"),
            dsn = e.is_dsn,
            size,
            "queued"
        );
        enqueue(e);
    }
    Ok(ids)
}
