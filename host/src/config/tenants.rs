//! `[[tenant]]`: each tenant's accepted domains, connectors, recipient
//! list and own policy, and the warnings that need every tenant at once.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use attrelay_policy::certname;
use attrelay_policy::model::{Connector, ConnectorKind};
use serde::Deserialize;
use toml::Spanned;

use super::policy::{PolicyConfig, setting_text};
use super::source::Source;
use super::{ConfigError, ConfigWarning};
use crate::directory::{is_ipv4_mapped, net_text, parse_net};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
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
pub(super) struct RawConnector {
    name: Spanned<String>,
    #[serde(rename = "type")]
    kind: ConnectorKind,
    #[serde(default)]
    sender_ip_addresses: Vec<Spanned<String>>,
    tls_sender_certificate_name: Option<Spanned<String>>,
    #[serde(default = "super::yes")]
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

/// Validates every `[[tenant]]`; a tenant policy's budgets default to
/// `policy`'s.
pub(super) fn parse(
    src: &Source<'_>,
    raw_tenants: Vec<RawTenant>,
    policy: &PolicyConfig,
    resolve: &dyn Fn(&Path) -> PathBuf,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Vec<Tenant>, ConfigError> {
    let range = |v: &Option<Spanned<u64>>, key: &str, lo: u64, hi: u64, default: u64| {
        src.range(v, key, lo, hi, default)
    };
    let mut tenants: Vec<Tenant> = Vec::new();
    // Each tenant's connectors' lines, for the warnings below.
    let mut connector_lines_of: Vec<Vec<usize>> = Vec::new();
    let mut tenant_ids: HashMap<String, usize> = HashMap::new();
    let mut domain_owner: HashMap<String, (String, usize)> = HashMap::new();
    for (ti, t) in raw_tenants.iter().enumerate() {
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
                format!("'{id}' is not a tenant id (1 to 128 letters, digits, '-', '_' or '.')"),
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
                let ikey = format!("{ckey}.sender_ip_addresses[{ii}]");
                let net = parse_net(ip.get_ref()).map_err(|m| src.error(ip.span(), &ikey, m))?;
                if is_ipv4_mapped(ip.get_ref()) {
                    warnings.push(ConfigWarning {
                        line: src.line(&ip.span()),
                        key: ikey,
                        message: format!(
                            "'{}' is an IPv4-mapped IPv6 address; clients are compared as IPv4, so it is taken as {} (write it so)",
                            ip.get_ref().trim(),
                            net_text(&net)
                        ),
                    });
                }
                nets.push(net);
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
                    return Err(src.error(
                        c.name.span(),
                        &ckey,
                        "a partner connector needs sender_domains (use [\"*\"] for all senders)",
                    ));
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
                        setting_text(src, k, v, &format!("{key}.policy_settings"))?,
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
                        src,
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
        .list(src, t.recipients.as_ref(), recipients_file.as_ref())?;
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
    Ok(tenants)
}
