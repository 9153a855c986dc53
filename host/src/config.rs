//! The relay's configuration file (TOML), its validation and its warnings.
//!
//! Every error names the file, the line and column, and the key, because an
//! operator editing a directory of thousands of tenants needs to find the one
//! bad entry without guessing. Validation is strict: unknown keys, malformed
//! addresses and ambiguous ownership are errors, not silent defaults.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use attrelay_policy::certname;
pub use attrelay_policy::model::{Connector, ConnectorKind};
use serde::Deserialize;
use toml::Spanned;

use crate::admin::{AdminLimits, AdminSettings, AdminToken};
use crate::directory::{net_text, parse_net};
use crate::policy::EngineLimits;
use crate::policyd::{AcceptAction, PolicydListen, PolicydSettings};

/// A configuration error with its location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, 0 when the error has no position (an unreadable file).
    pub line: usize,
    pub column: usize,
    /// The key in dotted form (`tenant[0].connector[1].sender_ip_addresses[2]`).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.key,
                self.message
            )
        }
    }
}

/// A configuration warning (the configuration is usable, but probably not what
/// the operator meant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.key, self.message)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    spool: RawSpool,
    admin: Option<RawAdmin>,
    delivery: Option<RawDelivery>,
    policyd: Option<Spanned<RawPolicyd>>,
    #[serde(default, rename = "tenant")]
    tenants: Vec<RawTenant>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    token_file: Option<Spanned<PathBuf>>,
    #[serde(default = "yes")]
    enabled: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicyd {
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    accept_action: Option<Spanned<String>>,
    max_connections: Option<Spanned<u64>>,
    idle_timeout_secs: Option<Spanned<u64>>,
    request_timeout_secs: Option<Spanned<u64>>,
    socket_mode: Option<Spanned<String>>,
    socket_group: Option<Spanned<String>>,
    max_connections_per_client: Option<Spanned<u64>>,
    #[serde(default = "yes")]
    enabled: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSpool {
    path: Option<Spanned<PathBuf>>,
    min_free_bytes: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    next_hop: Option<Spanned<String>>,
    directory: Option<Spanned<PathBuf>>,
    tls_cert: Option<Spanned<PathBuf>>,
    tls_key: Option<Spanned<PathBuf>>,
    #[serde(default)]
    tls_ca: Vec<Spanned<PathBuf>>,
    retry_initial_secs: Option<Spanned<u64>>,
    retry_max_secs: Option<Spanned<u64>>,
    max_queue_age_secs: Option<Spanned<u64>>,
    concurrency: Option<Spanned<u32>>,
    timeout_secs: Option<Spanned<u64>>,
    #[serde(default)]
    dns_servers: Vec<Spanned<String>>,
    mx_port: Option<Spanned<u64>>,
    dsn_rate_per_domain_per_hour: Option<Spanned<u64>>,
    tls: Option<Spanned<String>>,
    attempt_timeout_secs: Option<Spanned<u64>>,
    mx_address_limit: Option<Spanned<u64>>,
    mx_session_limit: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    hostname: Option<Spanned<String>>,
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    tls_cert: Option<Spanned<PathBuf>>,
    tls_key: Option<Spanned<PathBuf>>,
    #[serde(default)]
    client_ca: Vec<Spanned<PathBuf>>,
    max_message_size: Option<Spanned<u64>>,
    max_recipients: Option<Spanned<u32>>,
    max_sessions: Option<Spanned<u32>>,
    idle_timeout_secs: Option<Spanned<u64>>,
    max_errors: Option<Spanned<u32>>,
    shutdown_grace_secs: Option<Spanned<u64>>,
    max_sessions_per_ip: Option<Spanned<u32>>,
    max_session_secs: Option<Spanned<u64>>,
    pregreet_delay_ms: Option<Spanned<u64>>,
    ipv6_prefix_length: Option<Spanned<u64>>,
    bare_line_endings: Option<Spanned<String>>,
    postmaster: Option<Spanned<String>>,
    soft_error_limit: Option<Spanned<u32>>,
    error_delay_ms: Option<Spanned<u64>>,
    hopcount_limit: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    component: Option<Spanned<PathBuf>>,
    #[serde(default)]
    settings: BTreeMap<String, Spanned<toml::Value>>,
    timeout_ms: Option<Spanned<u64>>,
    memory_limit_mib: Option<Spanned<u64>>,
    max_instances: Option<Spanned<u32>>,
    cache: Option<Spanned<PathBuf>>,
    shadow: Option<Spanned<PathBuf>>,
    decision_log: Option<Spanned<PathBuf>>,
    decision_log_max_mib: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: Spanned<String>,
    #[serde(default)]
    accepted_domains: Vec<Spanned<String>>,
    #[serde(default, rename = "connector")]
    connectors: Vec<RawConnector>,
    policy: Option<Spanned<PathBuf>>,
    #[serde(default)]
    policy_settings: BTreeMap<String, Spanned<toml::Value>>,
    policy_timeout_ms: Option<Spanned<u64>>,
    policy_memory_limit_mib: Option<Spanned<u64>>,
    recipients: Option<Spanned<Vec<Spanned<String>>>>,
    recipients_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnector {
    name: Spanned<String>,
    #[serde(rename = "type")]
    kind: ConnectorKind,
    #[serde(default)]
    sender_ip_addresses: Vec<Spanned<String>>,
    tls_sender_certificate_name: Option<Spanned<String>>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    sender_domains: Vec<Spanned<String>>,
    #[serde(default)]
    recipient_domains: Vec<Spanned<String>>,
    #[serde(default)]
    restrict_domains_to_ip_addresses: bool,
    #[serde(default)]
    restrict_domains_to_certificate: bool,
}

fn yes() -> bool {
    true
}

/// `[delivery] tls`: `opportunistic`, `required` or `verify`; by default
/// `verify` when `tls_ca` is given (the operator named whom to trust),
/// `opportunistic` otherwise. `tls_ca` serves `verify` only, so giving it
/// with another policy is an error rather than a silent no-op.
fn delivery_tls(
    src: &Source<'_>,
    value: &Option<Spanned<String>>,
    has_ca: bool,
) -> Result<crate::delivery::TlsPolicy, ConfigError> {
    use crate::delivery::TlsPolicy;
    let Some(v) = value else {
        return Ok(if has_ca {
            TlsPolicy::Verify
        } else {
            TlsPolicy::Opportunistic
        });
    };
    let policy = match v.get_ref().as_str() {
        "opportunistic" => TlsPolicy::Opportunistic,
        "required" => TlsPolicy::Required,
        "verify" => TlsPolicy::Verify,
        other => {
            return Err(src.error(
                v.span(),
                "delivery.tls",
                format!("'{other}' is not \"opportunistic\", \"required\" or \"verify\""),
            ));
        }
    };
    match (policy, has_ca) {
        (TlsPolicy::Verify, false) => Err(src.error(
            v.span(),
            "delivery.tls",
            "\"verify\" needs tls_ca: the CA certificates next hops are verified against",
        )),
        (TlsPolicy::Opportunistic | TlsPolicy::Required, true) => Err(src.error(
            v.span(),
            "delivery.tls",
            "tls_ca is used only with tls = \"verify\"; remove one of them",
        )),
        _ => Ok(policy),
    }
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub hostname: String,
    pub listen: Vec<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Trust anchors for client certificates, resolved against the config's directory.
    pub client_ca: Vec<PathBuf>,
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// Concurrent SMTP sessions; more get `421 4.3.2`.
    pub max_sessions: usize,
    pub idle_timeout: Duration,
    pub max_errors: u32,
    /// How long sessions in flight may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Concurrent sessions from one client IP; more get `421 4.7.0`.
    pub max_sessions_per_ip: usize,
    /// Longest a session may last, whatever the client does.
    pub max_session: Duration,
    /// Wait this long before the greeting; a client that talks first is
    /// refused with `554` (pre-greeting pipelining, a spambot's habit).
    pub pregreet_delay: Duration,
    /// IPv6 clients are counted for `max_sessions_per_ip` by this prefix
    /// (64 by default; 128 counts each address).
    pub ipv6_prefix_length: u8,
    pub bare_line_endings: crate::smtp::data::BareLineEndings,
    /// The mailbox `RCPT TO:<postmaster>` is delivered to (canonical).
    pub postmaster: String,
    /// Errors after which replies to further errors are delayed.
    pub soft_error_limit: u32,
    /// The delay step past the soft error limit.
    pub error_delay: Duration,
    /// Most `Received` fields a message may carry.
    pub hopcount_limit: usize,
}

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
    pub tls: crate::delivery::TlsPolicy,
    /// The whole of one delivery attempt.
    pub attempt_timeout: Duration,
    /// MX addresses tried per domain and attempt.
    pub mx_address_limit: usize,
    /// MX hosts per domain and attempt that took the connection and stalled.
    pub mx_session_limit: usize,
}

/// `[policy]`
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// `None`: the embedded default policy.
    pub component: Option<PathBuf>,
    /// Settings handed to the policy's `configure`, as strings.
    pub settings: Vec<(String, String)>,
    /// The time budget of one policy call.
    pub timeout: Duration,
    /// The memory budget of one policy instance.
    pub memory_limit: usize,
    /// The least number of policy instances the relay's pool holds; `serve`
    /// raises it to what all sessions can hold at once
    /// ([`crate::relay::policy_pool_size`]), so it cannot undersize the pool.
    pub max_instances: u32,
    /// Line of each setting key, to point at it when the policy refuses it.
    pub setting_lines: HashMap<String, usize>,
    /// Where compiled components are cached.
    pub cache: Option<PathBuf>,
    /// A candidate evaluated beside the active policy, never deciding.
    pub shadow: Option<PathBuf>,
    /// Append every decision's inputs and verdict here (JSON Lines).
    pub decision_log: Option<PathBuf>,
    /// Rotate the decision log at this size (0: never; see
    /// [`crate::decisions::DecisionLog`]).
    pub decision_log_max_bytes: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        let limits = EngineLimits::default();
        PolicyConfig {
            component: None,
            settings: Vec::new(),
            timeout: limits.call_timeout,
            memory_limit: limits.memory_limit,
            max_instances: limits.max_instances,
            setting_lines: HashMap::new(),
            cache: None,
            shadow: None,
            decision_log: None,
            decision_log_max_bytes: crate::decisions::DEFAULT_MAX_MIB * 1024 * 1024,
        }
    }
}

