//! `[spool]` and `[delivery]`: where accepted mail is kept, and where and
//! how it goes. Defaults are the spool's and the delivery queue's own
//! constants.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::source::Source;
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
    max_connections: Option<Spanned<u64>>,
    max_idle_connections: Option<Spanned<u64>>,
    max_idle_per_hop: Option<Spanned<u64>>,
    connection_idle_secs: Option<Spanned<u64>>,
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
    use crate::delivery::pool;
    let max_connections = src.range(
        &d.max_connections,
        "delivery.max_connections",
        1,
        100_000,
        pool::DEFAULT_MAX_CONNECTIONS as u64,
    )? as usize;
    let max_idle = src.range(
        &d.max_idle_connections,
        "delivery.max_idle_connections",
        0,
        100_000,
        (pool::DEFAULT_MAX_IDLE.min(max_connections)) as u64,
    )? as usize;
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
    let max_idle_per_hop = src.range(
        &d.max_idle_per_hop,
        "delivery.max_idle_per_hop",
        0,
        1000,
        pool::DEFAULT_MAX_IDLE_PER_HOP as u64,
    )? as usize;
    let idle_time = Duration::from_secs(src.range(
        &d.connection_idle_secs,
        "delivery.connection_idle_secs",
        1,
        300,
        pool::DEFAULT_IDLE_TIME.as_secs(),
    )?);
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
    let range = |v: &Option<Spanned<u64>>, key: &str, lo: u64, hi: u64, default: u64| {
        src.range(v, key, lo, hi, default)
    };
    let widen = |v: &Option<Spanned<u32>>| {
        v.as_ref()
            .map(|x| Spanned::new(x.span(), u64::from(*x.get_ref())))
    };
    let spool_min_free_bytes = range(
        &spool_raw.min_free_bytes,
        "spool.min_free_bytes",
        0,
        1 << 50,
        crate::spool::DEFAULT_MIN_FREE_BYTES,
    )?;
    let spool = spool_raw
        .path
        .map(|p| resolve(p.get_ref()))
        .unwrap_or_else(|| resolve(Path::new("attrelay-data/spool")));
    let d = delivery_raw.unwrap_or_default();
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
                        format!(
                            "'{text}' is neither \"mx\" nor host:port (such as smtp.example.net:25)"
                        ),
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
    let connections = pool_limits(src, &d)?;
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
            crate::delivery::DEFAULT_RETRY_INITIAL.as_secs(),
        )?),
        retry_max: Duration::from_secs(range(
            &d.retry_max_secs,
            "delivery.retry_max_secs",
            1,
            604_800,
            crate::delivery::DEFAULT_RETRY_MAX.as_secs(),
        )?),
        max_queue_age: Duration::from_secs(range(
            &d.max_queue_age_secs,
            "delivery.max_queue_age_secs",
            1,
            2_592_000,
            crate::delivery::DEFAULT_MAX_QUEUE_AGE.as_secs(),
        )?),
        concurrency: range(
            &widen(&d.concurrency),
            "delivery.concurrency",
            1,
            1000,
            crate::delivery::DEFAULT_CONCURRENCY as u64,
        )? as usize,
        timeout: Duration::from_secs(range(
            &d.timeout_secs,
            "delivery.timeout_secs",
            1,
            3600,
            crate::delivery::DEFAULT_STEP_TIMEOUT.as_secs(),
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
        mx_port: range(
            &d.mx_port,
            "delivery.mx_port",
            1,
            65_535,
            u64::from(crate::delivery::DEFAULT_MX_PORT),
        )? as u16,
        dsn_rate_per_domain_per_hour: range(
            &d.dsn_rate_per_domain_per_hour,
            "delivery.dsn_rate_per_domain_per_hour",
            0,
            1_000_000,
            u64::from(crate::delivery::dsn::DEFAULT_RATE_PER_DOMAIN_PER_HOUR),
        )? as u32,
        tls: delivery_tls(src, &d.tls, !d.tls_ca.is_empty())?,
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
        connections,
    };
    Ok((spool, spool_min_free_bytes, delivery))
}
