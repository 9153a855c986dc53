//! Onward delivery: the queue that takes spooled messages to the next hop,
//! retries temporary failures with exponential backoff, and bounces
//! permanent failures (and messages older than the maximum queue age) with a
//! delivery status notification.
//!
//! The spool stays the source of truth: an envelope is rewritten after every
//! attempt, and removed only once every recipient is delivered or bounced, so
//! a crash at any point re-delivers at worst, never loses.

mod data;
pub mod dsn;
pub mod mx;
mod outcome;
pub mod pool;
pub mod smtp;
pub mod transaction;
pub mod wire;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::spool::{Envelope, Recipient, RecipientState, Spool, now};

/// Where messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Into a directory, one `.eml` file (and its `.json` envelope) per message.
    Directory(PathBuf),
    /// To one smarthost.
    Smarthost { host: String, port: u16 },
    /// To each recipient domain's MX hosts.
    Mx,
}

/// The whole of one delivery attempt, by default: long enough for a large
/// message over a slow link, short enough that stalled next hops give their
/// delivery slots back.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(600);
/// The first retry's delay (`[delivery] retry_initial_secs`); it doubles
/// up to [`DEFAULT_RETRY_MAX`].
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(60);
/// The longest delay between retries (`retry_max_secs`).
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(3600);
/// How long a message may wait before it bounces (`max_queue_age_secs`):
/// five days, as Postfix's `maximal_queue_lifetime`.
pub const DEFAULT_MAX_QUEUE_AGE: Duration = Duration::from_secs(5 * 86_400);
/// Deliveries at once (`concurrency`).
pub const DEFAULT_CONCURRENCY: usize = 8;
/// The deadline on each step of a delivery (`timeout_secs`).
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The port MX hosts are reached on (`mx_port`).
pub const DEFAULT_MX_PORT: u16 = 25;
/// MX addresses tried per domain and attempt (Postfix: 5).
pub const DEFAULT_MX_ADDRESS_LIMIT: usize = 5;
/// MX hosts per domain and attempt that may stall (Postfix: 2).
pub const DEFAULT_MX_SESSION_LIMIT: usize = 2;

/// Whether mail to a next hop must be encrypted (`[delivery] tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// STARTTLS when offered, certificate not verified; clear text when not
    /// offered (the default without `tls_ca`).
    #[default]
    Opportunistic,
    /// STARTTLS always, certificate not verified: a hop that does not offer
    /// it (or whose offer an attacker stripped) gets nothing.
    Required,
    /// STARTTLS always, certificate verified against `tls_ca` (the default
    /// with `tls_ca`).
    Verify,
}

impl TlsPolicy {
    pub fn requires_tls(self) -> bool {
        self != TlsPolicy::Opportunistic
    }
}

/// `[delivery]`, resolved.
#[derive(Clone)]
pub struct DeliveryConfig {
    pub target: Target,
    pub hostname: String,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_queue_age: Duration,
    pub concurrency: usize,
    /// Timeout of each SMTP step (connect, greeting, reply, TLS handshake, data).
    pub timeout: Duration,
    /// The whole of one delivery attempt, every next hop of every domain
    /// included: then the recipients still pending are deferred.
    pub attempt_timeout: Duration,
    /// MX delivery: addresses tried per domain and attempt (Postfix's
    /// `smtp_mx_address_limit`).
    pub mx_address_limit: usize,
    /// MX delivery: next hops per domain and attempt that accepted a
    /// connection and then failed (Postfix's `smtp_mx_session_limit`).
    pub mx_session_limit: usize,
    pub tls_policy: TlsPolicy,
    /// At shutdown, how long attempts in flight may go on; the rest stay in
    /// the spool for the next start.
    pub shutdown_grace: Duration,
    pub tls: Arc<rustls::ClientConfig>,
    /// Port used for MX hosts (25; tests use another).
    pub mx_port: u16,
    /// The DNS resolver for MX delivery, shared by all attempts.
    pub resolver: Option<Arc<hickory_resolver::TokioResolver>>,
    /// Connections to next hops (the budget, and the idle ones kept for
    /// reuse), shared by all attempts.
    pub connections: Arc<smtp::Connections>,
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// DSNs per sender domain for unauthenticated senders, shared by all
    /// attempts (`[delivery] dsn_rate_per_domain_per_hour`).
    pub dsn_limiter: Arc<dsn::DsnLimiter>,
}

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(String),
    Temporary(String),
    Permanent(String),
}

