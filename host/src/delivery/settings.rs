//! `[delivery]` as the configuration validated it: where mail goes, how
//! it is retried, and the bounds on each attempt, with their defaults.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::dsn;
use super::pool::PoolLimits;

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
    pub connections: PoolLimits,
    /// After this long in the queue, the sender of a message still being
    /// retried is told so, once (zero: never).
    pub delay_warning: Duration,
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
/// When a sender hears that its message is delayed
/// (`delay_warning_secs`): four hours, as Postfix's `delay_warning_time`
/// where it is set.
pub const DEFAULT_DELAY_WARNING: Duration = Duration::from_secs(4 * 3600);
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

impl Default for DeliverySettings {
    /// Delivery by MX with every default: the configuration's starting point.
    fn default() -> DeliverySettings {
        DeliverySettings {
            next_hop: NextHop::Mx,
            tls_cert: None,
            tls_key: None,
            tls_ca: Vec::new(),
            retry_initial: DEFAULT_RETRY_INITIAL,
            retry_max: DEFAULT_RETRY_MAX,
            max_queue_age: DEFAULT_MAX_QUEUE_AGE,
            concurrency: DEFAULT_CONCURRENCY,
            timeout: DEFAULT_STEP_TIMEOUT,
            dns_servers: Vec::new(),
            mx_port: DEFAULT_MX_PORT,
            dsn_rate_per_domain_per_hour: dsn::DEFAULT_RATE_PER_DOMAIN_PER_HOUR,
            tls: TlsPolicy::default(),
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            mx_address_limit: DEFAULT_MX_ADDRESS_LIMIT,
            mx_session_limit: DEFAULT_MX_SESSION_LIMIT,
            connections: PoolLimits::default(),
            delay_warning: DEFAULT_DELAY_WARNING,
        }
    }
}