/// The engine's budgets as `[policy]` sets them.
impl From<&PolicyConfig> for EngineLimits {
    fn from(p: &PolicyConfig) -> Self {
        EngineLimits {
            call_timeout: p.timeout,
            memory_limit: p.memory_limit,
            max_instances: p.max_instances,
        }
    }
}

/// The admin listener's default port, on loopback.
pub const DEFAULT_ADMIN_PORT: u16 = 9725;

/// A tenant and its connectors.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    /// Normalised (lower case, no trailing dot).
    pub accepted_domains: Vec<String>,
    pub connectors: Vec<Connector>,
    pub line: usize,
    /// The tenant's own policy, run after the base attribution.
    pub policy: Option<TenantPolicyConfig>,
    /// The tenant's recipients (`recipients` and `recipients_file`
    /// together), canonical. When set, a recipient in any of its accepted
    /// domains that is not listed is refused at `RCPT TO` with
    /// `550 5.1.10` (directory-based edge blocking); `None`: no list, the
    /// policy alone decides.
    pub recipients: Option<Vec<crate::address::Mailbox>>,
    /// The file part of that list came from (resolved), for reload triggers.
    pub recipients_file: Option<PathBuf>,
}

/// `[[tenant]] policy = ...` and its settings and budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPolicyConfig {
    pub component: PathBuf,
    pub settings: Vec<(String, String)>,
    pub timeout: Duration,
    pub memory_limit: usize,
}

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (`<embedded>` for the demo default).
    pub source: PathBuf,
    pub server: ServerConfig,
    pub policy: PolicyConfig,
    /// `[spool] path`.
    pub spool: PathBuf,
    /// `[spool] min_free_bytes`: free space new mail must leave on the
    /// spool's filesystem (`452 4.3.1` otherwise); 0 turns the check off.
    pub spool_min_free_bytes: u64,
    pub delivery: DeliverySettings,
    /// The admin endpoint (metrics, status, queue, reload), if enabled: its
    /// listener, token and limits. Restart-only (see `reload::restart_required`).
    pub admin: Option<AdminSettings>,
    /// The Postfix policy-delegation service (`[policyd]`), if configured.
    pub policyd: Option<PolicydSettings>,
    pub tenants: Vec<Tenant>,
    pub warnings: Vec<ConfigWarning>,
}