/// Hands newly spooled messages to the queue.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<Envelope>,
    contents: Arc<QueueContents>,
    flush: Arc<tokio::sync::Notify>,
}

impl QueueHandle {
    /// Hands a spooled message to the queue; it counts in [`Self::contents`]
    /// from now until it leaves the spool.
    pub fn enqueue(&self, envelope: Envelope) {
        self.contents.insert(&envelope);
        // After shutdown the message stays in the spool for the next start.
        let _ = self.tx.send(envelope);
    }

    /// Messages in the queue and when the oldest was received — kept by the
    /// queue itself, so that a scrape of `/metrics` costs nothing even when
    /// the next hop is down and the spool holds a hundred thousand messages.
    pub fn contents(&self) -> (usize, Option<i64>) {
        self.contents.summary()
    }

    /// Makes every waiting message due now (an operator's "flush", after the
    /// next hop came back): backoff is skipped once, attempts still count.
    /// Returns how many messages the queue holds.
    pub fn flush(&self) -> usize {
        self.flush.notify_one();
        self.contents().0
    }
}

/// The queue's entries (id → reception time): every message the queue holds,
/// waiting or being delivered, from when it is handed over until it leaves
/// the spool.
#[derive(Default)]
struct QueueContents {
    entries: std::sync::Mutex<HashMap<String, i64>>,
}

impl QueueContents {
    fn insert(&self, e: &Envelope) {
        if let Ok(mut m) = self.entries.lock() {
            m.insert(e.id.clone(), e.received_at);
        }
    }

    fn remove(&self, id: &str) {
        if let Ok(mut m) = self.entries.lock() {
            m.remove(id);
        }
    }

    fn summary(&self) -> (usize, Option<i64>) {
        match self.entries.lock() {
            Ok(m) => (m.len(), m.values().min().copied()),
            Err(_) => (0, None),
        }
    }
}

/// What every recipient of an attempt that ran out of time gets.
pub fn attempt_timed_out(cfg: &DeliveryConfig) -> Outcome {
    Outcome::Temporary(format!(
        "451 4.4.7 delivery attempt not finished within {} s",
        cfg.attempt_timeout.as_secs()
    ))
}

/// The backoff after `attempts` failed attempts: initial × 2^(attempts-1), capped.
pub fn backoff(cfg: &DeliveryConfig, attempts: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempts.saturating_sub(1).min(20))
        .unwrap_or(u32::MAX);
    cfg.retry_initial.saturating_mul(factor).min(cfg.retry_max)
}

/// Starts the queue with the messages recovered from the spool (due at once).
pub fn start(
    spool: Arc<Spool>,
    cfg: DeliveryConfig,
    recovered: Vec<Envelope>,
    shutdown: CancellationToken,
) -> (QueueHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let contents = Arc::new(QueueContents::default());
    let flush = Arc::new(tokio::sync::Notify::new());
    let handle = QueueHandle {
        tx,
        contents: contents.clone(),
        flush: flush.clone(),
    };
    for mut e in recovered {
        e.next_attempt = now();
        handle.enqueue(e);
    }
    tokio::spawn(cfg.connections.clone().sweep(shutdown.clone()));
    let join = tokio::spawn(run(
        spool,
        cfg,
        rx,
        handle.clone(),
        contents,
        flush,
        shutdown,
    ));
    (handle, join)
}

