//! Connections to next hops: how many may be open, and which idle ones are
//! kept for reuse.
//!
//! Reuse is what production MTAs do — a relay sending everything to one
//! smarthost would otherwise pay a TCP and TLS handshake per message, and so
//! would the smarthost — but every kept connection is an open file, and the
//! recipients (and so the hops) of mail can be chosen by anyone who can make
//! the relay send a DSN. So everything here is bounded:
//!
//! - every connection, busy or idle, holds one of `max_connections` permits:
//!   past it a new connection first closes the least recently used idle one,
//!   then waits (a step's time at most; then its recipients are deferred);
//! - at most `max_idle` idle connections in all and
//!   [`PoolLimits::max_idle_per_hop`] per hop, least recently used evicted;
//! - an idle connection lives at most `idle_time`: a sweeper closes it then,
//!   whether or not its hop is ever taken again;
//! - a connection carries at most [`MAX_USES`] messages, and is reused only
//!   when the hop has said nothing since its last reply ([`Wire::is_quiet`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wire::Wire;
use crate::metrics::OutcomeLabels;

/// A next hop as connections are kept for it: the name TLS verifies (and
/// the hop was chosen by) and the address.
pub type Hop = (String, SocketAddr);

/// Messages one connection carries at most.
pub const MAX_USES: u32 = 100;

/// Connections to next hops open at once, busy and idle (`[delivery]
/// max_connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// Idle connections kept in all (`max_idle_connections`).
pub const DEFAULT_MAX_IDLE: usize = 32;
/// Idle connections kept per next hop (`max_idle_per_hop`): a smarthost
/// taking all the mail gets one per delivery slot.
pub const DEFAULT_MAX_IDLE_PER_HOP: usize = 8;
/// How long an idle connection is kept (`connection_idle_secs`; Postfix
/// keeps its own 2 s).
pub const DEFAULT_IDLE_TIME: Duration = Duration::from_secs(5);

/// The pool's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    pub max_connections: usize,
    pub max_idle: usize,
    pub max_idle_per_hop: usize,
    pub idle_time: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_idle: DEFAULT_MAX_IDLE,
            max_idle_per_hop: DEFAULT_MAX_IDLE_PER_HOP,
            idle_time: DEFAULT_IDLE_TIME,
        }
    }
}

/// What the pool reports (registered by [`crate::metrics::Metrics`]).
#[derive(Clone, Default)]
pub struct PoolMetrics {
    /// Connections open now, busy and idle.
    pub open: Gauge,
    /// Idle connections kept now.
    pub idle: Gauge,
    pub opened: Counter,
    pub reused: Counter,
    /// Idle connections closed, by reason: `expired`, `lru` (room for
    /// another), `hop_cap`, `stale` (the hop spoke or closed), `used_up`,
    /// `wanted` (not kept: new connections were waiting for room).
    pub evicted: Family<OutcomeLabels, Counter>,
}

impl PoolMetrics {
    fn evicted(&self, reason: &str) {
        crate::metrics::Metrics::outcome(&self.evicted, reason);
    }
}

/// A connection's place in the budget: its permit, counted as open while
/// it lives.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// An open connection after EHLO (and STARTTLS), with what it has carried.
pub struct Pooled<C> {
    pub conn: C,
    pub uses: u32,
    pub slot: Slot,
}

struct Idle<C> {
    hop: Hop,
    conn: Pooled<C>,
    since: Instant,
}

/// The pool, shared by every delivery attempt. Generic over the connection
/// so that its bounds are tested without a network.
pub struct Pool<C> {
    limits: PoolLimits,
    permits: Arc<Semaphore>,
    /// Oldest first.
    idle: Mutex<Vec<Idle<C>>>,
    /// Wakes the sweeper when the first idle connection arrives.
    added: Notify,
    /// New connections waiting for a permit: while there are any, a
    /// connection that finishes is closed rather than kept idle.
    waiting: std::sync::atomic::AtomicUsize,
    metrics: PoolMetrics,
}

/// What the pool needs of a connection.
pub trait Reusable: Send + 'static {
    /// See [`Wire::is_quiet`].
    fn is_quiet(&mut self) -> bool;
    /// Closes it politely (QUIT), in the background, holding its `slot`
    /// until the socket is closed.
    fn retire(self, slot: Slot);
}

impl<C: Reusable> Pooled<C> {
    fn retire(self) {
        self.conn.retire(self.slot);
    }
}

