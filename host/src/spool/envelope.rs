//! A queued message's envelope: its recipients and their delivery state,
//! the header fields the relay writes in front of the body, and which body
//! it shares with the message's other envelopes.

use serde::{Deserialize, Serialize};

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
    /// The header fields the relay writes in front of the body for this
    /// envelope (its trace and trust fields, CRLF line endings). They live
    /// here, not in the body file, because they differ per tenant while the
    /// body is stored once.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub head: String,
    /// The body file this envelope shares with the message's other
    /// envelopes (`msg/BODY.eml`). Envelopes spooled before bodies were
    /// shared have none: their `msg/ID.eml` holds the whole message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// SHA-256 and length of the body file, set when it is committed: a
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

    /// The name of the body file (without `.eml`).
    pub fn body_id(&self) -> &str {
        self.body.as_deref().unwrap_or(&self.id)
    }

    /// Bytes of the message as it will be sent: the head and the body.
    pub fn size(&self) -> u64 {
        self.head.len() as u64 + self.message_len
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
    /// Bytes of the message as it will be sent.
    pub size: u64,
}

impl From<Envelope> for QueueEntry {
    fn from(e: Envelope) -> QueueEntry {
        QueueEntry {
            pending: e.pending().map(|r| r.address.clone()).collect(),
            size: e.size(),
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