/// Line/column lookup and error construction for one source text.
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
    /// The byte offset where each line starts, built once: a position is a
    /// binary search, not a scan of the text before it (which made loading
    /// N tenants quadratic: 10 000 took 31 s).
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    fn new(file: &'a Path, text: &'a str) -> Source<'a> {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Source {
            file,
            text,
            line_starts,
        }
    }

    /// A number that must lie in `lo..=hi`, or `default` when absent.
    fn range(
        &self,
        v: &Option<Spanned<u64>>,
        key: &str,
        lo: u64,
        hi: u64,
        default: u64,
    ) -> Result<u64, ConfigError> {
        match v {
            Some(x) if !(lo..=hi).contains(x.get_ref()) => {
                Err(self.error(x.span(), key, format!("must be between {lo} and {hi}")))
            }
            Some(x) => Ok(*x.get_ref()),
            None => Ok(default),
        }
    }

    /// The 1-based line and column of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let column = offset - self.line_starts[line - 1] + 1;
        (line, column)
    }

    fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.position(span.start);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.position(span.start).0
    }

    /// The key written on the line of `offset` (`key = value`), for errors
    /// that the TOML parser reports by position only.
    fn key_at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let start = self.text[..offset].rfind('\n').map(|n| n + 1).unwrap_or(0);
        let end = self.text[offset..]
            .find('\n')
            .map(|n| offset + n)
            .unwrap_or(self.text.len());
        let line = self.text[start..end].trim();
        let key = match line.split_once('=') {
            Some((k, _)) => k.trim(),
            None => return line.to_string(),
        };
        // Qualify it with the table it is in: `tenant.connector.type`.
        let table = self.text[..start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
        match table {
            Some(t) => format!("{t}.{key}"),
            None => key.to_string(),
        }
    }
}

impl Tenant {
    /// What the directory indexes of this tenant.
    pub fn record(&self) -> crate::directory::TenantRecord<'_> {
        crate::directory::TenantRecord {
            id: &self.id,
            accepted_domains: &self.accepted_domains,
            connectors: &self.connectors,
            recipients: self.recipients.as_deref(),
        }
    }
}

impl Config {
    /// The tenant directory of this configuration, indexed.
    pub fn directory(&self) -> crate::directory::Directory {
        crate::directory::Directory::from_tenants(self.tenants.iter().map(Tenant::record))
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the configuration: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Validates a configuration given as text; `path` names it in errors and
    /// anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let src = Source::new(path, text);
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().to_string();
            src.error(span.clone(), src.key_at(span.start), message)
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let mut warnings = Vec::new();

        // [server]
        let s = raw.server;
        let hostname_span = s.hostname.as_ref().map(|h| h.span()).unwrap_or(0..0);
        let hostname = match s.hostname {
            Some(h) => {
                let span = h.span();
                certname::validate(h.get_ref(), false).map_err(|e| {
                    src.error(span, "server.hostname", format!("'{}': {e}", h.get_ref()))
                })?
            }
            None => "relay.attrelay.invalid".to_string(),
        };
        let mut listen = Vec::new();
        for (i, l) in s.listen.iter().enumerate() {
            listen.push(l.get_ref().parse::<SocketAddr>().map_err(|_| {
                src.error(
                    l.span(),
                    format!("server.listen[{i}]"),
                    format!(
                        "'{}' is not an address:port such as 127.0.0.1:2525 or [::1]:2525",
                        l.get_ref()
                    ),
                )
            })?);
        }
        if listen.is_empty() {
            listen.push(SocketAddr::from(([127, 0, 0, 1], 2525)));
        }
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            let span = s
                .tls_cert
                .as_ref()
                .or(s.tls_key.as_ref())
                .map(|x| x.span())
                .unwrap_or(0..0);
            return Err(src.error(
                span,
                "server.tls_cert",
                "tls_cert and tls_key go together: give both or neither",
            ));
        }
        let range = |v: &Option<Spanned<u64>>, key: &str, lo: u64, hi: u64, default: u64| {
            src.range(v, key, lo, hi, default)
        };
        let widen = |v: &Option<Spanned<u32>>| {
            v.as_ref()
                .map(|x| Spanned::new(x.span(), u64::from(*x.get_ref())))
        };
        let bare_line_endings = match &s.bare_line_endings {
            None => crate::smtp::data::BareLineEndings::Reject,
            Some(v) => match v.get_ref().as_str() {
                "reject" => crate::smtp::data::BareLineEndings::Reject,
                "normalize" => crate::smtp::data::BareLineEndings::Normalize,
                other => {
                    return Err(src.error(
                        v.span(),
                        "server.bare_line_endings",
                        format!("'{other}' is neither 'reject' nor 'normalize'"),
                    ));
                }
            },
        };
        let postmaster = match &s.postmaster {
            Some(p) => crate::address::Mailbox::parse(p.get_ref().trim(), false)
                .map_err(|e| {
                    src.error(
                        p.span(),
                        "server.postmaster",
                        format!("'{}' is not a mailbox: {e}", p.get_ref()),
                    )
                })?
                .to_string(),
            // The default must be a mailbox too: a host name certname
            // accepts (an underscore) may not be a mail domain.
            None => crate::address::Mailbox::parse(&format!("postmaster@{hostname}"), false)
                .map_err(|e| {
                    src.error(
                        hostname_span.clone(),
                        "server.hostname",
                        format!(
                            "postmaster@{hostname} is not a mailbox ({e}): set server.postmaster"
                        ),
                    )
                })?
                .to_string(),
        };
        let server_defaults = crate::smtp::Limits::default();
        let server = ServerConfig {
            postmaster,
            soft_error_limit: range(
                &widen(&s.soft_error_limit),
                "server.soft_error_limit",
                0,
                1000,
                u64::from(server_defaults.soft_errors),
            )? as u32,
            error_delay: Duration::from_millis(range(
                &s.error_delay_ms,
                "server.error_delay_ms",
                0,
                60_000,
                server_defaults.error_delay.as_millis() as u64,
            )?),
            hopcount_limit: range(
                &widen(&s.hopcount_limit),
                "server.hopcount_limit",
                1,
                1000,
                server_defaults.max_hops as u64,
            )? as usize,
            hostname,
            listen,
            tls_cert: s.tls_cert.map(|p| resolve(p.get_ref())),
            tls_key: s.tls_key.map(|p| resolve(p.get_ref())),
            client_ca: s.client_ca.iter().map(|p| resolve(p.get_ref())).collect(),
            max_message_size: range(
                &s.max_message_size,
                "server.max_message_size",
                1024,
                1 << 31,
                25 << 20,
            )? as usize,
            max_recipients: range(
                &widen(&s.max_recipients),
                "server.max_recipients",
                1,
                100_000,
                100,
            )? as usize,
            max_sessions: range(
                &widen(&s.max_sessions),
                "server.max_sessions",
                1,
                100_000,
                256,
            )? as usize,
            idle_timeout: Duration::from_secs(range(
                &s.idle_timeout_secs,
                "server.idle_timeout_secs",
                1,
                3600,
                300,
            )?),
            max_errors: range(&widen(&s.max_errors), "server.max_errors", 1, 1000, 10)? as u32,
            shutdown_grace: Duration::from_secs(range(
                &s.shutdown_grace_secs,
                "server.shutdown_grace_secs",
                0,
                3600,
                30,
            )?),
            max_sessions_per_ip: range(
                &widen(&s.max_sessions_per_ip),
                "server.max_sessions_per_ip",
                1,
                100_000,
                50,
            )? as usize,
            max_session: Duration::from_secs(range(
                &s.max_session_secs,
                "server.max_session_secs",
                1,
                86_400,
                3600,
            )?),
            pregreet_delay: Duration::from_millis(range(
                &s.pregreet_delay_ms,
                "server.pregreet_delay_ms",
                0,
                30_000,
                0,
            )?),
            ipv6_prefix_length: range(
                &s.ipv6_prefix_length,
                "server.ipv6_prefix_length",
                32,
                128,
                u64::from(crate::smtp::server::DEFAULT_IPV6_PREFIX_LENGTH),
            )? as u8,
            bare_line_endings,
        };

