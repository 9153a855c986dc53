//! The queue: what is waiting and when it is due, attempts started as the
//! concurrency allows, a flush on request, and a drain at shutdown. The
//! spool holds the messages; the queue holds only their envelopes and
//! their next attempt's time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::attempt::attempt;
use super::context::DeliveryContext;
use crate::clock::now;
use crate::spool::{Envelope, Spool, SpoolId};

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
    entries: std::sync::Mutex<HashMap<SpoolId, i64>>,
}

impl QueueContents {
    fn insert(&self, e: &Envelope) {
        if let Ok(mut m) = self.entries.lock() {
            m.insert(e.id.clone(), e.received_at);
        }
    }

    fn remove(&self, id: &SpoolId) {
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

/// Starts the queue with the messages recovered from the spool (due at once).
pub fn start(
    spool: Arc<Spool>,
    cfg: DeliveryContext,
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
    cfg: DeliveryContext,
    mut rx: mpsc::UnboundedReceiver<Envelope>,
    requeue: QueueHandle,
    contents: Arc<QueueContents>,
    flush: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    let mut due: BinaryHeap<Reverse<(i64, SpoolId)>> = BinaryHeap::new();
    let mut waiting: HashMap<SpoolId, Envelope> = HashMap::new();
    let mut running: JoinSet<()> = JoinSet::new();
    let slots = Arc::new(Semaphore::new(cfg.settings.concurrency.max(1)));
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
