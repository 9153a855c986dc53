//! The queue: what is waiting and when it is due, attempts started as the
//! concurrency allows, operators' actions on one message (`control.rs`), a
//! flush on request, and a drain at shutdown. The spool holds the
//! messages; the queue holds only their envelopes and their next attempt's
//! time.
//!
//! A message is in one of three places: waiting (due at its next attempt,
//! or held), in flight (an attempt or an operator's action holds it), or
//! gone. An action on a message in flight waits for it to come back, so
//! that no attempt rewrites an envelope an operator just changed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::attempt::attempt;
use super::context::DeliveryContext;
use super::control::{self, Action, Done, Report};
use super::routes::Routes;
use crate::clock::now;
use crate::spool::{Envelope, Spool, SpoolId};

/// Hands newly spooled messages to the queue, and operators' actions.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<Envelope>,
    control: mpsc::UnboundedSender<Request>,
    contents: Arc<QueueContents>,
    flush: Arc<tokio::sync::Notify>,
    /// The routes every attempt reads (`DeliveryContext::routes`).
    routes: Arc<arc_swap::ArcSwap<Routes>>,
}

/// An operator's action on its way to the queue.
struct Request {
    id: SpoolId,
    action: Action,
    reply: oneshot::Sender<Report>,
}

/// The queue has stopped (the relay is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the queue has stopped (the relay is shutting down)")]
pub struct QueueStopped;

/// How many messages the queue holds, how many of them are held, and when
/// the oldest that is not held was received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub messages: usize,
    pub held: usize,
    pub oldest: Option<i64>,
}

impl QueueHandle {
    /// Hands a spooled message to the queue; it counts in [`Self::contents`]
    /// from now until it leaves the spool.
    pub fn enqueue(&self, envelope: Envelope) {
        self.contents.insert(&envelope);
        // After shutdown the message stays in the spool for the next start.
        let _ = self.tx.send(envelope);
    }

    /// What the queue holds — kept by the queue itself, so that a scrape of
    /// `/metrics` costs nothing even when the next hop is down and the
    /// spool holds a hundred thousand messages.
    pub fn contents(&self) -> Summary {
        self.contents.summary()
    }

    /// Makes every waiting message that is not held due now (an operator's
    /// "flush", after the next hop came back): backoff is skipped once,
    /// attempts still count. Returns how many messages the queue holds.
    pub fn flush(&self) -> usize {
        self.flush.notify_one();
        self.contents().messages
    }

    /// Delivers by `routes` from the next attempt on (a reload).
    pub fn set_routes(&self, routes: Routes) {
        self.routes.store(Arc::new(routes));
    }

    /// Applies an operator's `action` to message `id`; answers once it is
    /// done (or, for a message in flight, once it is recorded to be done
    /// when the attempt ends), so that what `/status` and `/metrics` show
    /// next includes it.
    pub async fn act(&self, id: SpoolId, action: Action) -> Result<Report, QueueStopped> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Request { id, action, reply })
            .map_err(|_| QueueStopped)?;
        answer.await.map_err(|_| QueueStopped)
    }
}

/// The queue's entries (id → reception time and whether held): every
/// message the queue holds, waiting or in flight, from when it is handed
/// over until it leaves the spool.
#[derive(Default)]
struct QueueContents {
    entries: std::sync::Mutex<HashMap<SpoolId, (i64, bool)>>,
}

impl QueueContents {
    fn insert(&self, e: &Envelope) {
        if let Ok(mut m) = self.entries.lock() {
            m.insert(e.id.clone(), (e.received_at, e.is_held()));
        }
    }

    fn remove(&self, id: &SpoolId) {
        if let Ok(mut m) = self.entries.lock() {
            m.remove(id);
        }
    }

    fn summary(&self) -> Summary {
        match self.entries.lock() {
            // Held messages wait on an operator, not on delivery: they do
            // not make the oldest message's age (an alert's input) grow.
            Ok(m) => Summary {
                messages: m.len(),
                held: m.values().filter(|(_, held)| *held).count(),
                oldest: m
                    .values()
                    .filter(|(_, held)| !held)
                    .map(|(at, _)| *at)
                    .min(),
            },
            Err(_) => Summary::default(),
        }
    }
}

