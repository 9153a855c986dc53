//! `[server]`: where the relay listens, its TLS, and the limits of its
//! sessions. Every default is the SMTP server's own
//! ([`crate::smtp::Limits::default`], [`crate::smtp::server`]'s constants).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use attrelay_policy::certname;
use serde::Deserialize;
use toml::Spanned;

use super::source::{ConfigError, Source, limit};
use crate::smtp::server::{
    DEFAULT_IPV6_PREFIX_LENGTH, DEFAULT_LISTEN, DEFAULT_MAX_SESSIONS, DEFAULT_MAX_SESSIONS_PER_IP,
    DEFAULT_SHUTDOWN_GRACE,
};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    hostname: Option<Spanned<String>>,
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    tls_cert: Option<Spanned<PathBuf>>,
    tls_key: Option<Spanned<PathBuf>>,
    #[serde(default)]
    client_ca: Vec<Spanned<PathBuf>>,
    max_message_size: Option<Spanned<u64>>,
    max_header_size: Option<Spanned<u64>>,
    max_recipients: Option<Spanned<u64>>,
    max_sessions: Option<Spanned<u64>>,
    idle_timeout_secs: Option<Spanned<u64>>,
    max_errors: Option<Spanned<u64>>,
    shutdown_grace_secs: Option<Spanned<u64>>,
    max_sessions_per_ip: Option<Spanned<u64>>,
    max_session_secs: Option<Spanned<u64>>,
    pregreet_delay_ms: Option<Spanned<u64>>,
    ipv6_prefix_length: Option<Spanned<u64>>,
    bare_line_endings: Option<Spanned<String>>,
    postmaster: Option<Spanned<String>>,
    soft_error_limit: Option<Spanned<u64>>,
    error_delay_ms: Option<Spanned<u64>>,
    hopcount_limit: Option<Spanned<u64>>,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub hostname: String,
    pub listen: Vec<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Trust anchors for client certificates, resolved against the config's directory.
    pub client_ca: Vec<PathBuf>,
    /// The limits of each session (`max_message_size`, `max_header_size`, `max_recipients`,
    /// `idle_timeout_secs`, `max_errors`, `soft_error_limit`,
    /// `error_delay_ms`, `hopcount_limit`, `bare_line_endings`,
    /// `max_session_secs`, `pregreet_delay_ms`), whose defaults are
    /// [`crate::smtp::Limits::default`]'s.
    pub limits: crate::smtp::Limits,
    /// Concurrent SMTP sessions; more get `421 4.3.2`.
    pub max_sessions: usize,
    /// How long sessions in flight may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Concurrent sessions from one client IP; more get `421 4.7.0`.
    pub max_sessions_per_ip: usize,
    /// IPv6 clients are counted for `max_sessions_per_ip` by this prefix
    /// (64 by default; 128 counts each address).
    pub ipv6_prefix_length: u8,
    /// The mailbox `RCPT TO:<postmaster>` is delivered to (canonical).
    pub postmaster: String,
}

/// Validates `[server]`.
pub(super) fn parse(
    src: &Source<'_>,
    s: RawServer,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<ServerSettings, ConfigError> {
    let t = src.table("server");
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
        listen.push(DEFAULT_LISTEN);
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
    let bare_line_endings = match &s.bare_line_endings {
        None => None,
        Some(v) => match v.get_ref().as_str() {
            "reject" => Some(crate::smtp::data::BareLineEndings::Reject),
            "normalize" => Some(crate::smtp::data::BareLineEndings::Normalize),
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
                    format!("postmaster@{hostname} is not a mailbox ({e}): set server.postmaster"),
                )
            })?
            .to_string(),
    };
    let defaults = crate::smtp::Limits::default();
    let limits = crate::smtp::Limits {
        max_message_size: limit!(
            t,
            s.max_message_size,
            1024..=1 << 31,
            defaults.max_message_size
        ),
        max_header_size: limit!(
            t,
            s.max_header_size,
            1024..=64 << 20,
            defaults.max_header_size
        ),
        max_recipients: limit!(t, s.max_recipients, 1..=100_000, defaults.max_recipients),
        idle_timeout: limit!(t, s.idle_timeout_secs, secs 1..=3600, defaults.idle_timeout),
        max_errors: limit!(t, s.max_errors, 1..=1000, defaults.max_errors),
        soft_errors: limit!(t, s.soft_error_limit, 0..=1000, defaults.soft_errors),
        error_delay: limit!(t, s.error_delay_ms, millis 0..=60_000, defaults.error_delay),
        max_hops: limit!(t, s.hopcount_limit, 1..=1000, defaults.max_hops),
        max_session: limit!(t, s.max_session_secs, secs 1..=86_400, defaults.max_session),
        pregreet_delay: limit!(t, s.pregreet_delay_ms, millis 0..=30_000, defaults.pregreet_delay),
        bare_line_endings: bare_line_endings.unwrap_or(defaults.bare_line_endings),
        ..defaults
    };
    let server = ServerSettings {
        postmaster,
        hostname,
        listen,
        tls_cert: s.tls_cert.map(|p| resolve(p.get_ref())),
        tls_key: s.tls_key.map(|p| resolve(p.get_ref())),
        client_ca: s.client_ca.iter().map(|p| resolve(p.get_ref())).collect(),
        limits,
        max_sessions: limit!(t, s.max_sessions, 1..=100_000, DEFAULT_MAX_SESSIONS),
        shutdown_grace: limit!(t, s.shutdown_grace_secs, secs 0..=3600, DEFAULT_SHUTDOWN_GRACE),
        max_sessions_per_ip: limit!(
            t,
            s.max_sessions_per_ip,
            1..=100_000,
            DEFAULT_MAX_SESSIONS_PER_IP
        ),
        ipv6_prefix_length: limit!(
            t,
            s.ipv6_prefix_length,
            32..=128,
            DEFAULT_IPV6_PREFIX_LENGTH
        ),
    };
    Ok(server)
}
