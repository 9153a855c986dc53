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
    DEFAULT_IPV6_PREFIX_LENGTH as DEFAULT_IPV6_PREFIX, DEFAULT_LISTEN, DEFAULT_MAX_SESSIONS,
    DEFAULT_MAX_SESSIONS_PER_IP as DEFAULT_PER_IP, DEFAULT_SHUTDOWN_GRACE,
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
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    proxy_protocol: Option<Spanned<bool>>,
    #[serde(default)]
    proxy_from: Vec<Spanned<String>>,
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
    /// `user` / `group`: who the relay runs as once its listeners are
    /// bound (`crate::privileges`); `None` keeps the starting user.
    pub run_as: Option<crate::privileges::RunAs>,
    /// `proxy_protocol` / `proxy_from`: the PROXY protocol from these
    /// balancers.
    pub proxy: crate::proxy::ProxySettings,
}

/// `user` (a name in /etc/passwd or a uid) and `group` (a name in
/// /etc/group or a gid; by default the user's primary group).
fn run_as(
    src: &Source<'_>,
    s: &RawServer,
) -> Result<Option<crate::privileges::RunAs>, ConfigError> {
    let Some(user) = &s.user else {
        if let Some(g) = &s.group {
            return Err(src.error(
                g.span(),
                "server.group",
                "group needs user (the user the relay runs as)",
            ));
        }
        return Ok(None);
    };
    let (uid, primary) = crate::accounts::user(user.get_ref()).ok_or_else(|| {
        src.error(
            user.span(),
            "server.user",
            format!("'{}' is neither a user of /etc/passwd nor a numeric user id (create it: useradd --system attrelay)", user.get_ref()),
        )
    })?;
    let gid = match &s.group {
        None => primary,
        Some(g) => crate::accounts::group_id(g.get_ref()).ok_or_else(|| {
            src.error(
                g.span(),
                "server.group",
                format!(
                    "'{}' is neither a group of /etc/group nor a numeric group id",
                    g.get_ref()
                ),
            )
        })?,
    };
    Ok(Some(crate::privileges::RunAs {
        user: user.get_ref().clone(),
        uid,
        gid,
    }))
}

/// Validates `[server]`.
pub(super) fn parse(
    src: &Source<'_>,
    s: RawServer,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<ServerSettings, ConfigError> {
    let t = src.table("server");
    src.both_or_neither("server", ("tls_cert", &s.tls_cert), ("tls_key", &s.tls_key))?;
    let hostname = hostname(src, &s)?;
    Ok(ServerSettings {
        proxy: super::proxy::parse(src, "server", s.proxy_protocol.as_ref(), &s.proxy_from)?,
        run_as: run_as(src, &s)?,
        postmaster: postmaster(src, &s, &hostname)?,
        hostname,
        listen: listen(src, &s)?,
        tls_cert: s
            .tls_cert
            .as_ref()
            .map(|p| src.file("server.tls_cert", p, resolve)),
        tls_key: s
            .tls_key
            .as_ref()
            .map(|p| src.file("server.tls_key", p, resolve)),
        client_ca: s
            .client_ca
            .iter()
            .enumerate()
            .map(|(i, p)| src.file(format!("server.client_ca[{i}]"), p, resolve))
            .collect(),
        limits: limits(src, &s)?,
        max_sessions: limit!(t, s.max_sessions, 1..=100_000, DEFAULT_MAX_SESSIONS),
        shutdown_grace: limit!(t, s.shutdown_grace_secs, secs 0..=3600, DEFAULT_SHUTDOWN_GRACE),
        max_sessions_per_ip: limit!(t, s.max_sessions_per_ip, 1..=100_000, DEFAULT_PER_IP),
        ipv6_prefix_length: limit!(t, s.ipv6_prefix_length, 32..=128, DEFAULT_IPV6_PREFIX),
    })
}

/// `hostname`: the relay's name in its greeting, EHLO and trace fields.
fn hostname(src: &Source<'_>, s: &RawServer) -> Result<String, ConfigError> {
    let Some(h) = &s.hostname else {
        return Ok("relay.attrelay.invalid".to_string());
    };
    certname::validate(h.get_ref(), false).map_err(|e| {
        src.error(
            h.span(),
            "server.hostname",
            format!("'{}': {e}", h.get_ref()),
        )
    })
}

/// `listen`: addresses with ports, [`DEFAULT_LISTEN`] when none.
fn listen(src: &Source<'_>, s: &RawServer) -> Result<Vec<SocketAddr>, ConfigError> {
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
    Ok(listen)
}

/// `postmaster`, canonical; by default `postmaster@` the hostname, which
/// must be a mailbox too: a host name certname accepts (an underscore) may
/// not be a mail domain.
fn postmaster(src: &Source<'_>, s: &RawServer, hostname: &str) -> Result<String, ConfigError> {
    let (text, span, key) = match &s.postmaster {
        Some(p) => (
            p.get_ref().trim().to_string(),
            p.span(),
            "server.postmaster",
        ),
        None => (
            format!("postmaster@{hostname}"),
            s.hostname.as_ref().map(|h| h.span()).unwrap_or(0..0),
            "server.hostname",
        ),
    };
    let mailbox = crate::address::Mailbox::parse(&text, false).map_err(|e| {
        let message = match &s.postmaster {
            Some(p) => format!("'{}' is not a mailbox: {e}", p.get_ref()),
            None => format!("{text} is not a mailbox ({e}): set server.postmaster"),
        };
        src.error(span, key, message)
    })?;
    Ok(mailbox.to_string())
}

/// The limits of each session, whose defaults are the SMTP server's.
fn limits(src: &Source<'_>, s: &RawServer) -> Result<crate::smtp::Limits, ConfigError> {
    let t = src.table("server");
    let d = crate::smtp::Limits::default();
    Ok(crate::smtp::Limits {
        max_message_size: limit!(t, s.max_message_size, 1024..=1 << 31, d.max_message_size),
        max_header_size: limit!(t, s.max_header_size, 1024..=64 << 20, d.max_header_size),
        max_recipients: limit!(t, s.max_recipients, 1..=100_000, d.max_recipients),
        idle_timeout: limit!(t, s.idle_timeout_secs, secs 1..=3600, d.idle_timeout),
        max_errors: limit!(t, s.max_errors, 1..=1000, d.max_errors),
        soft_errors: limit!(t, s.soft_error_limit, 0..=1000, d.soft_errors),
        error_delay: limit!(t, s.error_delay_ms, millis 0..=60_000, d.error_delay),
        max_hops: limit!(t, s.hopcount_limit, 1..=1000, d.max_hops),
        max_session: limit!(t, s.max_session_secs, secs 1..=86_400, d.max_session),
        pregreet_delay: limit!(t, s.pregreet_delay_ms, millis 0..=30_000, d.pregreet_delay),
        bare_line_endings: bare_line_endings(src, s)?.unwrap_or(d.bare_line_endings),
        ..d
    })
}

/// `bare_line_endings`: `reject` or `normalize`.
fn bare_line_endings(
    src: &Source<'_>,
    s: &RawServer,
) -> Result<Option<crate::smtp::data::BareLineEndings>, ConfigError> {
    use crate::smtp::data::BareLineEndings;
    let Some(v) = &s.bare_line_endings else {
        return Ok(None);
    };
    match v.get_ref().as_str() {
        "reject" => Ok(Some(BareLineEndings::Reject)),
        "normalize" => Ok(Some(BareLineEndings::Normalize)),
        other => Err(src.error(
            v.span(),
            "server.bare_line_endings",
            format!("'{other}' is neither 'reject' nor 'normalize'"),
        )),
    }
}