        // [spool] and [delivery]
        let spool_min_free_bytes = range(
            &raw.spool.min_free_bytes,
            "spool.min_free_bytes",
            0,
            1 << 50,
            crate::spool::DEFAULT_MIN_FREE_BYTES,
        )?;
        let spool = raw
            .spool
            .path
            .map(|p| resolve(p.get_ref()))
            .unwrap_or_else(|| resolve(Path::new("attrelay-data/spool")));
        let d = raw.delivery.unwrap_or_default();
        let next_hop = match (&d.next_hop, &d.directory) {
            (Some(n), Some(_)) => {
                return Err(src.error(
                    n.span(),
                    "delivery.next_hop",
                    "give next_hop or directory, not both",
                ));
            }
            (Some(n), None) if n.get_ref().trim() == "mx" => NextHop::Mx,
            (Some(n), None) => {
                let text = n.get_ref().trim();
                let parsed = text.rsplit_once(':').and_then(|(h, p)| {
                    let h = h.trim_start_matches('[').trim_end_matches(']');
                    Some((h.to_string(), p.parse::<u16>().ok()?))
                        .filter(|(h, p)| !h.is_empty() && *p > 0)
                });
                match parsed {
                    Some((host, port)) => NextHop::Smarthost { host, port },
                    None => {
                        return Err(src.error(
                            n.span(),
                            "delivery.next_hop",
                            format!("'{text}' is neither \"mx\" nor host:port (such as smtp.example.net:25)"),
                        ));
                    }
                }
            }
            (None, Some(dir)) => NextHop::Directory(resolve(dir.get_ref())),
            (None, None) => NextHop::Directory(resolve(Path::new("attrelay-data/outbox"))),
        };
        if d.tls_cert.is_some() != d.tls_key.is_some() {
            let span = d
                .tls_cert
                .as_ref()
                .or(d.tls_key.as_ref())
                .map(|x| x.span())
                .unwrap_or(0..0);
            return Err(src.error(
                span,
                "delivery.tls_cert",
                "tls_cert and tls_key go together: give both or neither",
            ));
        }
        let delivery = DeliverySettings {
            next_hop,
            tls_cert: d.tls_cert.map(|p| resolve(p.get_ref())),
            tls_key: d.tls_key.map(|p| resolve(p.get_ref())),
            tls_ca: d.tls_ca.iter().map(|p| resolve(p.get_ref())).collect(),
            retry_initial: Duration::from_secs(range(
                &d.retry_initial_secs,
                "delivery.retry_initial_secs",
                1,
                86_400,
                60,
            )?),
            retry_max: Duration::from_secs(range(
                &d.retry_max_secs,
                "delivery.retry_max_secs",
                1,
                604_800,
                3600,
            )?),
            max_queue_age: Duration::from_secs(range(
                &d.max_queue_age_secs,
                "delivery.max_queue_age_secs",
                1,
                2_592_000,
                432_000,
            )?),
            concurrency: range(&widen(&d.concurrency), "delivery.concurrency", 1, 1000, 8)?
                as usize,
            timeout: Duration::from_secs(range(
                &d.timeout_secs,
                "delivery.timeout_secs",
                1,
                3600,
                60,
            )?),
            dns_servers: d
                .dns_servers
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let text = a.get_ref();
                    text.parse::<SocketAddr>()
                        .or_else(|_| {
                            text.parse::<std::net::IpAddr>()
                                .map(|ip| SocketAddr::new(ip, 53))
                        })
                        .map_err(|_| {
                            src.error(
                                a.span(),
                                format!("delivery.dns_servers[{i}]"),
                                format!("'{text}' is not an IP address (port 53) or address:port"),
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
            mx_port: range(&d.mx_port, "delivery.mx_port", 1, 65_535, 25)? as u16,
            dsn_rate_per_domain_per_hour: range(
                &d.dsn_rate_per_domain_per_hour,
                "delivery.dsn_rate_per_domain_per_hour",
                0,
                1_000_000,
                u64::from(crate::delivery::dsn::DEFAULT_RATE_PER_DOMAIN_PER_HOUR),
            )? as u32,
            tls: delivery_tls(&src, &d.tls, !d.tls_ca.is_empty())?,
            attempt_timeout: Duration::from_secs(range(
                &d.attempt_timeout_secs,
                "delivery.attempt_timeout_secs",
                1,
                86_400,
                crate::delivery::DEFAULT_ATTEMPT_TIMEOUT.as_secs(),
            )?),
            mx_address_limit: range(
                &d.mx_address_limit,
                "delivery.mx_address_limit",
                1,
                100,
                crate::delivery::DEFAULT_MX_ADDRESS_LIMIT as u64,
            )? as usize,
            mx_session_limit: range(
                &d.mx_session_limit,
                "delivery.mx_session_limit",
                1,
                100,
                crate::delivery::DEFAULT_MX_SESSION_LIMIT as u64,
            )? as usize,
        };

        // [policy]
        let p = raw.policy;
        let mut policy = PolicyConfig {
            component: p.component.map(|c| resolve(c.get_ref())),
            ..PolicyConfig::default()
        };
        for (key, value) in &p.settings {
            let text = setting_text(&src, key, value, "policy.settings")?;
            policy
                .setting_lines
                .insert(key.clone(), src.line(&value.span()));
            policy.settings.push((key.clone(), text));
        }
        policy.cache = p.cache.map(|c| resolve(c.get_ref()));
        policy.shadow = p.shadow.map(|c| resolve(c.get_ref()));
        policy.decision_log = p.decision_log.map(|c| resolve(c.get_ref()));
        policy.decision_log_max_bytes = src.range(
            &p.decision_log_max_mib,
            "policy.decision_log_max_mib",
            0,
            1 << 20,
            crate::decisions::DEFAULT_MAX_MIB,
        )? * 1024
            * 1024;
        if let Some(t) = p.timeout_ms {
            if !(1..=60_000).contains(t.get_ref()) {
                return Err(src.error(
                    t.span(),
                    "policy.timeout_ms",
                    "must be between 1 and 60000 milliseconds",
                ));
            }
            policy.timeout = Duration::from_millis(*t.get_ref());
        }
        if let Some(m) = p.memory_limit_mib {
            if !(1..=4096).contains(m.get_ref()) {
                return Err(src.error(
                    m.span(),
                    "policy.memory_limit_mib",
                    "must be between 1 and 4096 MiB",
                ));
            }
            policy.memory_limit = (*m.get_ref() * 1024 * 1024) as usize;
        }
        if let Some(n) = p.max_instances {
            if !(1..=100_000).contains(n.get_ref()) {
                return Err(src.error(
                    n.span(),
                    "policy.max_instances",
                    "must be between 1 and 100000",
                ));
            }
            policy.max_instances = *n.get_ref();
        }

        // [[tenant]]
        let mut tenants: Vec<Tenant> = Vec::new();
        // Each tenant's connectors' lines, for the warnings below.
        let mut connector_lines_of: Vec<Vec<usize>> = Vec::new();
        let mut tenant_ids: HashMap<String, usize> = HashMap::new();
        let mut domain_owner: HashMap<String, (String, usize)> = HashMap::new();
        for (ti, t) in raw.tenants.iter().enumerate() {
            let key = format!("tenant[{ti}]");
            let id = t.id.get_ref().trim().to_string();
            let id_ok = !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !id_ok {
                return Err(src.error(
                    t.id.span(),
                    format!("{key}.id"),
                    format!(
                        "'{id}' is not a tenant id (1 to 128 letters, digits, '-', '_' or '.')"
                    ),
                ));
            }
            if let Some(line) = tenant_ids.get(&id) {
                return Err(src.error(
                    t.id.span(),
                    format!("{key}.id"),
                    format!("duplicate tenant id '{id}' (first defined on line {line})"),
                ));
            }
            let tenant_line = src.line(&t.id.span());
            tenant_ids.insert(id.clone(), tenant_line);

            let mut accepted = Vec::new();
            for (di, d) in t.accepted_domains.iter().enumerate() {
                let dkey = format!("{key}.accepted_domains[{di}]");
                let domain = certname::validate(d.get_ref(), false)
                    .map_err(|e| src.error(d.span(), &dkey, format!("'{}': {e}", d.get_ref())))?;
                if let Some((owner, line)) = domain_owner.get(&domain) {
                    return Err(src.error(
                        d.span(),
                        &dkey,
                        format!("domain {domain} is already an accepted domain of tenant '{owner}' (line {line}); a domain belongs to one tenant"),
                    ));
                }
                domain_owner.insert(domain.clone(), (id.clone(), src.line(&d.span())));
                accepted.push(domain);
            }

            let mut connectors: Vec<Connector> = Vec::new();
            let mut connector_lines = Vec::new();
            for (ci, c) in t.connectors.iter().enumerate() {
                let ckey = format!("{key}.connector[{ci}]");
                let name = c.name.get_ref().trim().to_string();
                if name.is_empty() || name.chars().any(char::is_control) {
                    return Err(src.error(
                        c.name.span(),
                        format!("{ckey}.name"),
                        "a connector needs a printable, non-empty name",
                    ));
                }
                if connectors.iter().any(|x: &Connector| x.name == name) {
                    return Err(src.error(
                        c.name.span(),
                        format!("{ckey}.name"),
                        format!("tenant '{id}' already has a connector named '{name}'"),
                    ));
                }
                let mut nets = Vec::new();
                for (ii, ip) in c.sender_ip_addresses.iter().enumerate() {
                    nets.push(parse_net(ip.get_ref()).map_err(|m| {
                        src.error(ip.span(), format!("{ckey}.sender_ip_addresses[{ii}]"), m)
                    })?);
                }
                let cert_name = match &c.tls_sender_certificate_name {
                    Some(n) => Some(certname::validate(n.get_ref(), true).map_err(|e| {
                        src.error(
                            n.span(),
                            format!("{ckey}.tls_sender_certificate_name"),
                            format!("'{}': {e}", n.get_ref()),
                        )
                    })?),
                    None => None,
                };
                let line = src.line(&c.name.span());
                if c.kind == ConnectorKind::OnPremises && nets.is_empty() && cert_name.is_none() {
                    return Err(src.error(
                        c.name.span(),
                        &ckey,
                        "an on-premises connector identifies servers by sender_ip_addresses, tls_sender_certificate_name, or both; it has neither",
                    ));
                }
                let mut sender_domains = Vec::new();
                for (si, d) in c.sender_domains.iter().enumerate() {
                    if d.get_ref().trim() == "*" {
                        sender_domains.push("*".to_string());
                        continue;
                    }
                    sender_domains.push(certname::validate(d.get_ref(), false).map_err(|e| {
                        src.error(
                            d.span(),
                            format!("{ckey}.sender_domains[{si}]"),
                            format!("'{}': {e}", d.get_ref()),
                        )
                    })?);
                }
                let mut recipient_domains = Vec::new();
                for (ri, d) in c.recipient_domains.iter().enumerate() {
                    let dom = certname::validate(d.get_ref(), false).map_err(|e| {
                        src.error(
                            d.span(),
                            format!("{ckey}.recipient_domains[{ri}]"),
                            format!("'{}': {e}", d.get_ref()),
                        )
                    })?;
                    if !accepted.contains(&dom) {
                        return Err(src.error(
                            d.span(),
                            format!("{ckey}.recipient_domains[{ri}]"),
                            format!("{dom} is not an accepted domain of tenant '{id}'"),
                        ));
                    }
                    recipient_domains.push(dom);
                }
                if c.kind == ConnectorKind::Partner {
                    if c.restrict_domains_to_ip_addresses && nets.is_empty() {
                        return Err(src.error(
                            c.name.span(),
                            &ckey,
                            "restrict_domains_to_ip_addresses needs sender_ip_addresses",
                        ));
                    }
                    if c.restrict_domains_to_certificate && cert_name.is_none() {
                        return Err(src.error(
                            c.name.span(),
                            &ckey,
                            "restrict_domains_to_certificate needs tls_sender_certificate_name",
                        ));
                    }
                    if sender_domains.is_empty() {
                        return Err(src.error(c.name.span(), &ckey, "a partner connector needs sender_domains (use [\"*\"] for all senders)"));
                    }
                } else if !sender_domains.is_empty()
                    || !recipient_domains.is_empty()
                    || c.restrict_domains_to_ip_addresses
                    || c.restrict_domains_to_certificate
                {
                    return Err(src.error(
                        c.name.span(),
                        &ckey,
                        "sender_domains, recipient_domains and restrict_domains_to_* apply to partner connectors only",
                    ));
                }
                connector_lines.push(line);
                connectors.push(Connector {
                    tenant: id.clone(),
                    name,
                    kind: c.kind,
                    enabled: c.enabled,
                    sender_ip_addresses: nets.iter().map(net_text).collect(),
                    tls_sender_certificate_name: cert_name,
                    sender_domains,
                    recipient_domains,
                    restrict_domains_to_ip_addresses: c.restrict_domains_to_ip_addresses,
                    restrict_domains_to_certificate: c.restrict_domains_to_certificate,
                });
            }
            let policy = match &t.policy {
                None => {
                    if let Some((k, v)) = t.policy_settings.iter().next() {
                        return Err(src.error(
                            v.span(),
                            format!("{key}.policy_settings.{k}"),
                            "policy_settings without a tenant policy",
                        ));
                    }
                    None
                }
                Some(c) => {
                    let mut settings = Vec::new();
                    for (k, v) in &t.policy_settings {
                        settings.push((
                            k.clone(),
                            setting_text(&src, k, v, &format!("{key}.policy_settings"))?,
                        ));
                    }
                    Some(TenantPolicyConfig {
                        component: resolve(c.get_ref()),
                        settings,
                        timeout: Duration::from_millis(range(
                            &t.policy_timeout_ms,
                            &format!("{key}.policy_timeout_ms"),
                            1,
                            60_000,
                            policy.timeout.as_millis() as u64,
                        )?),
                        memory_limit: tenant_memory_limit(
                            &src,
                            &t.policy_memory_limit_mib,
                            &key,
                            policy.memory_limit,
                        )?,
                    })
                }
            };
            let recipients_file = t
                .recipients_file
                .as_ref()
                .map(|f| (resolve(f.get_ref()), f.span()));
            let recipients = RecipientSources {
                key: &key,
                tenant: &id,
                accepted: &accepted,
            }
            .list(&src, t.recipients.as_ref(), recipients_file.as_ref())?;
            tenants.push(Tenant {
                id,
                accepted_domains: accepted,
                connectors,
                line: tenant_line,
                policy,
                recipients,
                recipients_file: recipients_file.map(|(path, _)| path),
            });
            connector_lines_of.push(connector_lines);
        }

        // Warnings need every tenant's domains (ownership is global).
        for (ti, t) in tenants.iter().enumerate() {
            for (ci, c) in t.connectors.iter().enumerate() {
                let Some(name) = &c.tls_sender_certificate_name else {
                    continue;
                };
                if c.kind != ConnectorKind::OnPremises {
                    continue;
                }
                let domain = certname::domain_of(name);
                if !t.accepted_domains.iter().any(|d| d == domain) {
                    let parent = t
                        .accepted_domains
                        .iter()
                        .find(|d| domain.ends_with(&format!(".{d}")))
                        .map(|d| format!("set it to *.{d} so that the certificate-based rule applies"))
                        .unwrap_or_else(|| format!("add {domain} to the tenant's accepted domains or use *.<accepted domain>"));
                    warnings.push(ConfigWarning {
                        line: connector_lines_of[ti][ci],
                        key: format!("tenant[{ti}].connector[{ci}].tls_sender_certificate_name"),
                        message: format!(
                            "connector '{}' of tenant '{}' uses certificate name {name}, whose domain {domain} is not an accepted domain of the tenant: it identifies the server but cannot relay NDRs, forwarded mail or mail from domains the tenant does not own; {parent}",
                            c.name, t.id
                        ),
                    });
                }
            }
        }

        let admin = match raw.admin {
            Some(a) if !a.enabled => None,
            a => Some(admin_settings(
                &src,
                a.unwrap_or_default(),
                &resolve,
                &mut warnings,
            )?),
        };

        let policyd = match raw.policyd {
            Some(p) if p.get_ref().enabled => {
                let span = p.span();
                Some(policyd_settings(&src, p.into_inner(), span, &mut warnings)?)
            }
            _ => None,
        };

        Ok(Config {
            source: path.to_path_buf(),
            admin,
            policyd,
            server,
            policy,
            spool,
            spool_min_free_bytes,
            delivery,
            tenants,
            warnings,
        })
    }
}

/// `[admin]`, validated. Off loopback the endpoint needs a token: without
/// one, anyone who reaches it could reload the relay and read the queue.
fn admin_settings(
    src: &Source<'_>,
    a: RawAdmin,
    resolve: &dyn Fn(&Path) -> PathBuf,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<AdminSettings, ConfigError> {
    let listen = match &a.listen {
        Some(l) => l.get_ref().parse::<SocketAddr>().map_err(|_| {
            src.error(
                l.span(),
                "admin.listen",
                format!(
                    "'{}' is not an address:port such as 127.0.0.1:9725",
                    l.get_ref()
                ),
            )
        })?,
        None => SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT)),
    };
    let token = match &a.token_file {
        Some(f) => Some(admin_token(src, f, &resolve(f.get_ref()), warnings)?),
        None => None,
    };
    if let (None, Some(l)) = (&token, &a.listen)
        && !crate::admin::is_loopback(listen.ip())
    {
        return Err(src.error(
            l.span(),
            "admin.listen",
            format!(
                "{listen} is not a loopback address: without token_file anyone who reaches it could reload the relay and read the queue; set token_file or listen on 127.0.0.1"
            ),
        ));
    }
    Ok(AdminSettings {
        listen,
        token,
        limits: AdminLimits::default(),
    })
}

/// `[admin] token_file`, read now: the endpoint's settings apply at start.
fn admin_token(
    src: &Source<'_>,
    file: &Spanned<PathBuf>,
    path: &Path,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<AdminToken, ConfigError> {
    let token = AdminToken::read(path).map_err(|e| {
        src.error(
            file.span(),
            "admin.token_file",
            format!("{}: {e}", path.display()),
        )
    })?;
    if crate::admin::readable_by_others(path) {
        warnings.push(ConfigWarning {
            line: src.line(&file.span()),
            key: "admin.token_file".into(),
            message: format!(
                "{} is readable by every user of this machine; make it private to the relay's user (chmod 600)",
                path.display()
            ),
        });
    }
    Ok(token)
}

/// `[policyd]`, validated.
fn policyd_settings(
    src: &Source<'_>,
    p: RawPolicyd,
    table: Range<usize>,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<PolicydSettings, ConfigError> {
    let defaults = PolicydSettings::default();
    let mut listen = Vec::new();
    for (i, l) in p.listen.iter().enumerate() {
        let text = l.get_ref();
        let entry = match text.strip_prefix("unix:") {
            Some(path) if Path::new(path).is_absolute() => PolicydListen::Unix(path.into()),
            Some(_) => {
                return Err(src.error(
                    l.span(),
                    format!("policyd.listen[{i}]"),
                    format!("'{text}': a UNIX-domain socket needs an absolute path, such as unix:/run/attrelay/policy.sock"),
                ));
            }
            None => PolicydListen::Tcp(text.parse::<SocketAddr>().map_err(|_| {
                src.error(
                    l.span(),
                    format!("policyd.listen[{i}]"),
                    format!("'{text}' is neither an address:port such as 127.0.0.1:10040 nor unix:/absolute/path"),
                )
            })?),
        };
        if let PolicydListen::Tcp(a) = &entry
            && !a.ip().is_loopback()
        {
            warnings.push(ConfigWarning {
                line: src.line(&l.span()),
                key: format!("policyd.listen[{i}]"),
                message: format!(
                    "{a} is not a loopback address: whoever reaches it can claim any client address and certificate and be told OK; prefer a UNIX-domain socket only Postfix can open, or loopback"
                ),
            });
        }
        listen.push(entry);
    }
    if listen.is_empty() {
        return Err(src.error(
            table,
            "policyd.listen",
            "[policyd] needs at least one listen address (or enabled = false)",
        ));
    }
    let accept = match &p.accept_action {
        None => defaults.accept,
        Some(a) => AcceptAction::parse(a.get_ref()).ok_or_else(|| {
            src.error(
                a.span(),
                "policyd.accept_action",
                format!("'{}' is neither 'OK' nor 'DUNNO'", a.get_ref()),
            )
        })?,
    };
    let socket_mode = match &p.socket_mode {
        None => defaults.socket_mode,
        Some(m) => u32::from_str_radix(m.get_ref(), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                src.error(
                    m.span(),
                    "policyd.socket_mode",
                    format!(
                        "'{}' is not an octal file mode such as \"0660\"",
                        m.get_ref()
                    ),
                )
            })?,
    };
    Ok(PolicydSettings {
        listen,
        accept,
        max_connections: src.range(
            &p.max_connections,
            "policyd.max_connections",
            1,
            100_000,
            defaults.max_connections as u64,
        )? as usize,
        idle_timeout: Duration::from_secs(src.range(
            &p.idle_timeout_secs,
            "policyd.idle_timeout_secs",
            1,
            86_400,
            defaults.idle_timeout.as_secs(),
        )?),
        request_timeout: Duration::from_secs(src.range(
            &p.request_timeout_secs,
            "policyd.request_timeout_secs",
            1,
            3_600,
            defaults.request_timeout.as_secs(),
        )?),
        limits: defaults.limits,
        socket_mode,
        socket_group: match &p.socket_group {
            None => None,
            Some(g) => Some(group_id(g.get_ref()).ok_or_else(|| {
                src.error(
                    g.span(),
                    "policyd.socket_group",
                    format!(
                        "'{}' is neither a group of /etc/group nor a numeric group id",
                        g.get_ref()
                    ),
                )
            })?),
        },
        max_connections_per_client: src.range(
            &p.max_connections_per_client,
            "policyd.max_connections_per_client",
            1,
            100_000,
            defaults.max_connections_per_client as u64,
        )? as usize,
    })
}

/// A group's id: numeric, or looked up by name in `/etc/group`.
fn group_id(group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse() {
        return Some(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let gid = fields.nth(1)?;
        (name == group).then(|| gid.parse().ok()).flatten()
    })
}

/// A tenant's recipient list in the making: what its entries are checked
/// against, and the key errors name.
struct RecipientSources<'a> {
    /// `tenant[N]`.
    key: &'a str,
    tenant: &'a str,
    /// The tenant's accepted domains, normalised.
    accepted: &'a [String],
}

impl RecipientSources<'_> {
    /// `recipients` and `recipients_file` (resolved, with the key's span)
    /// together; `None` when the tenant gives neither. An empty list is an
    /// error: it would refuse every recipient of the tenant, which a failed
    /// export writing an empty file must not do silently.
    fn list(
        &self,
        src: &Source<'_>,
        inline: Option<&Spanned<Vec<Spanned<String>>>>,
        file: Option<&(PathBuf, Range<usize>)>,
    ) -> Result<Option<Vec<crate::address::Mailbox>>, ConfigError> {
        if inline.is_none() && file.is_none() {
            return Ok(None);
        }
        let mut list = Vec::new();
        let entries = inline.map(|v| v.get_ref().as_slice()).unwrap_or_default();
        for (i, e) in entries.iter().enumerate() {
            list.push(
                self.entry(e.get_ref())
                    .map_err(|m| src.error(e.span(), format!("{}.recipients[{i}]", self.key), m))?,
            );
        }
        if let Some((path, span)) = file {
            list.extend(self.file(src, path, span.clone())?);
        }
        if list.is_empty() {
            let (span, name) = inline
                .map(|v| (v.span(), "recipients"))
                .or_else(|| file.map(|(_, s)| (s.clone(), "recipients_file")))
                .unwrap_or((0..0, "recipients"));
            return Err(src.error(
                span,
                format!("{}.{name}", self.key),
                format!(
                    "the recipient list of tenant '{}' is empty: every recipient in its domains would get 550 5.1.10; list them, or give neither recipients nor recipients_file to let the policy decide",
                    self.tenant
                ),
            ));
        }
        Ok(Some(list))
    }

