//! The relay's configuration file (TOML), its validation and its warnings.
//!
//! Every error names the file, the line and column, and the key, because an
//! operator editing a directory of thousands of tenants needs to find the one
//! bad entry without guessing. Validation is strict: unknown keys, malformed
//! addresses and ambiguous ownership are errors, not silent defaults.

use std::path::{Path, PathBuf};

pub use attrelay_policy::model::{Connector, ConnectorKind};
use serde::Deserialize;
use toml::Spanned;

use crate::admin::AdminSettings;
use crate::policyd::PolicydSettings;

mod admin;
mod delivery;
mod policy;
mod policyd;
mod proxy;
mod routes;
mod server;
mod source;
mod tenants;

pub use policy::PolicySettings;
pub use server::ServerSettings;
use source::Source;
pub use source::{ConfigError, ConfigWarning, FileKeys};
pub use tenants::{Tenant, TenantPolicySettings};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: server::RawServer,
    #[serde(default)]
    policy: policy::RawPolicy,
    #[serde(default)]
    spool: delivery::RawSpool,
    admin: Option<admin::RawAdmin>,
    delivery: Option<delivery::RawDelivery>,
    policyd: Option<Spanned<policyd::RawPolicyd>>,
    #[serde(default, rename = "tenant")]
    tenants: Vec<tenants::RawTenant>,
}

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (`<embedded>` for the demo default).
    pub source: PathBuf,
    pub server: ServerSettings,
    pub policy: PolicySettings,
    /// `[spool] path`.
    pub spool: PathBuf,
    /// `[spool] min_free_bytes`: free space new mail must leave on the
    /// spool's filesystem (`452 4.3.1` otherwise); 0 turns the check off.
    pub spool_min_free_bytes: u64,
    pub delivery: crate::delivery::DeliverySettings,
    /// Routes by recipient domain (tenants' `smart_hosts`,
    /// `[[delivery.route]]`); reloadable, unlike the rest of delivery.
    pub routes: crate::delivery::routes::Routes,
    /// The admin endpoint (metrics, status, queue, reload), if enabled: its
    /// listener, token and limits. Restart-only (see `reload::restart_required`).
    pub admin: Option<AdminSettings>,
    /// The Postfix policy-delegation service (`[policyd]`), if configured.
    pub policyd: Option<PolicydSettings>,
    pub tenants: Vec<Tenant>,
    pub warnings: Vec<ConfigWarning>,
    /// Where each key naming a file is written, for problems found when
    /// the file is read.
    pub file_keys: FileKeys,
}

impl Config {
    /// `[policy] cache`, by default `policy-cache` beside the spool.
    pub fn policy_cache(&self) -> PathBuf {
        self.policy.cache.clone().unwrap_or_else(|| {
            self.spool
                .parent()
                .map(|p| p.join("policy-cache"))
                .unwrap_or_else(|| "policy-cache".into())
        })
    }

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

        let server = server::parse(&src, raw.server, &resolve)?;
        let mut raw_delivery = raw.delivery;
        let raw_routes = raw_delivery
            .as_mut()
            .map(|d| std::mem::take(&mut d.routes))
            .unwrap_or_default();
        let (spool, spool_min_free_bytes, delivery) =
            delivery::parse(&src, raw.spool, raw_delivery, &resolve)?;
        let policy = policy::parse(&src, raw.policy, &resolve)?;
        let tenants = tenants::parse(&src, raw.tenants, &policy, &resolve, &mut warnings)?;
        let routes = routes::parse(&src, &raw_routes, &tenants)?;
        let admin = match raw.admin {
            Some(a) if !a.enabled => None,
            a => Some(admin::parse(
                &src,
                a.unwrap_or_default(),
                &resolve,
                &mut warnings,
            )?),
        };

        let policyd = match raw.policyd {
            Some(p) if p.get_ref().enabled => {
                let span = p.span();
                Some(policyd::parse(&src, p.into_inner(), span, &mut warnings)?)
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
            routes,
            tenants,
            warnings,
            file_keys: src.file_keys(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::parse_net;

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
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../examples/demo.toml");

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
            include_str!("../../../examples/contoso.toml"),
        )
        .unwrap();
        assert_eq!(c.tenants.len(), 3);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }
}
