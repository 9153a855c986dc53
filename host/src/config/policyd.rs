//! `[policyd]`: the Postfix policy-delegation service's listeners, socket
//! permissions and bounds.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::source::{ConfigError, ConfigWarning, Source, limit};
use crate::policyd::{AcceptAction, PolicydListen, PolicydSettings};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicyd {
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    accept_action: Option<Spanned<String>>,
    max_connections: Option<Spanned<u64>>,
    idle_timeout_secs: Option<Spanned<u64>>,
    request_timeout_secs: Option<Spanned<u64>>,
    socket_mode: Option<Spanned<String>>,
    socket_group: Option<Spanned<String>>,
    max_connections_per_client: Option<Spanned<u64>>,
    #[serde(default = "super::source::yes")]
    pub(super) enabled: bool,
}

/// `[policyd]`, validated.
pub(super) fn parse(
    src: &Source<'_>,
    p: RawPolicyd,
    table: Range<usize>,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<PolicydSettings, ConfigError> {
    let t = src.table("policyd");
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
        max_connections: limit!(t, p.max_connections, 1..=100_000, defaults.max_connections),
        idle_timeout: limit!(t, p.idle_timeout_secs, secs 1..=86_400, defaults.idle_timeout),
        request_timeout: limit!(t, p.request_timeout_secs, secs 1..=3_600, defaults.request_timeout),
        limits: defaults.limits,
        socket_mode,
        socket_group: match &p.socket_group {
            None => None,
            Some(g) => Some(crate::accounts::group_id(g.get_ref()).ok_or_else(|| {
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
        max_connections_per_client: limit!(
            t,
            p.max_connections_per_client,
            1..=100_000,
            defaults.max_connections_per_client
        ),
    })
}