impl<C: Reusable> Pool<C> {
    pub fn new(limits: PoolLimits, metrics: PoolMetrics) -> Pool<C> {
        Pool {
            limits,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            idle: Mutex::new(Vec::new()),
            added: Notify::new(),
            waiting: Default::default(),
            metrics,
        }
    }

    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle<C>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Room for a new connection: a permit at once if one is free, else
    /// after closing the least recently used idle connection, else the
    /// first to be freed within `wait`. `None`: the budget stayed full.
    pub async fn slot(&self, wait: Duration) -> Option<Slot> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let oldest = {
                    let mut idle = self.idle();
                    (!idle.is_empty()).then(|| idle.remove(0))
                };
                if let Some(old) = oldest {
                    self.metrics.idle.dec();
                    self.metrics.evicted("lru");
                    // Dropped, not retired: its permit is wanted now.
                    drop(old);
                }
                use std::sync::atomic::Ordering;
                self.waiting.fetch_add(1, Ordering::SeqCst);
                let got = tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await;
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                got.ok()?.ok()?
            }
        };
        self.metrics.open.inc();
        Some(Slot {
            _permit: permit,
            open: self.metrics.open.clone(),
        })
    }

    /// Counts a connection opened in a slot of this pool.
    pub fn opened(&self) {
        self.metrics.opened.inc();
    }

    /// The most recently used idle connection to `hop` that is still
    /// fresh and quiet; others found on the way are closed.
    pub fn take(&self, hop: &Hop) -> Option<Pooled<C>> {
        loop {
            let found = {
                let mut idle = self.idle();
                let at = idle.iter().rposition(|i| &i.hop == hop)?;
                idle.remove(at)
            };
            self.metrics.idle.dec();
            let mut conn = found.conn;
            if found.since.elapsed() >= self.limits.idle_time {
                self.metrics.evicted("expired");
                conn.retire();
            } else if !conn.conn.is_quiet() {
                self.metrics.evicted("stale");
                drop(conn);
            } else {
                self.metrics.reused.inc();
                return Some(conn);
            }
        }
    }

    /// Keeps `conn`, which ended its transaction with a reply and nothing
    /// after it, for the next message to `hop`. No network I/O here
    /// beyond a non-blocking check: this runs inside an attempt's deadline.
    pub fn put_back(&self, hop: Hop, mut conn: Pooled<C>) {
        if conn.uses >= MAX_USES {
            self.metrics.evicted("used_up");
            conn.retire();
            return;
        }
        if self.limits.max_idle == 0 || self.limits.max_idle_per_hop == 0 {
            conn.retire();
            return;
        }
        if self.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            // Its permit is wanted now by a connection to another hop.
            self.metrics.evicted("wanted");
            return;
        }
        if !conn.conn.is_quiet() {
            self.metrics.evicted("stale");
            return;
        }
        let mut retired = Vec::new();
        {
            let mut idle = self.idle();
            let of_hop = idle.iter().filter(|i| i.hop == hop).count();
            if of_hop >= self.limits.max_idle_per_hop
                && let Some(at) = idle.iter().position(|i| i.hop == hop)
            {
                retired.push((idle.remove(at), "hop_cap"));
            }
            if idle.len() >= self.limits.max_idle {
                retired.push((idle.remove(0), "lru"));
            }
            let first = idle.is_empty();
            idle.push(Idle {
                hop,
                conn,
                since: Instant::now(),
            });
            if first {
                self.added.notify_one();
            }
        }
        self.metrics.idle.inc();
        for (old, reason) in retired {
            self.metrics.idle.dec();
            self.metrics.evicted(reason);
            old.conn.retire();
        }
    }

    /// Idle connections now (the tests' view; the metrics count them as
    /// they change).
    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.idle().len()
    }

    /// Closes every idle connection past its idle time, and returns when
    /// the next one will be.
    fn sweep_once(&self) -> Option<Instant> {
        let now = Instant::now();
        let expired: Vec<Idle<C>> = {
            let mut idle = self.idle();
            let fresh = idle
                .iter()
                .position(|i| now.duration_since(i.since) < self.limits.idle_time)
                .unwrap_or(idle.len());
            idle.drain(..fresh).collect()
        };
        for old in expired {
            self.metrics.idle.dec();
            self.metrics.evicted("expired");
            old.conn.retire();
        }
        self.idle()
            .first()
            .map(|oldest| oldest.since + self.limits.idle_time)
    }

    /// Sweeps until `shutdown`, waking when the oldest idle connection
    /// expires (so none outlives its idle time by more than a timer's
    /// precision), then closes every idle connection.
    pub async fn sweep(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let next = self.sweep_once();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => self.added.notified().await,
                    }
                } => {}
            }
        }
        let all: Vec<Idle<C>> = self.idle().drain(..).collect();
        for old in all {
            self.metrics.idle.dec();
            old.conn.retire();
        }
    }
}

impl Reusable for Wire {
    fn is_quiet(&mut self) -> bool {
        Wire::is_quiet(self)
    }

