//! A queued message's envelope: its recipients and their delivery state,
//! the header fields the relay writes in front of the body, and which body
//! it shares with the message's other envelopes.

use serde::{Deserialize, Serialize};

use super::ids::{BodyId, SpoolId};
use crate::clock::now;

/// The envelope format this relay writes. Files without a `version` read as
/// 0, the format of every relay before the field: an envelope may then
/// name no body (its `msg/ID.eml` holds the whole message) and record no
/// digest (the body is read through unchecked), and `client`,
/// `authenticated` and `head` may be missing. From 1 on, an envelope
/// always names its body and records its length and SHA-256.
pub const ENVELOPE_VERSION: u32 = 1;

/// Where one recipient stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum RecipientState {
    Pending,
    Delivered {
        reply: String,
    },
    Failed {
        reply: String,
        /// The sender was told (a DSN queued, or none due: the null
        /// sender, the backscatter limit). Set at the end of the attempt
        /// the recipient failed in, so that a permanent failure is reported
        /// at once, not when the last recipient is final. Missing in files
        /// of earlier relays, which told at the end: `false`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        reported: bool,
    },
}

impl RecipientState {
    /// A failure the sender has not been told of yet.
    pub fn unreported_failure(&self) -> bool {
        matches!(
            self,
            RecipientState::Failed {
                reported: false,
                ..
            }
        )
    }
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
    /// The format the file was written in ([`ENVELOPE_VERSION`]).
    #[serde(default)]
    pub version: u32,
    pub id: SpoolId,
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
    /// Missing (format 0) reads as `false`, the cautious side.
    #[serde(default)]
    pub authenticated: bool,
    /// The header fields the relay writes in front of the body for this
    /// envelope (its trace and trust fields, CRLF line endings). They live
    /// here, not in the body file, because they differ per tenant while the
    /// body is stored once.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub head: String,
    /// The sender was told that delivery is delayed (`[delivery]
    /// delay_warning_secs`): once per message.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay_warned: bool,
    /// Held by an operator since then (Unix seconds): not attempted, and
    /// not ageing towards `max_queue_age`, until released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_since: Option<i64>,
    /// Seconds spent held before the current hold, not counted in the
    /// message's age.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_secs: i64,
    /// The body file this envelope shares with the message's other
    /// envelopes (`msg/BODY.eml`), named at the commit.
    #[serde(default)]
    pub body: BodyId,
    /// SHA-256 and length of the body file, set when it is committed: a
    /// file torn by a crash or a bad disk is detected, never delivered.
    /// (Named `message_*` in the file, as the first relays wrote them.)
    #[serde(default, rename = "message_sha256")]
    pub body_sha256: String,
    #[serde(default, rename = "message_len")]
    pub body_len: u64,
}

impl Envelope {
    /// A new envelope in the current format, received now and due now, its
    /// body to be named at the commit.
    pub fn new(id: SpoolId, sender: String, recipients: Vec<Recipient>) -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            id,
            sender,
            recipients,
            tenant: None,
            received_at: now(),
            attempts: 0,
            next_attempt: now(),
            last_error: None,
            is_dsn: false,
            client: String::new(),
            authenticated: false,
            head: String::new(),
            delay_warned: false,
            held_since: None,
            held_secs: 0,
            body: BodyId::default(),
            body_sha256: String::new(),
            body_len: 0,
        }
    }

    /// Reads an envelope file, in any format this relay knows, as the
    /// current one: a format-0 envelope that names no body gets its own.
    /// A newer format, a current one without its body's record, or names
    /// the spool does not make (`../x`, `/etc/x`: the body's name becomes a
    /// path) are errors (the caller sets the file aside).
    pub(super) fn from_json(bytes: &[u8]) -> Result<Envelope, String> {
        let mut e: Envelope = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if !e.id.is_sound() || !(e.body.as_str().is_empty() || e.body.is_sound()) {
            return Err("an id or body name that is not one the spool makes".into());
        }
        match e.version {
            0 => {
                if e.body.as_str().is_empty() {
                    e.body = e.id.own_body();
                }
            }
            ENVELOPE_VERSION => {
                if e.body.as_str().is_empty() || e.body_sha256.is_empty() {
                    return Err("format 1 envelope without its body's name and digest".into());
                }
            }
            v => {
                return Err(format!(
                    "envelope format {v}, newer than this relay's {ENVELOPE_VERSION}"
                ));
            }
        }
        Ok(e)
    }

    /// The body's length and SHA-256 as recorded at the commit; `None` for
    /// a format-0 envelope written before digests.
    pub fn body_record(&self) -> Option<(u64, &str)> {
        (!self.body_sha256.is_empty()).then_some((self.body_len, self.body_sha256.as_str()))
    }

    pub fn pending(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients
            .iter()
            .filter(|r| r.state == RecipientState::Pending)
    }

    pub fn is_held(&self) -> bool {
        self.held_since.is_some()
    }

    /// Holds the message from `at` on (no change if it is held already).
    pub fn hold(&mut self, at: i64) {
        self.held_since.get_or_insert(at);
    }

    /// Releases a held message at `at`, due then; the time it was held
    /// does not count in its age.
    pub fn release(&mut self, at: i64) {
        if let Some(since) = self.held_since.take() {
            self.held_secs = self.held_secs.saturating_add((at - since).max(0));
            self.next_attempt = at;
        }
    }

    /// Seconds the message has waited to be delivered at `at`: its time in
    /// the queue less the time an operator held it. What `max_queue_age`
    /// and `delay_warning_secs` are measured against.
    pub fn age(&self, at: i64) -> i64 {
        let held_now = self.held_since.map_or(0, |since| (at - since).max(0));
        at - self.received_at - self.held_secs - held_now
    }

    /// Bytes of the message as it will be sent: the head and the body.
    pub fn size(&self) -> u64 {
        self.head.len() as u64 + self.body_len
    }
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// One queued message as `GET /queue` and `attrelay queue list` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueEntry {
    pub id: SpoolId,
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
    /// Bytes of the message as it will be sent.
    pub size: u64,
    /// Held by an operator: not attempted until released.
    #[serde(default)]
    pub held: bool,
}

impl From<Envelope> for QueueEntry {
    fn from(e: Envelope) -> QueueEntry {
        QueueEntry {
            pending: e.pending().map(|r| r.address.clone()).collect(),
            size: e.size(),
            held: e.is_held(),
            id: e.id,
            sender: e.sender,
            tenant: e.tenant,
            received_at: e.received_at,
            attempts: e.attempts,
            next_attempt: e.next_attempt,
            last_error: e.last_error,
            is_dsn: e.is_dsn,
        }
    }
}