async fn run(
    spool: Arc<Spool>,
    cfg: DeliveryConfig,
    mut rx: mpsc::UnboundedReceiver<Envelope>,
    requeue: QueueHandle,
    contents: Arc<QueueContents>,
    flush: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    let mut due: BinaryHeap<Reverse<(i64, String)>> = BinaryHeap::new();
    let mut waiting: HashMap<String, Envelope> = HashMap::new();
    let mut running: JoinSet<()> = JoinSet::new();
    let slots = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    loop {
        // Start everything due, as far as the concurrency allows.
        while let Some(Reverse((at, _))) = due.peek() {
            if *at > now() || slots.available_permits() == 0 {
                break;
            }
            let Some(Reverse((_, id))) = due.pop() else {
                break;
            };
            let Some(envelope) = waiting.remove(&id) else {
                continue;
            };
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            let (spool, cfg, requeue, contents) = (
                spool.clone(),
                cfg.clone(),
                requeue.clone(),
                contents.clone(),
            );
            running.spawn(async move {
                let id = envelope.id.clone();
                let next = attempt(&spool, &cfg, envelope).await;
                // Delivered, bounced or set aside as corrupt: it left the spool.
                if !next.iter().any(|n| n.id == id) {
                    contents.remove(&id);
                }
                for n in next {
                    requeue.enqueue(n);
                }
                drop(permit);
            });
        }
        let sleep_for = due
            .peek()
            .map(|Reverse((at, _))| Duration::from_secs((*at - now()).max(0) as u64))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            Some(e) = rx.recv() => {
                due.push(Reverse((e.next_attempt, e.id.clone())));
                waiting.insert(e.id.clone(), e);
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = flush.notified() => {
                let at = now();
                info!(messages = waiting.len(), "queue flush: every waiting message is due now");
                due = waiting.keys().map(|id| Reverse((at, id.clone()))).collect();
                for e in waiting.values_mut() {
                    e.next_attempt = at;
                }
            }
            _ = tokio::time::sleep(sleep_for.max(Duration::from_millis(50))) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    // In-flight attempts may finish within the shutdown grace; then they
    // are dropped, and their messages stay in the spool for the next start
    // (an attempt cut short after a next hop accepted is delivered again:
    // at-least-once).
    let drained = tokio::time::timeout(cfg.shutdown_grace, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            attempts = running.len(),
            "shutdown grace period over: delivery attempts in flight stopped; their messages stay queued"
        );
        running.abort_all();
    }
}

/// One delivery attempt. Returns the envelopes to queue again: this one if
/// recipients remain, and any DSN it generated.
pub async fn attempt(spool: &Spool, cfg: &DeliveryConfig, mut envelope: Envelope) -> Vec<Envelope> {
    let message = match spool.open_checked(&envelope).await {
        Ok(m) => m,
        Err(e @ crate::spool::SpoolError::Corrupt { .. }) => {
            tracing::error!(target: "attrelay::delivery", queue_id = %envelope.id, error = %e, "spooled message is damaged");
            if let Some(m) = &cfg.metrics {
                m.spool_set_aside.inc();
            }
            return Vec::new();
        }
        Err(e) => {
            warn!(target: "attrelay::delivery", queue_id = %envelope.id, error = %e, "cannot read spooled message; will retry");
            envelope.next_attempt = now() + cfg.retry_max.as_secs() as i64;
            return vec![envelope];
        }
    };
    envelope.attempts += 1;
    let pending: Vec<String> = envelope.pending().map(|r| r.address.clone()).collect();
    // The whole attempt has a deadline: a next hop that accepts and then
    // stalls at every step cannot hold a delivery slot for long.
    let deadline = tokio::time::Instant::now() + cfg.attempt_timeout;
    let results: Vec<(String, Outcome, String)> = match &cfg.target {
        Target::Directory(dir) => directory_deliver(dir, &envelope, &message)
            .await
            .into_iter()
            .map(|(r, o)| (r, o, format!("dir:{}", dir.display())))
            .collect(),
        Target::Smarthost { host, port } => {
            let delivery = smtp::deliver(cfg, host, *port, &envelope.sender, &pending, &message);
            let outcomes = tokio::time::timeout_at(deadline, delivery)
                .await
                .unwrap_or_else(|_| outcome::all(&pending, attempt_timed_out(cfg)));
            outcomes
                .into_iter()
                .map(|(r, o)| (r, o, format!("{host}:{port}")))
                .collect()
        }
        Target::Mx => mx::deliver(cfg, &envelope.sender, &pending, &message, deadline).await,
    };
    for (rcpt, outcome, hop) in &results {
        let (result, reply) = match outcome {
            Outcome::Delivered(r) => ("delivered", r),
            Outcome::Temporary(r) => ("deferred", r),
            Outcome::Permanent(r) => ("failed", r),
        };
        info!(
            target: "attrelay::delivery",
            queue_id = %envelope.id,
            attempt = envelope.attempts,
            recipient = ?rcpt,
            next_hop = %hop,
            tenant = envelope.tenant.as_deref().unwrap_or("-"),
            result,
            reply = ?reply,
            "delivery attempt"
        );
        if let Some(m) = &cfg.metrics {
            crate::metrics::Metrics::outcome(&m.deliveries, result);
        }
        if let Some(r) = envelope
            .recipients
            .iter_mut()
            .find(|r| &r.address == rcpt && r.state == RecipientState::Pending)
        {
            match outcome {
                Outcome::Delivered(reply) => {
                    r.state = RecipientState::Delivered {
                        reply: reply.clone(),
                    }
                }
                Outcome::Permanent(reply) => {
                    r.state = RecipientState::Failed {
                        reply: reply.clone(),
                    }
                }
                Outcome::Temporary(reply) => envelope.last_error = Some(reply.clone()),
            }
        }
    }
    let expired = now() - envelope.received_at > cfg.max_queue_age.as_secs() as i64;
    if expired {
        let age = cfg.max_queue_age.as_secs() / 3600;
        for r in envelope
            .recipients
            .iter_mut()
            .filter(|r| r.state == RecipientState::Pending)
        {
            let last = envelope.last_error.clone().unwrap_or_default();
            r.state = RecipientState::Failed {
                reply: format!(
                    "554 4.4.7 Message expired after {age} hours in the queue; last error: {last}"
                ),
            };
        }
    }
    let mut next = Vec::new();
    if envelope.pending().next().is_some() {
        envelope.next_attempt = now() + backoff(cfg, envelope.attempts).as_secs() as i64;
        if let Err(e) = spool.update(&envelope) {
            warn!(target: "attrelay::delivery", queue_id = %envelope.id, error = %e, "cannot update the envelope");
        }
        next.push(envelope);
        return next;
    }
    // Finished: bounce what failed, then forget the message.
    let failed = envelope
        .recipients
        .iter()
        .any(|r| matches!(r.state, RecipientState::Failed { .. }));
    if failed {
        match bounce(cfg, &envelope) {
            Bounce::Send(returned) => {
                // What a DSN can carry back: the header section, bounded.
                let returned_part = message.prefix(dsn::MAX_RETURNED_HEADERS + 4).await;
                let queued = match returned_part {
                    Ok(original) => make_dsn(spool, cfg, &envelope, &original, returned)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(format!("the spooled message could not be read: {e}")),
                };
                match queued {
                    Ok(d) => next.push(d),
                    Err(e) => {
                        // Keep the original until the bounce is safely spooled.
                        // (The retry asks the limiter again: a disk failure can
                        // spend a domain's allowance, never exceed it.)
                        warn!(target: "attrelay::delivery", queue_id = %envelope.id, error = %e, "cannot spool the DSN; will retry");
                        envelope.next_attempt = now() + cfg.retry_initial.as_secs() as i64;
                        next.push(envelope);
                        return next;
                    }
                }
            }
            Bounce::Never => {
                info!(target: "attrelay::delivery", queue_id = %envelope.id, "failed message with a null sender: no DSN");
            }
            Bounce::Suppressed => {
                info!(
                    target: "attrelay::delivery",
                    queue_id = %envelope.id,
                    sender = ?envelope.sender,
                    suppressed_total = cfg.dsn_limiter.suppressed(),
                    "DSN suppressed: unauthenticated sender whose domain has used up its DSNs for the hour (dsn_rate_per_domain_per_hour)"
                );
            }
        }
    }
    spool.remove(&envelope).await;
    next
}

/// What the sender of a finished message with failed recipients gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bounce {
    /// A DSN returning what [`dsn::Returned`] allows of the message.
    Send(dsn::Returned),
    /// No DSN, ever: the null sender, or a DSN itself (RFC 5321 4.5.5 and
    /// 6.1: notifications go out with the null sender so that none is ever
    /// answered with another).
    Never,
    /// None: the sender was not authenticated and its domain has had its
    /// DSNs for the hour (backscatter).
    Suppressed,
}