    /// One entry: a mailbox (RFC 5321, ASCII) in an accepted domain of the
    /// tenant, canonicalised. The local part keeps its case here; lookups
    /// fold it ([`crate::directory::recipient_key`]).
    fn entry(&self, text: &str) -> Result<crate::address::Mailbox, String> {
        let mailbox = crate::address::Mailbox::parse(text.trim(), false)
            .map_err(|e| format!("'{text}' is not an address local@domain: {e}"))?;
        let domain = mailbox.domain().as_str();
        if !self.accepted.iter().any(|d| d == domain) {
            return Err(format!(
                "{domain} is not an accepted domain of tenant '{}'",
                self.tenant
            ));
        }
        Ok(mailbox)
    }

    /// `recipients_file`: one address a line; blank lines and lines whose
    /// first non-blank character is `#` are skipped (no trailing comments:
    /// `#` is a valid character of a local part). An unreadable file is an
    /// error at the key; a bad entry names the file and its line.
    fn file(
        &self,
        src: &Source<'_>,
        path: &Path,
        span: Range<usize>,
    ) -> Result<Vec<crate::address::Mailbox>, ConfigError> {
        let key = format!("{}.recipients_file", self.key);
        let text = read_regular_file(path)
            .map_err(|e| src.error(span, &key, format!("cannot read {}: {e}", path.display())))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let mut list = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let entry = line.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            list.push(self.entry(entry).map_err(|message| ConfigError {
                file: path.to_path_buf(),
                line: n + 1,
                column: line.len() - line.trim_start().len() + 1,
                key: key.clone(),
                message,
            })?);
        }
        Ok(list)
    }
}

