//! `proxy_protocol` and `proxy_from`, in `[server]` and `[policyd]`: which
//! balancers may state a client's address (see [`crate::proxy`]).

use toml::Spanned;

use super::source::{ConfigError, Source};
use crate::directory::parse_net;
use crate::proxy::ProxySettings;

/// The keys of `table`, validated: `proxy_protocol = true` needs the
/// balancers in `proxy_from`, and `proxy_from` is refused without it (a
/// list that does nothing would look like protection).
pub(super) fn parse(
    src: &Source<'_>,
    table: &str,
    enabled: Option<&Spanned<bool>>,
    from: &[Spanned<String>],
) -> Result<ProxySettings, ConfigError> {
    let mut nets = Vec::new();
    for (i, f) in from.iter().enumerate() {
        nets.push(
            parse_net(f.get_ref())
                .map_err(|m| src.error(f.span(), format!("{table}.proxy_from[{i}]"), m))?,
        );
    }
    let on = enabled.is_some_and(|e| *e.get_ref());
    match (enabled, on, nets.is_empty(), from.first()) {
        (Some(e), true, true, _) => Err(src.error(
            e.span(),
            format!("{table}.proxy_protocol"),
            "proxy_protocol needs proxy_from: the addresses of the balancers allowed to state a client's address",
        )),
        (_, false, false, Some(f)) => Err(src.error(
            f.span(),
            format!("{table}.proxy_from"),
            "proxy_from has no effect without proxy_protocol = true",
        )),
        _ => Ok(ProxySettings {
            enabled: on,
            from: nets,
        }),
    }
}