/// Decides the bounce of `envelope`. Authenticated senders (a tenant's own
/// mail) get their header section back, unlimited; any other sender may be
/// forged, so gets the status only, within its domain's hourly allowance,
/// which this call spends.
fn bounce(cfg: &DeliveryConfig, envelope: &Envelope) -> Bounce {
    if envelope.sender.is_empty() || envelope.is_dsn {
        Bounce::Never
    } else if envelope.authenticated {
        Bounce::Send(dsn::Returned::Headers)
    } else if cfg.dsn_limiter.allow(&envelope.sender) {
        Bounce::Send(dsn::Returned::StatusOnly)
    } else {
        Bounce::Suppressed
    }
}

async fn make_dsn(
    spool: &Spool,
    cfg: &DeliveryConfig,
    original: &Envelope,
    message: &[u8],
    returned: dsn::Returned,
) -> Result<Envelope, crate::spool::SpoolError> {
    let id = spool.new_id();
    let date = crate::intake::rfc2822_now();
    // No X-Attributed-Tenant: a DSN goes to a reverse-path anyone can
    // forge, possibly another tenant's address, and must not carry one
    // tenant's attribution to another.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&dsn::build(
        &cfg.hostname,
        original,
        message,
        returned,
        &id,
        &date,
    ));
    let envelope = Envelope {
        id,
        sender: String::new(),
        recipients: vec![Recipient {
            address: original.sender.clone(),
            state: RecipientState::Pending,
        }],
        // Not the original's tenant: the reverse-path may be anyone's.
        tenant: None,
        received_at: now(),
        attempts: 0,
        next_attempt: now(),
        last_error: None,
        is_dsn: true,
        client: String::new(),
        // Ours, not the sender's; and a DSN is never bounced.
        authenticated: false,
        head: String::new(),
        body: None,
        message_sha256: String::new(),
        message_len: 0,
    };
    let mut queued = None;
    crate::intake::accept(
        spool,
        crate::intake::Message {
            envelopes: vec![envelope],
            body: spool.body_of(&bytes),
        },
        |e| queued = Some(e),
    )
    .await?;
    let envelope = queued.expect("accept hands over every copy it stored");
    info!(target: "attrelay::delivery", queue_id = %envelope.id, original = %original.id, to = ?original.sender, returned = ?returned, "DSN queued");
    Ok(envelope)
}

