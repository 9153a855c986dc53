//! The one way a message enters the queue. A message is one or more
//! envelopes — each with the header fields the relay writes in front of the
//! body — and the body they share, stored once. `Incoming` receives a
//! client's message into its body as it arrives; [`Message::from_client`]
//! composes its envelopes: one per attributed tenant, each with its trace
//! and trust fields ([`trace::compose`], the one place facts become header
//! text). A DSN is composed by `delivery::dsn`. [`accept`] commits the body
//! and every envelope durably, or none, and only then hands them to the
//! queue: a client's retry after a failure is never a duplicate, and
//! nothing is queued that is not on disk.

mod incoming;
pub mod trace;

pub(crate) use incoming::{DEFAULT_MAX_HEADER_SIZE, HeaderTooBig, Incoming};

use std::collections::BTreeMap;
use std::net::IpAddr;

use attrelay_policy::model::{HeaderField, TlsFacts};
use tracing::info;

use crate::spool::{Body, Envelope, Recipient, RecipientState, Spool, SpoolError, SpoolId};
use crate::verdict::vouches_for_sender;

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

/// A message ready to be accepted.
pub struct Message {
    /// One per copy, each with its head ([`Envelope::head`]).
    pub envelopes: Vec<Envelope>,
    /// The message's Message-ID, for the `queued` log line.
    pub message_id: Option<String>,
    /// What every copy carries after its head: the client's message without
    /// its copies of the relay's fields, or a DSN.
    pub body: Body,
}

impl Message {
    /// A client's message from `sender` to `recipients`: one envelope per
    /// attributed tenant, each with its own queue id and trace fields,
    /// sharing `body` (received by `Incoming`).
    pub fn from_client(
        spool: &Spool,
        origin: &Origin<'_>,
        sender: &str,
        recipients: &[Accepted],
        body: Body,
    ) -> Message {
        let mut groups: BTreeMap<Option<&str>, Vec<&Accepted>> = BTreeMap::new();
        for r in recipients {
            groups.entry(r.tenant.as_deref()).or_default().push(r);
        }
        let date = rfc2822_now();
        let envelopes = groups
            .into_iter()
            .map(|(tenant, recipients)| {
                envelope_for_tenant(spool, origin, sender, tenant, &recipients, &date)
            })
            .collect();
        Message {
            envelopes,
            message_id: None,
            body,
        }
    }
}

/// The envelope of a client's message for one tenant's `recipients`.
fn envelope_for_tenant(
    spool: &Spool,
    origin: &Origin<'_>,
    sender: &str,
    tenant: Option<&str>,
    recipients: &[&Accepted],
    date: &str,
) -> Envelope {
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
        queue_id: id.as_str(),
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
    let pending = recipients
        .iter()
        .map(|r| Recipient {
            address: r.address.clone(),
            state: RecipientState::Pending,
        })
        .collect();
    Envelope {
        authenticated: recipients
            .iter()
            .all(|r| vouches_for_sender(r.reason.as_deref())),
        tenant: tenant.map(str::to_string),
        client: origin.client_ip.to_string(),
        head,
        ..Envelope::new(id, sender.to_string(), pending)
    }
}

/// The current time in RFC 5322 form.
pub fn rfc2822_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default()
}

/// Commits the body and every envelope durably, or none
/// ([`Spool::commit`]), then hands each envelope to `enqueue`. Returns the
/// queue ids.
pub async fn accept(
    spool: &Spool,
    message: Message,
    mut enqueue: impl FnMut(Envelope),
) -> Result<Vec<SpoolId>, SpoolError> {
    let size = message.body.len();
    let message_id = message.message_id;
    let stored = spool.commit(message.body, message.envelopes).await?;
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
            message_id = message_id.as_deref().unwrap_or("-"),
            "queued"
        );
        enqueue(e);
    }
    Ok(ids)
}
