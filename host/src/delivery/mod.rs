//! Onward delivery: the queue that takes spooled messages to the next hop,
//! retries temporary failures with exponential backoff, and bounces
//! permanent failures (and messages older than the maximum queue age) with a
//! delivery status notification.
//!
//! The spool stays the source of truth: an envelope is rewritten after every
//! attempt, and removed only once every recipient is delivered or bounced, so
//! a crash at any point re-delivers at worst, never loses.

pub mod dsn;
pub mod mx;
pub mod smtp;

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

/// `[delivery]`, resolved.
#[derive(Clone)]
pub struct DeliveryConfig {
    pub target: Target,
    pub hostname: String,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_queue_age: Duration,
    pub concurrency: usize,
    /// Timeout of each SMTP step (connect, reply, data).
    pub timeout: Duration,
    pub tls: Arc<rustls::ClientConfig>,
    /// Port used for MX hosts (25; tests use another).
    pub mx_port: u16,
    /// The DNS resolver for MX delivery, shared by all attempts.
    pub resolver: Option<Arc<hickory_resolver::TokioResolver>>,
    /// Idle connections to next hops, shared by all attempts.
    pub connections: Arc<smtp::ConnectionCache>,
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
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
    // In-flight attempts finish (each bounded by its timeouts); what is left
    // stays in the spool for the next start.
    while running.join_next().await.is_some() {}
}

/// One delivery attempt. Returns the envelopes to queue again: this one if
/// recipients remain, and any DSN it generated.
pub async fn attempt(spool: &Spool, cfg: &DeliveryConfig, mut envelope: Envelope) -> Vec<Envelope> {
    let message = match spool.read_checked(&envelope) {
        Ok(m) => m,
        Err(e @ crate::spool::SpoolError::Corrupt { .. }) => {
            tracing::error!(target: "attrelay::delivery", queue_id = %envelope.id, error = %e, "spooled message is damaged");
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
    let results: Vec<(String, Outcome, String)> = match &cfg.target {
        Target::Directory(dir) => directory_deliver(dir, &envelope, &message)
            .await
            .into_iter()
            .map(|(r, o)| (r, o, format!("dir:{}", dir.display())))
            .collect(),
        Target::Smarthost { host, port } => {
            let outcomes =
                smtp::deliver(cfg, host, *port, &envelope.sender, &pending, &message).await;
            outcomes
                .into_iter()
                .map(|(r, o)| (r, o, format!("{host}:{port}")))
                .collect()
        }
        Target::Mx => mx::deliver(cfg, &envelope.sender, &pending, &message).await,
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
            recipient = %rcpt,
            next_hop = %hop,
            tenant = envelope.tenant.as_deref().unwrap_or("-"),
            result,
            reply = %reply,
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
    if failed && !envelope.sender.is_empty() && !envelope.is_dsn {
        match make_dsn(spool, cfg, &envelope, &message) {
            Ok(d) => next.push(d),
            Err(e) => {
                // Keep the original until the bounce is safely spooled.
                warn!(target: "attrelay::delivery", queue_id = %envelope.id, error = %e, "cannot spool the DSN; will retry");
                envelope.next_attempt = now() + cfg.retry_initial.as_secs() as i64;
                next.push(envelope);
                return next;
            }
        }
    } else if failed {
        info!(target: "attrelay::delivery", queue_id = %envelope.id, "failed message with a null sender: no DSN");
    }
    if let Err(e) = spool.remove(&envelope.id) {
        warn!(target: "attrelay::delivery", queue_id = %envelope.id, error = %e, "cannot remove the delivered message");
    }
    next
}

fn make_dsn(
    spool: &Spool,
    cfg: &DeliveryConfig,
    original: &Envelope,
    message: &[u8],
) -> Result<Envelope, crate::spool::SpoolError> {
    let id = spool.new_id();
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let mut bytes = match &original.tenant {
        Some(t) => format!("X-Attributed-Tenant: {t}\r\n").into_bytes(),
        None => Vec::new(),
    };
    bytes.extend_from_slice(&dsn::build(&cfg.hostname, original, message, &id, &date));
    let mut envelope = Envelope {
        id,
        sender: String::new(),
        recipients: vec![Recipient {
            address: original.sender.clone(),
            state: RecipientState::Pending,
        }],
        tenant: original.tenant.clone(),
        received_at: now(),
        attempts: 0,
        next_attempt: now(),
        last_error: None,
        is_dsn: true,
        client: String::new(),
        message_sha256: String::new(),
        message_len: 0,
    };
    spool.store(&mut envelope, &bytes)?;
    info!(target: "attrelay::delivery", queue_id = %envelope.id, original = %original.id, to = %original.sender, "DSN queued");
    Ok(envelope)
}

/// Writes the message into `dir` as `ID.eml`, with `ID.json` holding the
/// envelope, atomically (temporary name, then rename).
async fn directory_deliver(
    dir: &std::path::Path,
    envelope: &Envelope,
    message: &[u8],
) -> Vec<(String, Outcome)> {
    let pending: Vec<String> = envelope.pending().map(|r| r.address.clone()).collect();
    let write = || -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let eml = dir.join(format!("{}.eml", envelope.id));
        let tmp = dir.join(format!(".{}.eml.tmp", envelope.id));
        std::fs::write(&tmp, message)?;
        std::fs::rename(&tmp, &eml)?;
        let meta = serde_json::json!({
            "id": envelope.id,
            "sender": envelope.sender,
            "recipients": pending,
            "tenant": envelope.tenant,
        });
        let json = dir.join(format!("{}.json", envelope.id));
        let tmp = dir.join(format!(".{}.json.tmp", envelope.id));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&meta).unwrap_or_default())?;
        std::fs::rename(&tmp, &json)?;
        Ok(eml)
    };
    let outcome = match write() {
        Ok(path) => Outcome::Delivered(format!("250 2.0.0 written to {}", path.display())),
        Err(e) => Outcome::Temporary(format!("451 4.3.0 cannot write to {}: {e}", dir.display())),
    };
    pending.into_iter().map(|r| (r, outcome.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let cfg = DeliveryConfig {
            target: Target::Mx,
            hostname: "h".into(),
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            max_queue_age: Duration::from_secs(86400),
            concurrency: 1,
            timeout: Duration::from_secs(1),
            tls: crate::tls::server::client_config(&[], None).unwrap(),
            mx_port: 25,
            resolver: None,
            connections: Default::default(),
            metrics: None,
        };
        let secs: Vec<u64> = (1..=8).map(|a| backoff(&cfg, a).as_secs()).collect();
        assert_eq!(secs, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(&cfg, 1000).as_secs(), 3600);
    }
}
