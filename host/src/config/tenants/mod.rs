//! `[[tenant]]`: each tenant's accepted domains, connectors
//! (`connector.rs`), recipient list (`recipients.rs`) and own policy
//! (`policy.rs`), as written in the file (`raw.rs`), and the warnings that
//! need every tenant at once.

mod connector;
mod policy;
mod raw;
mod recipients;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use attrelay_policy::certname;
use attrelay_policy::model::{Connector, ConnectorKind};

pub use policy::TenantPolicySettings;
pub(super) use raw::RawTenant;

use super::policy::PolicySettings;
use super::source::{ConfigError, ConfigWarning, Source};
use connector::Owner;
use recipients::RecipientSources;

/// A tenant and its connectors.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    /// Normalised (lower case, no trailing dot).
    pub accepted_domains: Vec<String>,
    pub connectors: Vec<Connector>,
    /// The line each of `connectors` starts on.
    pub connector_lines: Vec<usize>,
    pub line: usize,
    /// The tenant's own policy, run after the base attribution.
    pub policy: Option<TenantPolicySettings>,
    /// The tenant's recipients (`recipients` and `recipients_file`
    /// together), canonical. When set, a recipient in any of its accepted
    /// domains that is not listed is refused at `RCPT TO` with
    /// `550 5.1.10` (directory-based edge blocking); `None`: no list, the
    /// policy alone decides.
    pub recipients: Option<Vec<crate::address::Mailbox>>,
    /// The file part of that list came from (resolved), for reload triggers.
    pub recipients_file: Option<PathBuf>,
    /// Where mail for the accepted domains is delivered (`smart_hosts`),
    /// in order; empty: as any other domain's.
    pub smart_hosts: Vec<(String, u16)>,
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

/// What the tenants parsed so far claimed: ids and domains belong to one
/// tenant each.
#[derive(Default)]
struct Claims {
    /// Tenant id → the line it is defined on.
    ids: HashMap<String, usize>,
    /// Accepted domain → its tenant and line.
    domains: HashMap<String, (String, usize)>,
}

/// Validates every `[[tenant]]`; a tenant policy's budgets default to
/// `policy`'s.
pub(super) fn parse(
    src: &Source<'_>,
    raw_tenants: Vec<RawTenant>,
    policy: &PolicySettings,
    resolve: &dyn Fn(&Path) -> PathBuf,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Vec<Tenant>, ConfigError> {
    let mut tenants = Vec::new();
    // Each tenant's connectors' lines, for the warnings below.
    let mut connector_lines = Vec::new();
    let mut claims = Claims::default();
    for (ti, t) in raw_tenants.iter().enumerate() {
        let key = format!("tenant[{ti}]");
        let (tenant, lines) = tenant(src, t, &key, &mut claims, policy, resolve, warnings)?;
        tenants.push(tenant);
        connector_lines.push(lines);
    }
    // Needs every tenant's domains (ownership is global).
    certificate_name_warnings(&tenants, &connector_lines, warnings);
    Ok(tenants)
}

/// One tenant (`key` is `tenant[N]`), and the line each connector starts on.
fn tenant(
    src: &Source<'_>,
    t: &RawTenant,
    key: &str,
    claims: &mut Claims,
    policy: &PolicySettings,
    resolve: &dyn Fn(&Path) -> PathBuf,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<(Tenant, Vec<usize>), ConfigError> {
    let id = tenant_id(src, t, key, claims)?;
    let line = src.line(&t.id.span());
    let accepted = accepted_domains(src, t, key, &id, claims)?;
    let mut connectors: Vec<Connector> = Vec::new();
    let mut lines = Vec::new();
    for (ci, c) in t.connectors.iter().enumerate() {
        let owner = Owner {
            id: &id,
            accepted: &accepted,
            earlier: &connectors,
        };
        let (connector, line) =
            connector::parse(src, c, &format!("{key}.connector[{ci}]"), &owner, warnings)?;
        connectors.push(connector);
        lines.push(line);
    }
    let tenant_policy = policy::parse(src, t, key, policy, resolve)?;
    let recipients_file = t
        .recipients_file
        .as_ref()
        .map(|f| (resolve(f.get_ref()), f.span()));
    let recipients = RecipientSources {
        key,
        tenant: &id,
        accepted: &accepted,
    }
    .list(src, t.recipients.as_ref(), recipients_file.as_ref())?;
    let smart_hosts = smart_hosts(src, t, key)?;
    let tenant = Tenant {
        smart_hosts,
        connector_lines: lines.clone(),
        id,
        accepted_domains: accepted,
        connectors,
        line,
        policy: tenant_policy,
        recipients,
        recipients_file: recipients_file.map(|(path, _)| path),
    };
    Ok((tenant, lines))
}

/// `smart_hosts`: each `host:port`.
fn smart_hosts(
    src: &Source<'_>,
    t: &RawTenant,
    key: &str,
) -> Result<Vec<(String, u16)>, ConfigError> {
    t.smart_hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            crate::delivery::routes::parse_host_port(h.get_ref()).ok_or_else(|| {
                src.error(
                    h.span(),
                    format!("{key}.smart_hosts[{i}]"),
                    format!(
                        "'{}' is not host:port (such as mail.contoso.com:25)",
                        h.get_ref()
                    ),
                )
            })
        })
        .collect()
}

