//! `[admin]`: the HTTP endpoint's listener and token. Off loopback it
//! needs a token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::source::Source;
use super::source::{ConfigError, ConfigWarning};
use crate::admin::{AdminLimits, AdminSettings, AdminToken};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    listen: Option<Spanned<String>>,
    token_file: Option<Spanned<PathBuf>>,
    #[serde(default = "super::source::yes")]
    pub(super) enabled: bool,
}

/// `[admin]`, validated. Off loopback the endpoint needs a token: without
/// one, anyone who reaches it could reload the relay and read the queue.
pub(super) fn parse(
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
        None => crate::admin::DEFAULT_LISTEN,
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
        token_file: a.token_file.as_ref().map(|f| resolve(f.get_ref())),
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
