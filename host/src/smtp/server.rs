//! The listener: accepts connections within the session limit, runs a
//! session per connection, and shuts down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::context::ServerContext;
use super::session::Session;

pub struct Server {
    ctx: Arc<ServerContext>,
    listeners: Vec<TcpListener>,
    max_sessions: usize,
    max_per_ip: usize,
    ipv6_prefix_length: u8,
    proxy: Arc<crate::proxy::ProxySettings>,
}

/// Where the server listens without `[server] listen`: loopback, the
/// submission-like port the demo and the README use.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 2525);
/// Sessions at once (`[server] max_sessions`); more get `421 4.3.2`.
pub const DEFAULT_MAX_SESSIONS: usize = 256;
/// Sessions at once from one client (`[server] max_sessions_per_ip`).
pub const DEFAULT_MAX_SESSIONS_PER_IP: usize = 50;
/// How long sessions in flight may finish at shutdown
/// (`[server] shutdown_grace_secs`).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The IPv6 prefix length clients are counted by for the per-IP session
/// limit (`[server] ipv6_prefix_length`). A /64 is what one subscriber, host
/// or virtual machine usually gets, and any address in it is theirs to use:
/// counted per address, one client could open `max_sessions_per_ip`
/// sessions from each of 2^64 addresses.
pub const DEFAULT_IPV6_PREFIX_LENGTH: u8 = 64;

/// The address a client's sessions are counted under: an IPv4 address (an
/// IPv4-mapped IPv6 one included) itself, an IPv6 address cut to its first
/// `ipv6_prefix_length` bits (128: the address itself).
pub fn client_key(ip: std::net::IpAddr, ipv6_prefix_length: u8) -> std::net::IpAddr {
    match crate::directory::canonical_ip(ip) {
        std::net::IpAddr::V6(v6) => {
            let host_bits = 128u32.saturating_sub(u32::from(ipv6_prefix_length));
            let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
            std::net::IpAddr::V6((u128::from(v6) & mask).into())
        }
        v4 => v4,
    }
}

/// Sessions per client (see [`client_key`]), released when a session ends.
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
    pub async fn listen(addrs: &[SocketAddr]) -> std::io::Result<Vec<TcpListener>> {
        let mut listeners = Vec::new();
        for a in addrs {
            let l = TcpListener::bind(a)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
            listeners.push(l);
        }
        Ok(listeners)
    }

    /// The server on `listeners` (from [`Server::listen`]).
    pub fn new(
        ctx: Arc<ServerContext>,
        listeners: Vec<TcpListener>,
        max_sessions: usize,
        max_per_ip: usize,
        ipv6_prefix_length: u8,
    ) -> Server {
        Server {
            ctx,
            listeners,
            max_sessions,
            max_per_ip,
            ipv6_prefix_length,
            proxy: Arc::default(),
        }
    }

    /// Takes each client's address from the PROXY header of a configured
    /// balancer (`[server] proxy_protocol`, see [`crate::proxy`]).
    pub fn with_proxy(mut self, proxy: crate::proxy::ProxySettings) -> Server {
        self.proxy = Arc::new(proxy);
        self
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
        let (max_per_ip, ipv6_prefix_length) = (self.max_per_ip, self.ipv6_prefix_length);
        let mut accepting = Vec::new();
        for listener in self.listeners {
            let (ctx, tracker, slots, per_ip, proxy) = (
                self.ctx.clone(),
                tracker.clone(),
                slots.clone(),
                per_ip.clone(),
                self.proxy.clone(),
            );
            accepting.push(tokio::spawn(async move {
                let mut failures = crate::throttle::Throttled::default();
                loop {
                    let (mut tcp, peer) = tokio::select! {
                        r = listener.accept() => match r {
                            Ok(x) => x,
                            Err(e) => {
                                // Out of file descriptors and the like: wait,
                                // don't spin, and don't flood the log.
                                failures.warn("accept failed", &e);
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
                    let (ctx, per_ip, proxy) = (ctx.clone(), per_ip.clone(), proxy.clone());
                    tracker.spawn(async move {
                        // Behind a balancer, the client is who its header
                        // says; a stranger's or a bad header ends here,
                        // before a banner.
                        let peer = match proxy.client(&mut tcp, peer).await {
                            Ok(client) => client,
                            Err(e) => {
                                ctx.metrics.proxy_refused.inc();
                                info!(peer = %peer, "PROXY protocol: {e}");
                                return;
                            }
                        };
                        let key = client_key(peer.ip(), ipv6_prefix_length);
                        let Some(ip_slot) = per_ip.acquire(key, max_per_ip) else {
                            info!(client = %peer, counted_as = %key, "per-IP session limit reached: 421");
                            let msg = format!("421 4.7.0 {} Too many connections from your address, try again later\r\n", ctx.hostname);
                            let _ = tcp.write_all(msg.as_bytes()).await;
                            return;
                        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_are_counted_by_prefix_and_ipv4_clients_by_address() {
        let key = |a: &str, len: u8| client_key(ip(a), len);
        assert_eq!(key("2001:db8:1:2::7", 64), ip("2001:db8:1:2::"));
        assert_eq!(
            key("2001:db8:1:2::7", 64),
            key("2001:db8:1:2:ffff:1:2:3", 64),
            "one /64, one client"
        );
        assert_ne!(key("2001:db8:1:2::7", 64), key("2001:db8:1:3::7", 64));
        assert_eq!(key("2001:db8:1:2::7", 48), key("2001:db8:1:3::7", 48));
        assert_ne!(key("2001:db8::7", 128), key("2001:db8::8", 128));
        assert_eq!(key("2001:db8::7", 128), ip("2001:db8::7"));
        assert_eq!(key("::1", 64), ip("::"));
        assert_eq!(
            key("203.0.113.7", 64),
            ip("203.0.113.7"),
            "IPv4: per address"
        );
        assert_ne!(key("203.0.113.7", 32), key("203.0.113.8", 32));
        assert_eq!(key("::ffff:203.0.113.7", 64), ip("203.0.113.7"));
        assert_eq!(
            key("2001:db8::7", 0),
            ip("::"),
            "no panic outside the range"
        );
        assert_eq!(key("2001:db8::7", 200), ip("2001:db8::7"));
    }

    #[test]
    fn one_prefix_shares_the_per_ip_limit() {
        let table = Arc::new(PerIp::default());
        let key = |a: &str| client_key(ip(a), DEFAULT_IPV6_PREFIX_LENGTH);
        let first = table.acquire(key("2001:db8:0:1::1"), 2).unwrap();
        let _second = table.acquire(key("2001:db8:0:1::2"), 2).unwrap();
        assert!(table.acquire(key("2001:db8:0:1::3"), 2).is_none());
        assert!(
            table.acquire(key("2001:db8:0:2::1"), 2).is_some(),
            "another /64"
        );
        drop(first);
        assert!(
            table.acquire(key("2001:db8:0:1::3"), 2).is_some(),
            "released"
        );
    }
}