/// Starts the queue with the messages recovered from the spool (due at
/// once, unless held).
pub fn start(
    spool: Arc<Spool>,
    cfg: DeliveryContext,
    recovered: Vec<Envelope>,
    shutdown: CancellationToken,
) -> (QueueHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (control, requests) = mpsc::unbounded_channel();
    let contents = Arc::new(QueueContents::default());
    let flush = Arc::new(tokio::sync::Notify::new());
    let handle = QueueHandle {
        tx,
        control,
        contents: contents.clone(),
        flush: flush.clone(),
        routes: cfg.routes.clone(),
    };
    for mut e in recovered {
        e.next_attempt = now();
        handle.enqueue(e);
    }
    tokio::spawn(cfg.connections.clone().sweep(shutdown.clone()));
    let slots = Arc::new(Semaphore::new(cfg.settings.concurrency.max(1)));
    let queue = Queue {
        spool,
        cfg,
        contents,
        due: BinaryHeap::new(),
        waiting: HashMap::new(),
        in_flight: HashMap::new(),
        running: JoinSet::new(),
        tasks: HashMap::new(),
        slots,
    };
    let join = tokio::spawn(queue.run(rx, requests, flush, shutdown));
    (handle, join)
}

/// What a task of the queue hands back when it ends: the message it held
/// (`None` for none) and what to queue again (the message if it stays,
/// and any DSN).
struct Finished {
    id: SpoolId,
    next: Vec<Envelope>,
}

/// An action waiting for its message to come back from flight; `reply`
/// is `None` once the operator was told it will be done.
type Deferred = (Action, Option<oneshot::Sender<Report>>);

struct Queue {
    spool: Arc<Spool>,
    cfg: DeliveryContext,
    contents: Arc<QueueContents>,
    /// When each waiting message is due; stale entries (the message left,
    /// was held, or was made due at another time) are skipped.
    due: BinaryHeap<Reverse<(i64, SpoolId)>>,
    waiting: HashMap<SpoolId, Envelope>,
    /// Messages an attempt or an action holds, with the actions to apply
    /// when they come back.
    in_flight: HashMap<SpoolId, Vec<Deferred>>,
    running: JoinSet<Finished>,
    /// The message each running task holds, to take it back should the
    /// task fail (a panic) without handing it back.
    tasks: HashMap<tokio::task::Id, SpoolId>,
    slots: Arc<Semaphore>,
}

