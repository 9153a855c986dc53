//! The listener: accepts connections within the session limit, runs a
//! session per connection, and shuts down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::session::{Limits, Session};
use crate::delivery::QueueHandle;
use crate::metrics::Metrics;
pub use crate::reload::Evaluation;
use crate::spool::Spool;

/// Everything sessions share.
pub struct ServerContext {
    pub hostname: String,
    pub limits: Limits,
    pub evaluation: ArcSwap<Evaluation>,
    pub tls: TlsAcceptor,
    pub metrics: Arc<Metrics>,
    pub spool: Arc<Spool>,
    pub queue: QueueHandle,
    pub shutdown: CancellationToken,
}

pub struct Server {
    ctx: Arc<ServerContext>,
    listeners: Vec<TcpListener>,
    max_sessions: usize,
    max_per_ip: usize,
}

/// Sessions per client IP, released when a session ends.
#[derive(Default)]
struct PerIp {
    counts: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

struct PerIpSlot {
    table: Arc<PerIp>,
    ip: std::net::IpAddr,
}

impl PerIp {
    fn acquire(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<PerIpSlot> {
        let mut counts = self.counts.lock().ok()?;
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PerIpSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.table.counts.lock()
            && let Some(n) = counts.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl Server {
    pub async fn bind(
        ctx: Arc<ServerContext>,
        addrs: &[SocketAddr],
        max_sessions: usize,
        max_per_ip: usize,
    ) -> std::io::Result<Server> {
        let mut listeners = Vec::new();
        for a in addrs {
            let l = TcpListener::bind(a)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
            listeners.push(l);
        }
        Ok(Server {
            ctx,
            listeners,
            max_sessions,
            max_per_ip,
        })
    }

    /// The bound addresses (with the real port when 0 was asked for).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until shutdown, then lets sessions finish for up to `grace`.
    pub async fn run(self, grace: Duration) {
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.max_sessions));
        let per_ip = Arc::new(PerIp::default());
        let max_per_ip = self.max_per_ip;
        let mut accepting = Vec::new();
        for listener in self.listeners {
            let (ctx, tracker, slots, per_ip) = (
                self.ctx.clone(),
                tracker.clone(),
                slots.clone(),
                per_ip.clone(),
            );
            accepting.push(tokio::spawn(async move {
                loop {
                    let (mut tcp, peer) = tokio::select! {
                        r = listener.accept() => match r {
                            Ok(x) => x,
                            Err(e) => {
                                // Out of file descriptors and the like: wait, don't spin.
                                warn!(error = %e, "accept failed");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        },
                        _ = ctx.shutdown.cancelled() => return,
                    };
                    let _ = tcp.set_nodelay(true);
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        info!(client = %peer, "session limit reached: 421");
                        let msg = format!(
                            "421 4.3.2 {} Too many connections, try again later\r\n",
                            ctx.hostname
                        );
                        let _ = tcp.write_all(msg.as_bytes()).await;
                        continue;
                    };
                    let ip = crate::directory::canonical_ip(peer.ip());
                    let Some(ip_slot) = per_ip.acquire(ip, max_per_ip) else {
                        info!(client = %peer, "per-IP session limit reached: 421");
                        let msg = format!("421 4.7.0 {} Too many connections from your address, try again later\r\n", ctx.hostname);
                        let _ = tcp.write_all(msg.as_bytes()).await;
                        continue;
                    };
                    let ctx = ctx.clone();
                    tracker.spawn(async move {
                        let _ip_slot = ip_slot;
                        ctx.metrics.sessions.inc();
                        ctx.metrics.sessions_active.inc();
                        let metrics = ctx.metrics.clone();
                        Session::new(ctx, tcp, peer).run().await;
                        metrics.sessions_active.dec();
                        drop(permit);
                    });
                }
            }));
        }
        self.ctx.shutdown.cancelled().await;
        for a in accepting {
            let _ = a.await;
        }
        tracker.close();
        info!(
            sessions = tracker.len(),
            "shutting down: waiting for sessions in flight"
        );
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(
                sessions = tracker.len(),
                "shutdown grace period over: closing remaining sessions"
            );
        }
    }
}