/// A list file's text. Regular files only: a FIFO or a device such as
/// `/dev/zero` would hang the configuration's loading or exhaust memory.
fn read_regular_file(path: &Path) -> std::io::Result<String> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    std::fs::read_to_string(path)
}

/// A setting's value as the string a policy receives.
/// A tenant policy's memory budget in bytes: at most the base policy's
/// `policy.memory_limit_mib`, which sizes every slot of the instance pool.
/// A larger budget could never be granted (the slot caps the memory), so it
/// is an error rather than silently less than the file says.
fn tenant_memory_limit(
    src: &Source,
    v: &Option<Spanned<u64>>,
    key: &str,
    slot: usize,
) -> Result<usize, ConfigError> {
    let slot_mib = (slot / (1024 * 1024)) as u64;
    let mib = match v {
        None => slot_mib,
        Some(x) if *x.get_ref() == 0 => {
            return Err(src.error(
                x.span(),
                format!("{key}.policy_memory_limit_mib"),
                "must be at least 1 MiB",
            ));
        }
        Some(x) if *x.get_ref() > slot_mib => {
            return Err(src.error(
                x.span(),
                format!("{key}.policy_memory_limit_mib"),
                format!(
                    "{} MiB is more than policy.memory_limit_mib ({slot_mib} MiB), the size of every slot of the policy instance pool; raise policy.memory_limit_mib or lower this budget",
                    x.get_ref()
                ),
            ));
        }
        Some(x) => *x.get_ref(),
    };
    Ok((mib * 1024 * 1024) as usize)
}

