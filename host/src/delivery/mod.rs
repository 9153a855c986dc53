//! Onward delivery: the queue that takes spooled messages to the next hop,
//! retries temporary failures with exponential backoff, and bounces
//! permanent failures (and messages older than the maximum queue age) with a
//! delivery status notification.
//!
//! The spool stays the source of truth: an envelope is rewritten after every
//! attempt, and removed only once every recipient is delivered or bounced, so
//! a crash at any point re-delivers at worst, never loses.

pub mod attempt;
mod data;
mod directory;
pub mod dsn;
pub mod mx;
mod outcome;
pub mod pool;
pub mod queue;
pub mod smtp;
pub mod transaction;
pub mod wire;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `[delivery]`: where accepted mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHop {
    Directory(PathBuf),
    Smarthost { host: String, port: u16 },
    Mx,
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NextHop::Directory(p) => write!(f, "into directory {}", p.display()),
            NextHop::Smarthost { host, port } => write!(f, "to smarthost {host}:{port}"),
            NextHop::Mx => write!(f, "by DNS MX"),
        }
    }
}

/// `[delivery]`, validated by the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    pub next_hop: NextHop,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Vec<PathBuf>,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_queue_age: Duration,
    pub concurrency: usize,
    pub timeout: Duration,
    /// Recursive resolvers for MX delivery (empty: the system's).
    pub dns_servers: Vec<SocketAddr>,
    /// The port MX hosts are contacted on (25; another for a test network).
    pub mx_port: u16,
    /// DSNs per sender domain and hour for mail whose sender no connector
    /// authenticated (possibly forged: backscatter); 0 sends none.
    pub dsn_rate_per_domain_per_hour: u32,
    /// Whether next hops must offer STARTTLS, and be verified.
    pub tls: TlsPolicy,
    /// The whole of one delivery attempt.
    pub attempt_timeout: Duration,
    /// MX addresses tried per domain and attempt.
    pub mx_address_limit: usize,
    /// MX hosts per domain and attempt that took the connection and stalled.
    pub mx_session_limit: usize,
    /// Connections to next hops: how many, and which idle ones are kept.
    pub connections: pool::PoolLimits,
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
    pub next_hop: NextHop,
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

/// Why delivery could not be set up from its settings.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("delivery TLS: {0}")]
    Tls(#[from] crate::tls::server::TlsConfigError),
    #[error("delivery by MX: {0}")]
    Resolver(String),
}

impl DeliveryConfig {
    /// Delivery as `settings` describe it, from this relay (`hostname` in
    /// EHLO), reporting to `metrics`: the client TLS configuration, the
    /// resolver for MX delivery and the connection pool, each built once
    /// and shared by every attempt.
    pub fn new(
        settings: &DeliverySettings,
        hostname: &str,
        shutdown_grace: Duration,
        metrics: &Arc<crate::metrics::Metrics>,
    ) -> Result<DeliveryConfig, SetupError> {
        let d = settings;
        let client_cert = match (&d.tls_cert, &d.tls_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        // The CA files serve `tls = "verify"` only (the configuration checks).
        let tls = crate::tls::client::client_config(&d.tls_ca, client_cert)?;
        let resolver = match d.next_hop {
            NextHop::Mx => Some(Arc::new(
                mx::resolver(&d.dns_servers).map_err(SetupError::Resolver)?,
            )),
            _ => None,
        };
        let connections = smtp::Connections::new(
            d.connections,
            pool::PoolMetrics {
                open: metrics.connections_open.clone(),
                idle: metrics.connections_idle.clone(),
                opened: metrics.connections_opened.clone(),
                reused: metrics.connections_reused.clone(),
                evicted: metrics.connections_evicted.clone(),
            },
        );
        Ok(DeliveryConfig {
            next_hop: d.next_hop.clone(),
            hostname: hostname.to_string(),
            retry_initial: d.retry_initial,
            retry_max: d.retry_max,
            max_queue_age: d.max_queue_age,
            concurrency: d.concurrency,
            timeout: d.timeout,
            attempt_timeout: d.attempt_timeout,
            mx_address_limit: d.mx_address_limit,
            mx_session_limit: d.mx_session_limit,
            tls_policy: d.tls,
            shutdown_grace,
            tls,
            mx_port: d.mx_port,
            resolver,
            connections: Arc::new(connections),
            metrics: Some(metrics.clone()),
            dsn_limiter: Arc::new(dsn::DsnLimiter::new(d.dsn_rate_per_domain_per_hour)),
        })
    }
}

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(String),
    Temporary(String),
    Permanent(String),
}