/// The tenant's id: 1 to 128 letters, digits, `-`, `_` or `.`, unique.
fn tenant_id(
    src: &Source<'_>,
    t: &RawTenant,
    key: &str,
    claims: &mut Claims,
) -> Result<String, ConfigError> {
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
    if let Some(line) = claims.ids.get(&id) {
        return Err(src.error(
            t.id.span(),
            format!("{key}.id"),
            format!("duplicate tenant id '{id}' (first defined on line {line})"),
        ));
    }
    claims.ids.insert(id.clone(), src.line(&t.id.span()));
    Ok(id)
}

/// The tenant's accepted domains, normalised; each belongs to one tenant.
fn accepted_domains(
    src: &Source<'_>,
    t: &RawTenant,
    key: &str,
    id: &str,
    claims: &mut Claims,
) -> Result<Vec<String>, ConfigError> {
    let mut accepted = Vec::new();
    for (di, d) in t.accepted_domains.iter().enumerate() {
        let dkey = format!("{key}.accepted_domains[{di}]");
        let domain = certname::validate(d.get_ref(), false)
            .map_err(|e| src.error(d.span(), &dkey, format!("'{}': {e}", d.get_ref())))?;
        if let Some((owner, line)) = claims.domains.get(&domain) {
            return Err(src.error(
                d.span(),
                &dkey,
                format!("domain {domain} is already an accepted domain of tenant '{owner}' (line {line}); a domain belongs to one tenant"),
            ));
        }
        claims
            .domains
            .insert(domain.clone(), (id.to_string(), src.line(&d.span())));
        accepted.push(domain);
    }
    Ok(accepted)
}

/// An on-premises connector whose certificate name's domain is not an
/// accepted domain of its tenant identifies the server but cannot relay
/// NDRs, forwarded mail or mail from domains the tenant does not own.
fn certificate_name_warnings(
    tenants: &[Tenant],
    connector_lines: &[Vec<usize>],
    warnings: &mut Vec<ConfigWarning>,
) {
    for (ti, t) in tenants.iter().enumerate() {
        for (ci, c) in t.connectors.iter().enumerate() {
            let Some(name) = &c.tls_sender_certificate_name else {
                continue;
            };
            if c.kind != ConnectorKind::OnPremises {
                continue;
            }
            let domain = certname::domain_of(name);
            if t.accepted_domains.iter().any(|d| d == domain) {
                continue;
            }
            let fix = t
                .accepted_domains
                .iter()
                .find(|d| domain.ends_with(&format!(".{d}")))
                .map(|d| format!("set it to *.{d} so that the certificate-based rule applies"))
                .unwrap_or_else(|| {
                    format!(
                        "add {domain} to the tenant's accepted domains or use *.<accepted domain>"
                    )
                });
            warnings.push(ConfigWarning {
                line: connector_lines[ti][ci],
                key: format!("tenant[{ti}].connector[{ci}].tls_sender_certificate_name"),
                message: format!(
                    "connector '{}' of tenant '{}' uses certificate name {name}, whose domain {domain} is not an accepted domain of the tenant: it identifies the server but cannot relay NDRs, forwarded mail or mail from domains the tenant does not own; {fix}",
                    c.name, t.id
                ),
            });
        }
    }
}