impl Queue {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Envelope>,
        mut requests: mpsc::UnboundedReceiver<Request>,
        flush: Arc<tokio::sync::Notify>,
        shutdown: CancellationToken,
    ) {
        loop {
            self.start_due();
            let sleep_for = self
                .due
                .peek()
                .map(|Reverse((at, _))| Duration::from_secs((*at - now()).max(0) as u64))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                Some(e) = rx.recv() => self.place(e),
                Some(r) = requests.recv() => self.request(r),
                Some(done) = self.running.join_next_with_id(), if !self.running.is_empty() => {
                    match done {
                        Ok((task, finished)) => {
                            self.tasks.remove(&task);
                            self.finished(finished);
                        }
                        Err(e) => self.failed(e.id()),
                    }
                }
                _ = flush.notified() => self.flush_all(),
                _ = tokio::time::sleep(sleep_for.max(Duration::from_millis(50))) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.drain().await;
    }

    /// A message is waiting again: due at its next attempt unless held.
    fn place(&mut self, e: Envelope) {
        if !e.is_held() {
            self.due.push(Reverse((e.next_attempt, e.id.clone())));
        }
        self.waiting.insert(e.id.clone(), e);
    }

    /// Starts every attempt that is due, as far as the concurrency allows.
    fn start_due(&mut self) {
        while let Some(Reverse((at, _))) = self.due.peek() {
            if *at > now() {
                return;
            }
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                return;
            };
            let Some(Reverse((at, id))) = self.due.pop() else {
                return;
            };
            let current = self
                .waiting
                .get(&id)
                .is_some_and(|e| !e.is_held() && e.next_attempt == at);
            let Some(envelope) = current.then(|| self.waiting.remove(&id)).flatten() else {
                continue;
            };
            self.in_flight.insert(id.clone(), Vec::new());
            let (spool, cfg) = (self.spool.clone(), self.cfg.clone());
            let task_id = id.clone();
            let task = self.running.spawn(async move {
                let next = attempt(&spool, &cfg, envelope).await;
                drop(permit);
                Finished { id: task_id, next }
            });
            self.tasks.insert(task.id(), id);
        }
    }

    /// An operator's action: done now on a waiting message, after the
    /// attempt on one in flight.
    fn request(&mut self, r: Request) {
        if let Some(deferred) = self.in_flight.get_mut(&r.id) {
            let report = Report::new(
                &r.id,
                &r.action,
                Done::AfterAttempt,
                "an attempt is in flight; the action is applied when it ends",
            );
            deferred.push((r.action, None));
            let _ = r.reply.send(report);
            return;
        }
        let Some(envelope) = self.waiting.remove(&r.id) else {
            let _ = r
                .reply
                .send(Report::new(&r.id, &r.action, Done::NotQueued, ""));
            return;
        };
        self.act(envelope, vec![(r.action, Some(r.reply))]);
    }

    /// Applies `actions` in order to `envelope`, in a task of the queue
    /// (an action may wait on the disk, and the queue must not).
    fn act(&mut self, envelope: Envelope, actions: Vec<Deferred>) {
        let id = envelope.id.clone();
        self.in_flight.insert(id.clone(), Vec::new());
        let (spool, cfg, contents) = (self.spool.clone(), self.cfg.clone(), self.contents.clone());
        let task_id = id.clone();
        let task = self.running.spawn(async move {
            let id = task_id;
            let mut current = Some(envelope);
            let mut next = Vec::new();
            for (action, reply) in actions {
                let report = match current.take() {
                    Some(e) => {
                        let (report, mut after) =
                            control::apply(&spool, &cfg, e, &action, now()).await;
                        current = after
                            .iter()
                            .position(|e| e.id == id)
                            .map(|i| after.remove(i));
                        next.append(&mut after);
                        report
                    }
                    None => Report::new(&id, &action, Done::NotQueued, "it left the queue"),
                };
                // What /status and /metrics show must include the action
                // by the time the operator hears it is done.
                match &current {
                    Some(e) => contents.insert(e),
                    None => contents.remove(&id),
                }
                if let Some(reply) = reply {
                    let _ = reply.send(report);
                }
            }
            next.extend(current);
            Finished { id, next }
        });
        self.tasks.insert(task.id(), id);
    }

    /// A task ended without handing its message back (it panicked): the
    /// message is read again from the spool, which is the truth, and waits
    /// for its next attempt; the actions waiting for it are logged as not
    /// applied.
    fn failed(&mut self, task: tokio::task::Id) {
        let Some(id) = self.tasks.remove(&task) else {
            return;
        };
        let deferred = self.in_flight.remove(&id).unwrap_or_default();
        tracing::error!(target: "attrelay::queue", queue_id = %id, actions_not_applied = deferred.len(), "a delivery task failed; the message is read again from the spool");
        match self.spool.read_envelope(&id) {
            Ok(mut e) => {
                e.next_attempt = now() + self.cfg.settings.retry_initial.as_secs() as i64;
                self.contents.insert(&e);
                self.place(e);
            }
            Err(e) => {
                warn!(target: "attrelay::queue", queue_id = %id, error = %e, "the message is not in the spool any more");
                self.contents.remove(&id);
            }
        }
    }

    /// A task ended: what it hands back waits again, unless actions wait
    /// for it.
    fn finished(&mut self, Finished { id, next }: Finished) {
        let deferred = self.in_flight.remove(&id).unwrap_or_default();
        if !next.iter().any(|e| e.id == id) {
            // Delivered, bounced, deleted or set aside: it left the spool.
            self.contents.remove(&id);
            for (action, _) in deferred.iter() {
                info!(target: "attrelay::queue", queue_id = %id, action = action.name(), "operator action not applied: the message left the queue first");
            }
        }
        let mut deferred = Some(deferred).filter(|d| !d.is_empty());
        for e in next {
            self.contents.insert(&e);
            match deferred.take_if(|_| e.id == id) {
                Some(actions) => self.act(e, actions),
                None => self.place(e),
            }
        }
    }

    /// Every waiting message that is not held is due now.
    fn flush_all(&mut self) {
        let at = now();
        let mut due = BinaryHeap::new();
        for e in self.waiting.values_mut().filter(|e| !e.is_held()) {
            e.next_attempt = at;
            due.push(Reverse((at, e.id.clone())));
        }
        info!(
            messages = due.len(),
            "queue flush: every waiting message is due now"
        );
        self.due = due;
    }

    /// In-flight attempts may finish within the shutdown grace; then they
    /// are dropped, and their messages stay in the spool for the next start
    /// (an attempt cut short after a next hop accepted is delivered again:
    /// at-least-once).
    async fn drain(mut self) {
        let grace = self.cfg.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            while self.running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                attempts = self.running.len(),
                "shutdown grace period over: delivery attempts in flight stopped; their messages stay queued"
            );
            self.running.abort_all();
        }
    }
}
