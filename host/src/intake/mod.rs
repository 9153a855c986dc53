//! The one way a message enters the queue. A message is one or more copies
//! — each an envelope and the header fields the relay writes in front of it
//! — and the body they share. [`Message::from_client`] composes a client's
//! message: one copy per attributed tenant, each with its trace and trust
//! fields ([`trace::compose`], the one place facts become header text),
//! sharing the client's message without its copies of those fields; a DSN
//! is composed by `delivery::dsn`. [`accept`] stores every copy durably, or
//! none, and only then hands them to the queue: a client's retry after a
//! failure is never a duplicate, and nothing is queued that is not on disk.

pub mod trace;

use std::collections::BTreeMap;
use std::net::IpAddr;

use attrelay_policy::model::{HeaderField, TlsFacts};
use tracing::info;

use crate::policy::verdict::vouches_for_sender;
use crate::spool::{Envelope, Recipient, RecipientState, Spool, SpoolError, now};

/// A recipient the policies accepted, with what its verdict asks the
/// relay to write.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The canonical mailbox (see [`crate::address`]): judged, spooled and
    /// written onward in exactly this form.
    pub address: String,
    pub tenant: Option<String>,
    /// The verdict's reason, which says whether a connector vouched for the
    /// sender (for the DSN policy).
    pub reason: Option<String>,
    /// The grace-period warning the relay writes for this recipient
    /// ([`attrelay_policy::replies::grace_warning`]).
    pub warning: Option<String>,
    /// Fields the policy asked for.
    pub headers: Vec<HeaderField>,
}

/// Who sent a message, as its trace fields say.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The name the client gave in HELO/EHLO.
    pub helo: &'a str,
    pub client_ip: IpAddr,
    /// The relay's own host name.
    pub hostname: &'a str,
    /// `SMTP`, `ESMTP` or `ESMTPS`.
    pub with: &'a str,
    pub tls: Option<&'a TlsFacts>,
}

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

impl Message {
    /// A client's message from `sender` to `recipients`: one copy per
    /// attributed tenant, each with its own queue id and trace fields, and
    /// `message` without the client's copies of the relay's fields.
    pub fn from_client(
        spool: &Spool,
        origin: &Origin<'_>,
        sender: &str,
        recipients: &[Accepted],
        message: &[u8],
    ) -> Message {
        let mut groups: BTreeMap<Option<&str>, Vec<&Accepted>> = BTreeMap::new();
        for r in recipients {
            groups.entry(r.tenant.as_deref()).or_default().push(r);
        }
        let date = rfc2822_now();
        let copies = groups
            .into_iter()
            .map(|(tenant, recipients)| {
                copy_for_tenant(spool, origin, sender, tenant, &recipients, &date)
            })
            .collect();
        Message {
            copies,
            body: trace::strip_trusted(message),
        }
    }
}

/// The copy of a client's message for one tenant's `recipients`.
fn copy_for_tenant(
    spool: &Spool,
    origin: &Origin<'_>,
    sender: &str,
    tenant: Option<&str>,
    recipients: &[&Accepted],
    date: &str,
) -> Copy {
    let id = spool.new_id();
    let mut policy_headers: Vec<HeaderField> = Vec::new();
    for h in recipients.iter().flat_map(|r| &r.headers) {
        if !policy_headers.contains(h) {
            policy_headers.push(h.clone());
        }
    }
    let warnings: Vec<String> = recipients
        .iter()
        .filter_map(|r| r.warning.clone())
        .collect();
    let head = trace::compose(&trace::TraceFacts {
        helo: origin.helo,
        client_ip: origin.client_ip,
        hostname: origin.hostname,
        with: origin.with,
        queue_id: &id,
        for_recipient: match recipients {
            [one] => Some(one.address.as_str()),
            _ => None,
        },
        tls: origin.tls,
        date,
        tenant,
        warnings: &warnings,
        policy_headers: &policy_headers,
    });
    let envelope = Envelope {
        id,
        sender: sender.to_string(),
        recipients: recipients
            .iter()
            .map(|r| Recipient {
                address: r.address.clone(),
                state: RecipientState::Pending,
            })
            .collect(),
        authenticated: recipients
            .iter()
            .all(|r| vouches_for_sender(r.reason.as_deref())),
        tenant: tenant.map(str::to_string),
        received_at: now(),
        attempts: 0,
        next_attempt: now(),
        last_error: None,
        is_dsn: false,
        client: origin.client_ip.to_string(),
        message_sha256: String::new(),
        message_len: 0,
    };
    Copy { envelope, head }
}

/// The current time in RFC 5322 form.
pub fn rfc2822_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default()
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