/// Writes the message into `dir` as `ID.eml`, with `ID.json` holding the
/// envelope. `Delivered` lets the queue remove the spooled copy, so it is
/// reported only once both files would survive a crash; a failure is
/// temporary (the spool retries) and leaves no partial file, which on a full
/// disk would keep it full. The fsyncs run on the blocking pool, off the
/// queue's runtime threads.
async fn directory_deliver(
    dir: &std::path::Path,
    envelope: &Envelope,
    message: &crate::spool::Stored,
) -> Vec<(String, Outcome)> {
    let pending: Vec<String> = envelope.pending().map(|r| r.address.clone()).collect();
    let meta = serde_json::json!({
        "id": envelope.id,
        "sender": envelope.sender,
        "recipients": pending,
        "tenant": envelope.tenant,
    });
    let json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
    // The directory target (tests, a pickup directory) takes the message
    // whole; SMTP delivery streams it.
    let outcome = match message.to_vec().await {
        Ok(message) => {
            let (to, id) = (dir.to_path_buf(), envelope.id.clone());
            let written = tokio::task::spawn_blocking(move || {
                write_to_directory(&to, &id, &message, &json).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match written {
                Ok(path) => Outcome::Delivered(format!("250 2.0.0 written to {}", path.display())),
                Err(e) => {
                    Outcome::Temporary(format!("451 4.3.0 cannot write to {}: {e}", dir.display()))
                }
            }
        }
        Err(e) => Outcome::Temporary(format!(
            "451 4.3.0 the spooled message could not be read: {e}"
        )),
    };
    pending.into_iter().map(|r| (r, outcome.clone())).collect()
}

/// `ID.json`, then `ID.eml`, into `dir`, each durably (temporary name,
/// fsync, rename, directory fsync: [`crate::spool::replace_durably`]). The
/// message comes last, so that a reader who sees `ID.eml` finds its
/// envelope beside it; when the message cannot be written, the envelope is
/// withdrawn again (and a message renamed into place before its directory's
/// fsync failed too), and the retry writes both.
fn write_to_directory(
    dir: &std::path::Path,
    id: &str,
    message: &[u8],
    envelope: &[u8],
) -> Result<PathBuf, crate::spool::WriteError> {
    std::fs::create_dir_all(dir).map_err(|source| crate::spool::WriteError {
        path: dir.to_path_buf(),
        source,
    })?;
    let json = dir.join(format!("{id}.json"));
    if let Err(e) =
        crate::spool::replace_durably(&dir.join(format!(".{id}.json.tmp")), &json, envelope)
    {
        crate::spool::discard(&json);
        return Err(e);
    }
    let eml = dir.join(format!("{id}.eml"));
    if let Err(e) =
        crate::spool::replace_durably(&dir.join(format!(".{id}.eml.tmp")), &eml, message)
    {
        crate::spool::discard(&eml);
        crate::spool::discard(&json);
        return Err(e);
    }
    Ok(eml)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(target: Target, dsn_rate_per_domain_per_hour: u32) -> DeliveryConfig {
        DeliveryConfig {
            target,
            hostname: "h".into(),
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            max_queue_age: Duration::from_secs(86400),
            concurrency: 1,
            timeout: Duration::from_secs(1),
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            mx_address_limit: DEFAULT_MX_ADDRESS_LIMIT,
            mx_session_limit: DEFAULT_MX_SESSION_LIMIT,
            tls_policy: TlsPolicy::Opportunistic,
            shutdown_grace: Duration::from_secs(1),
            tls: crate::tls::server::client_config(&[], None).unwrap(),
            mx_port: 25,
            resolver: None,
            connections: Arc::new(smtp::Connections::new(
                pool::PoolLimits::default(),
                pool::PoolMetrics::default(),
            )),
            metrics: None,
            dsn_limiter: Arc::new(dsn::DsnLimiter::new(dsn_rate_per_domain_per_hour)),
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let cfg = config(Target::Mx, 10);
        let secs: Vec<u64> = (1..=8).map(|a| backoff(&cfg, a).as_secs()).collect();
        assert_eq!(secs, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(&cfg, 1000).as_secs(), 3600);
    }

    fn envelope(sender: &str, authenticated: bool, is_dsn: bool) -> Envelope {
        Envelope {
            id: String::new(),
            sender: sender.into(),
            recipients: vec![Recipient {
                address: "nobody@contoso.com".into(),
                state: RecipientState::Failed {
                    reply: "550 5.1.1 User unknown".into(),
                },
            }],
            tenant: Some("contoso".into()),
            received_at: now(),
            attempts: 1,
            next_attempt: now(),
            last_error: None,
            is_dsn,
            client: "192.0.2.1".into(),
            authenticated,
            head: String::new(),
            body: None,
            message_sha256: String::new(),
            message_len: 0,
        }
    }

    #[test]
    fn bounces_of_unauthenticated_senders_are_status_only_and_limited() {
        let cfg = config(Target::Mx, 2);
        let forged = envelope("victim@forged.example", false, false);
        let returned = |e: &Envelope| bounce(&cfg, e);
        assert_eq!(returned(&forged), Bounce::Send(dsn::Returned::StatusOnly));
        assert_eq!(returned(&forged), Bounce::Send(dsn::Returned::StatusOnly));
        assert_eq!(returned(&forged), Bounce::Suppressed);
        // Another domain has its own allowance.
        let other = envelope("someone@other.example", false, false);
        assert_eq!(returned(&other), Bounce::Send(dsn::Returned::StatusOnly));
        // A tenant's own mail: headers, and no limit.
        let tenant = envelope("john@forged.example", true, false);
        for _ in 0..5 {
            assert_eq!(returned(&tenant), Bounce::Send(dsn::Returned::Headers));
        }
        assert_eq!(returned(&envelope("", true, false)), Bounce::Never);
        assert_eq!(returned(&envelope("", false, false)), Bounce::Never);
        assert_eq!(
            returned(&envelope("a@b.example", true, true)),
            Bounce::Never
        );
        assert_eq!(cfg.dsn_limiter.suppressed(), 1);

        let none = config(Target::Mx, 0);
        assert_eq!(bounce(&none, &forged), Bounce::Suppressed);
        assert_eq!(bounce(&none, &tenant), Bounce::Send(dsn::Returned::Headers));
    }

    /// A next hop that refuses connections: every attempt is a temporary
    /// failure, and a message past the queue age then bounces.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// Spools a message past the queue age for `nobody@contoso.com` and
    /// runs one attempt: what comes back is its DSN, if any.
    async fn expire(
        spool: &Spool,
        cfg: &DeliveryConfig,
        sender: &str,
        auth: bool,
    ) -> Vec<Envelope> {
        let mut e = envelope(sender, auth, false);
        e.id = spool.new_id();
        e.received_at = 0;
        e.recipients[0].state = RecipientState::Pending;
        let message = b"Subject: BUY NOW at attacker.example\r\nFrom: x\r\n\r\nattacker body\r\n";
        spool.store(&mut e, message).unwrap();
        attempt(spool, cfg, e).await
    }

    #[tokio::test]
    async fn an_expired_message_bounces_by_the_sender_policy() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let target = Target::Smarthost {
            host: "127.0.0.1".into(),
            port: closed_port(),
        };
        let cfg = config(target, 1);

        let forged = expire(&spool, &cfg, "victim@forged.example", false).await;
        assert_eq!(forged.len(), 1, "one DSN: {forged:?}");
        assert!(forged[0].is_dsn);
        assert_eq!(forged[0].recipients[0].address, "victim@forged.example");
        let text = String::from_utf8(spool.read_checked(&forged[0]).unwrap()).unwrap();
        assert!(text.contains("Status: 4.4.7"), "{text}");
        assert!(
            !text.contains("attacker"),
            "nothing of the original: {text}"
        );
        assert!(!text.contains("text/rfc822-headers"), "{text}");

        // The domain's allowance is spent: the next bounce is suppressed,
        // and the original leaves the spool all the same.
        assert!(
            expire(&spool, &cfg, "other@forged.example", false)
                .await
                .is_empty()
        );
        assert_eq!(spool.len(), 1, "only the first DSN is queued");

        let own = expire(&spool, &cfg, "john@contoso.com", true).await;
        assert_eq!(own.len(), 1);
        let text = String::from_utf8(spool.read_checked(&own[0]).unwrap()).unwrap();
        assert!(text.contains("Content-Type: text/rfc822-headers"), "{text}");
        assert!(
            text.contains("Subject: BUY NOW at attacker.example"),
            "{text}"
        );
        assert!(!text.contains("attacker body"), "never the body: {text}");
    }
}