fn setting_text(
    src: &Source<'_>,
    key: &str,
    value: &Spanned<toml::Value>,
    table: &str,
) -> Result<String, ConfigError> {
    Ok(match value.get_ref() {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        _ => {
            return Err(src.error(
                value.span(),
                format!("{table}.{key}"),
                "a setting is a string, number, boolean or date-time, not an array or table",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("relay.toml"), text)
    }

    #[test]
    fn nets() {
        assert_eq!(
            parse_net("203.0.113.5").unwrap().to_string(),
            "203.0.113.5/32"
        );
        assert_eq!(
            parse_net("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert!(
            parse_net("203.0.113.5/24")
                .unwrap_err()
                .contains("203.0.113.0/24")
        );
        assert!(parse_net("203.0.113.0/33").is_err());
        assert!(parse_net("300.1.1.1").is_err());
    }

    #[test]
    fn error_positions() {
        let e = parse("[server]\nhostname = \"relay.example.test\"\nbogus = 1\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (3, "server.bogus"), "{e}");
        let e = parse("[[tenant]]\nid = \"a\"\naccepted_domains = [\"a.com\"]\n[[tenant.connector]]\nname = \"c\"\ntype = \"on-premises\"\nsender_ip_addresses = [\"1.2.3.0/24\", \"1.2.3.4/40\"]\n").unwrap_err();
        assert_eq!(e.line, 7);
        assert_eq!(e.key, "tenant[0].connector[0].sender_ip_addresses[1]");
        assert!(e.to_string().starts_with("relay.toml:7:"), "{e}");
    }
}

/// The embedded demo configuration (`examples/demo.toml`).
pub const EMBEDDED_DEFAULT: &str = include_str!("../../examples/demo.toml");

impl Config {
    /// The demo configuration used when no `--config` is given.
    pub fn embedded_default() -> Config {
        Config::parse(Path::new("<embedded demo configuration>"), EMBEDDED_DEFAULT)
            .expect("the embedded demo configuration is valid (tested)")
    }
}

#[cfg(test)]
mod embedded_tests {
    #[test]
    fn embedded_default_is_valid() {
        let c = super::Config::embedded_default();
        assert_eq!(c.tenants[0].id, "demo");
        assert!(c.warnings.is_empty());
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn shipped_examples_are_valid() {
        let c = super::Config::parse(
            std::path::Path::new("examples/contoso.toml"),
            include_str!("../../examples/contoso.toml"),
        )
        .unwrap();
        assert_eq!(c.tenants.len(), 3);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }
}