    fn retire(self, slot: Slot) {
        // Outside a runtime (a test's drop) the socket just closes.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                self.quit().await;
                drop(slot);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A connection that counts how it ended.
    struct Fake {
        quiet: Arc<AtomicBool>,
        retired: Arc<AtomicUsize>,
    }

    impl Reusable for Fake {
        fn is_quiet(&mut self) -> bool {
            self.quiet.load(Ordering::SeqCst)
        }
        fn retire(self, _slot: Slot) {
            self.retired.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn hop(name: &str) -> Hop {
        (name.to_string(), "127.0.0.1:25".parse().unwrap())
    }

    fn pool(max_connections: usize, max_idle: usize, per_hop: usize) -> Arc<Pool<Fake>> {
        Arc::new(Pool::new(
            PoolLimits {
                max_connections,
                max_idle,
                max_idle_per_hop: per_hop,
                idle_time: Duration::from_millis(300),
            },
            PoolMetrics::default(),
        ))
    }

    async fn open(pool: &Pool<Fake>, retired: &Arc<AtomicUsize>) -> Pooled<Fake> {
        let slot = pool.slot(Duration::from_millis(50)).await.expect("room");
        Pooled {
            conn: Fake {
                quiet: Arc::new(AtomicBool::new(true)),
                retired: retired.clone(),
            },
            uses: 1,
            slot,
        }
    }

    #[tokio::test]
    async fn idle_connections_are_capped_in_all_and_per_hop() {
        let retired = Arc::new(AtomicUsize::new(0));
        let pool = pool(100, 3, 2);
        for i in 0..5 {
            let c = open(&pool, &retired).await;
            pool.put_back(hop(&format!("mx{i}")), c);
        }
        assert_eq!(pool.idle_count(), 3);
        assert!(pool.take(&hop("mx0")).is_none(), "the oldest went first");
        let _held = pool.take(&hop("mx4")).expect("the newest is kept");
        for _ in 0..3 {
            let c = open(&pool, &retired).await;
            pool.put_back(hop("same"), c);
        }
        let same = pool.idle().iter().filter(|i| i.hop == hop("same")).count();
        assert_eq!(same, 2);
        assert_eq!(pool.metrics.open.get(), pool.idle_count() as i64 + 1);
    }

    #[tokio::test]
    async fn a_full_budget_closes_the_least_recently_used_idle_connection() {
        let retired = Arc::new(AtomicUsize::new(0));
        let pool = pool(2, 10, 10);
        let a = open(&pool, &retired).await;
        let b = open(&pool, &retired).await;
        pool.put_back(hop("a"), a);
        pool.put_back(hop("b"), b);
        let _c = open(&pool, &retired).await;
        assert!(pool.take(&hop("a")).is_none(), "a was evicted for c");
        let held = pool.take(&hop("b")).expect("b kept");
        // Nothing idle and the budget full: no room within the wait.
        assert!(pool.slot(Duration::from_millis(50)).await.is_none());
        drop(held);
        assert!(pool.slot(Duration::from_millis(50)).await.is_some());
    }

    #[tokio::test]
    async fn a_connection_finishing_while_others_wait_gives_its_room_away() {
        let retired = Arc::new(AtomicUsize::new(0));
        let pool = pool(1, 10, 10);
        let busy = open(&pool, &retired).await;
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.slot(Duration::from_secs(5)).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.put_back(hop("a"), busy);
        assert!(waiter.await.unwrap(), "the waiter got the permit");
        assert_eq!(pool.idle_count(), 0, "not kept idle while wanted");
    }

    #[tokio::test]
    async fn the_sweeper_closes_idle_connections_of_hops_never_taken_again() {
        let retired = Arc::new(AtomicUsize::new(0));
        let pool = pool(100, 100, 100);
        let stop = CancellationToken::new();
        let sweeper = tokio::spawn(pool.clone().sweep(stop.clone()));
        for i in 0..20 {
            let c = open(&pool, &retired).await;
            pool.put_back(hop(&format!("mx{i}")), c);
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(retired.load(Ordering::SeqCst), 20);
        assert_eq!(pool.metrics.open.get(), 0, "every permit given back");
        // And again after the pool was empty.
        let c = open(&pool, &retired).await;
        pool.put_back(hop("later"), c);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(pool.idle_count(), 0);
        stop.cancel();
        sweeper.await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_that_spoke_while_idle_is_not_reused() {
        let retired = Arc::new(AtomicUsize::new(0));
        let pool = pool(10, 10, 10);
        let c = open(&pool, &retired).await;
        let quiet = c.conn.quiet.clone();
        pool.put_back(hop("a"), c);
        quiet.store(false, Ordering::SeqCst);
        assert!(pool.take(&hop("a")).is_none());
        assert_eq!(pool.metrics.open.get(), 0);
    }
}
