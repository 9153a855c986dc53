//! `[spool]` and `[delivery]`: where accepted mail is kept, and where and
//! how it goes. Defaults are the spool's and the delivery queue's own
//! constants.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::source::{ConfigError, Source, limit};
use crate::delivery::{DeliverySettings, NextHop};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpool {
    path: Option<Spanned<PathBuf>>,
    min_free_bytes: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    next_hop: Option<Spanned<String>>,
    directory: Option<Spanned<PathBuf>>,
    tls_cert: Option<Spanned<PathBuf>>,
    tls_key: Option<Spanned<PathBuf>>,
    #[serde(default)]
    tls_ca: Vec<Spanned<PathBuf>>,
    retry_initial_secs: Option<Spanned<u64>>,
    retry_max_secs: Option<Spanned<u64>>,
    max_queue_age_secs: Option<Spanned<u64>>,
    concurrency: Option<Spanned<u64>>,
    timeout_secs: Option<Spanned<u64>>,
    #[serde(default)]
    dns_servers: Vec<Spanned<String>>,
    mx_port: Option<Spanned<u64>>,
    dsn_rate_per_domain_per_hour: Option<Spanned<u64>>,
    tls: Option<Spanned<String>>,
    attempt_timeout_secs: Option<Spanned<u64>>,
    mx_address_limit: Option<Spanned<u64>>,
    mx_session_limit: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u64>>,
    max_idle_connections: Option<Spanned<u64>>,
    max_idle_per_hop: Option<Spanned<u64>>,
    connection_idle_secs: Option<Spanned<u64>>,
    delay_warning_secs: Option<Spanned<u64>>,
    /// `[[delivery.route]]`, parsed with the tenants' smart hosts
    /// (`routes.rs`).
    #[serde(default, rename = "route")]
    pub(super) routes: Vec<super::routes::RawRoute>,
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

/// `max_connections`, `max_idle_connections`, `max_idle_per_hop` and
/// `connection_idle_secs`: the bounds of the connection pool. Idle
/// connections count against `max_connections`, so more idle than that
/// could never be kept.
fn pool_limits(
    src: &Source<'_>,
    d: &RawDelivery,
) -> Result<crate::delivery::pool::PoolLimits, ConfigError> {
    use crate::delivery::pool::{
        self, DEFAULT_IDLE_TIME, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_IDLE,
        DEFAULT_MAX_IDLE_PER_HOP,
    };
    let t = src.table("delivery");
    let max_connections = limit!(t, d.max_connections, 1..=100_000, DEFAULT_MAX_CONNECTIONS);
    let max_idle = limit!(
        t,
        d.max_idle_connections,
        0..=100_000,
        DEFAULT_MAX_IDLE.min(max_connections)
    );
    if let Some(v) = d
        .max_idle_connections
        .as_ref()
        .filter(|_| max_idle > max_connections)
    {
        return Err(src.error(
            v.span(),
            "delivery.max_idle_connections",
            format!(
                "{max_idle} is more than max_connections ({max_connections}), which idle connections count against"
            ),
        ));
    }
    let max_idle_per_hop = limit!(t, d.max_idle_per_hop, 0..=1000, DEFAULT_MAX_IDLE_PER_HOP);
    let idle_time = limit!(t, d.connection_idle_secs, secs 1..=300, DEFAULT_IDLE_TIME);
    Ok(pool::PoolLimits {
        max_connections,
        max_idle,
        max_idle_per_hop,
        idle_time,
    })
}

/// Validates `[spool]` and `[delivery]`: the spool's path and reserve, and
/// the delivery settings.
pub(super) fn parse(
    src: &Source<'_>,
    spool_raw: RawSpool,
    delivery_raw: Option<RawDelivery>,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<(PathBuf, u64, DeliverySettings), ConfigError> {
    let spool_table = src.table("spool");
    let spool_min_free_bytes = limit!(
        spool_table,
        spool_raw.min_free_bytes,
        0..=1 << 50,
        crate::spool::DEFAULT_MIN_FREE_BYTES
    );
    let spool = spool_raw
        .path
        .map(|p| src.file("spool.path", &p, resolve))
        .unwrap_or_else(|| resolve(Path::new("attrelay-data/spool")));
    let d = delivery_raw.unwrap_or_default();
    src.both_or_neither(
        "delivery",
        ("tls_cert", &d.tls_cert),
        ("tls_key", &d.tls_key),
    )?;
    let t = src.table("delivery");
    let defaults = DeliverySettings::default();
    let delivery = DeliverySettings {
        next_hop: next_hop(src, &d, resolve)?,
        tls_cert: d
            .tls_cert
            .as_ref()
            .map(|p| src.file("delivery.tls_cert", p, resolve)),
        tls_key: d
            .tls_key
            .as_ref()
            .map(|p| src.file("delivery.tls_key", p, resolve)),
        tls_ca: d
            .tls_ca
            .iter()
            .enumerate()
            .map(|(i, p)| src.file(format!("delivery.tls_ca[{i}]"), p, resolve))
            .collect(),
        retry_initial: limit!(t, d.retry_initial_secs, secs 1..=86_400, defaults.retry_initial),
        retry_max: limit!(t, d.retry_max_secs, secs 1..=604_800, defaults.retry_max),
        max_queue_age: limit!(t, d.max_queue_age_secs, secs 1..=2_592_000, defaults.max_queue_age),
        concurrency: limit!(t, d.concurrency, 1..=1000, defaults.concurrency),
        timeout: limit!(t, d.timeout_secs, secs 1..=3600, defaults.timeout),
        dns_servers: dns_servers(src, &d)?,
        mx_port: limit!(t, d.mx_port, 1..=65_535, defaults.mx_port),
        dsn_rate_per_domain_per_hour: limit!(
            t,
            d.dsn_rate_per_domain_per_hour,
            0..=1_000_000,
            defaults.dsn_rate_per_domain_per_hour
        ),
        tls: delivery_tls(src, &d.tls, !d.tls_ca.is_empty())?,
        attempt_timeout: limit!(t, d.attempt_timeout_secs, secs 1..=86_400, defaults.attempt_timeout),
        mx_address_limit: limit!(t, d.mx_address_limit, 1..=100, defaults.mx_address_limit),
        mx_session_limit: limit!(t, d.mx_session_limit, 1..=100, defaults.mx_session_limit),
        connections: pool_limits(src, &d)?,
        delay_warning: limit!(t, d.delay_warning_secs, secs 0..=2_592_000, defaults.delay_warning),
    };
    Ok((spool, spool_min_free_bytes, delivery))
}

/// `next_hop` (`mx` or host:port) or `directory`, not both; by default the
/// directory `attrelay-data/outbox`.
fn next_hop(
    src: &Source<'_>,
    d: &RawDelivery,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<NextHop, ConfigError> {
    let n = match (&d.next_hop, &d.directory) {
        (Some(n), Some(_)) => {
            return Err(src.error(
                n.span(),
                "delivery.next_hop",
                "give next_hop or directory, not both",
            ));
        }
        (None, Some(dir)) => return Ok(NextHop::Directory(resolve(dir.get_ref()))),
        (None, None) => {
            return Ok(NextHop::Directory(resolve(Path::new(
                "attrelay-data/outbox",
            ))));
        }
        (Some(n), None) => n,
    };
    let text = n.get_ref().trim();
    if text == "mx" {
        return Ok(NextHop::Mx);
    }
    crate::delivery::routes::parse_host_port(text)
        .map(|(host, port)| NextHop::Smarthost { host, port })
        .ok_or_else(|| {
            src.error(
                n.span(),
                "delivery.next_hop",
                format!("'{text}' is neither \"mx\" nor host:port (such as smtp.example.net:25)"),
            )
        })
}

/// `dns_servers`: IP addresses (port 53) or address:port.
fn dns_servers(src: &Source<'_>, d: &RawDelivery) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut servers = Vec::new();
    for (i, a) in d.dns_servers.iter().enumerate() {
        let text = a.get_ref();
        let server = text
            .parse::<SocketAddr>()
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
            })?;
        servers.push(server);
    }
    Ok(servers)
}
