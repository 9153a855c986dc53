//! The directory a host hands the gateway: the relay's `[[tenant]]` tables,
//! as TOML or as the same keys in JSON, checked as the relay checks them
//! and indexed into an [`attrelay_engine::directory::Directory`].
//!
//! Errors name the key (`tenant[1].connector[0].sender_ip_addresses[2]`)
//! and, for TOML, the line: a gateway has no file of its own to name.

use std::collections::{BTreeMap, HashMap};

use attrelay_engine::address::Mailbox;
use attrelay_engine::directory::{Directory, TenantRecord, net_text, parse_net};
use attrelay_policy::certname;
use attrelay_policy::model::{Connector, ConnectorKind};
use serde::Deserialize;

/// How the directory text is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

/// The longest directory text accepted (a host's configuration mistake,
/// such as handing over a mail spool, should not exhaust the instance's
/// memory before it is reported).
pub const MAX_DIRECTORY_BYTES: usize = 64 * 1024 * 1024;

/// A tenant's keys, as `relay.toml` writes them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    #[serde(default)]
    tenant: Vec<RawTenant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: String,
    #[serde(default)]
    accepted_domains: Vec<String>,
    #[serde(default, rename = "connector")]
    connectors: Vec<RawConnector>,
    recipients: Option<Vec<String>>,
    /// Refused: see [`refused_keys`].
    recipients_file: Option<serde::de::IgnoredAny>,
    policy: Option<serde::de::IgnoredAny>,
    policy_settings: Option<serde::de::IgnoredAny>,
    policy_timeout_ms: Option<serde::de::IgnoredAny>,
    policy_memory_limit_mib: Option<serde::de::IgnoredAny>,
    /// Delivery, not judgement: accepted so that the relay's tables load
    /// unchanged, and not used.
    #[serde(default)]
    #[allow(dead_code)]
    smart_hosts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnector {
    name: String,
    #[serde(rename = "type")]
    kind: ConnectorKind,
    #[serde(default)]
    sender_ip_addresses: Vec<String>,
    tls_sender_certificate_name: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    sender_domains: Vec<String>,
    #[serde(default)]
    recipient_domains: Vec<String>,
    #[serde(default)]
    restrict_domains_to_ip_addresses: bool,
    #[serde(default)]
    restrict_domains_to_certificate: bool,
}

fn yes() -> bool {
    true
}

/// A validated tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub accepted_domains: Vec<String>,
    pub connectors: Vec<Connector>,
    pub recipients: Option<Vec<Mailbox>>,
}

/// Parses, checks and indexes `text`.
pub fn load(text: &str, format: Format) -> Result<Directory, String> {
    let tenants = parse(text, format)?;
    Ok(Directory::from_tenants(tenants.iter().map(|t| {
        TenantRecord {
            id: &t.id,
            accepted_domains: &t.accepted_domains,
            connectors: &t.connectors,
            recipients: t.recipients.as_deref(),
        }
    })))
}

/// Parses and checks `text` into tenants.
pub fn parse(text: &str, format: Format) -> Result<Vec<Tenant>, String> {
    if text.len() > MAX_DIRECTORY_BYTES {
        return Err(format!(
            "directory: {} bytes, more than {MAX_DIRECTORY_BYTES}",
            text.len()
        ));
    }
    let raw: RawDocument = match format {
        Format::Toml => toml::from_str(text).map_err(|e| format!("directory (TOML): {e}"))?,
        Format::Json => serde_json::from_str(text).map_err(|e| format!("directory (JSON): {e}"))?,
    };
    let mut claims = Claims::default();
    raw.tenant
        .iter()
        .enumerate()
        .map(|(i, t)| tenant(t, &format!("tenant[{i}]"), &mut claims))
        .collect()
}

/// Ids and domains claimed so far: each belongs to one tenant.
#[derive(Default)]
struct Claims {
    ids: HashMap<String, String>,
    domains: BTreeMap<String, String>,
}

fn tenant(t: &RawTenant, key: &str, claims: &mut Claims) -> Result<Tenant, String> {
    refused_keys(t, key)?;
    let id = t.id.trim().to_string();
    let id_ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !id_ok {
        return Err(format!(
            "{key}.id: '{}' is not a tenant id (1 to 128 letters, digits, '-', '_' or '.')",
            printable(&id)
        ));
    }
    if let Some(first) = claims.ids.insert(id.clone(), key.to_string()) {
        return Err(format!(
            "{key}.id: duplicate tenant id '{id}' (first at {first})"
        ));
    }
    let mut accepted = Vec::new();
    for (i, d) in t.accepted_domains.iter().enumerate() {
        let dkey = format!("{key}.accepted_domains[{i}]");
        let domain =
            certname::validate(d, false).map_err(|e| format!("{dkey}: '{}': {e}", printable(d)))?;
        if let Some(owner) = claims.domains.insert(domain.clone(), id.clone()) {
            return Err(format!(
                "{dkey}: domain {domain} is already an accepted domain of tenant '{owner}'; a domain belongs to one tenant"
            ));
        }
        accepted.push(domain);
    }
    let mut connectors: Vec<Connector> = Vec::new();
    for (i, c) in t.connectors.iter().enumerate() {
        let c = connector(
            c,
            &format!("{key}.connector[{i}]"),
            &id,
            &accepted,
            &connectors,
        )?;
        connectors.push(c);
    }
    let recipients = match &t.recipients {
        None => None,
        Some(list) => Some(recipients(list, key, &id, &accepted)?),
    };
    Ok(Tenant {
        id,
        accepted_domains: accepted,
        connectors,
        recipients,
    })
}

/// Keys of the relay's tables the gateway cannot honour. Each is refused,
/// never ignored: without the tenant's own rules or its recipient file the
/// gateway would accept mail the relay refuses.
fn refused_keys(t: &RawTenant, key: &str) -> Result<(), String> {
    if t.recipients_file.is_some() {
        return Err(format!(
            "{key}.recipients_file: the gateway reads no files; give the list inline as recipients"
        ));
    }
    let policy_keys = [
        ("policy", t.policy.is_some()),
        ("policy_settings", t.policy_settings.is_some()),
        ("policy_timeout_ms", t.policy_timeout_ms.is_some()),
        (
            "policy_memory_limit_mib",
            t.policy_memory_limit_mib.is_some(),
        ),
    ];
    if let Some((name, _)) = policy_keys.iter().find(|(_, set)| *set) {
        return Err(format!(
            "{key}.{name}: tenant policies run in the relay, not in the gateway component; judging this tenant without its rules would be more lenient than the relay"
        ));
    }
    Ok(())
}

fn connector(
    c: &RawConnector,
    key: &str,
    tenant: &str,
    accepted: &[String],
    earlier: &[Connector],
) -> Result<Connector, String> {
    let name = c.name.trim().to_string();
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(format!(
            "{key}.name: a connector needs a printable, non-empty name"
        ));
    }
    if earlier.iter().any(|x| x.name == name) {
        return Err(format!(
            "{key}.name: tenant '{tenant}' already has a connector named '{}'",
            printable(&name)
        ));
    }
    let mut nets = Vec::new();
    for (i, ip) in c.sender_ip_addresses.iter().enumerate() {
        let net = parse_net(ip).map_err(|m| format!("{key}.sender_ip_addresses[{i}]: {m}"))?;
        nets.push(net_text(&net));
    }
    let cert_name =
        match &c.tls_sender_certificate_name {
            Some(n) => Some(certname::validate(n, true).map_err(|e| {
                format!("{key}.tls_sender_certificate_name: '{}': {e}", printable(n))
            })?),
            None => None,
        };
    let sender_domains = c
        .sender_domains
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if d.trim() == "*" {
                return Ok("*".to_string());
            }
            certname::validate(d, false)
                .map_err(|e| format!("{key}.sender_domains[{i}]: '{}': {e}", printable(d)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut recipient_domains = Vec::new();
    for (i, d) in c.recipient_domains.iter().enumerate() {
        let rkey = format!("{key}.recipient_domains[{i}]");
        let domain =
            certname::validate(d, false).map_err(|e| format!("{rkey}: '{}': {e}", printable(d)))?;
        if !accepted.contains(&domain) {
            return Err(format!(
                "{rkey}: {domain} is not an accepted domain of tenant '{tenant}'"
            ));
        }
        recipient_domains.push(domain);
    }
    kind_fits(
        c,
        key,
        !nets.is_empty(),
        cert_name.is_some(),
        &sender_domains,
        &recipient_domains,
    )?;
    Ok(Connector {
        tenant: tenant.to_string(),
        name,
        kind: c.kind,
        enabled: c.enabled,
        sender_ip_addresses: nets,
        tls_sender_certificate_name: cert_name,
        sender_domains,
        recipient_domains,
        restrict_domains_to_ip_addresses: c.restrict_domains_to_ip_addresses,
        restrict_domains_to_certificate: c.restrict_domains_to_certificate,
    })
}

/// The relay's rules for each kind: an on-premises connector identifies
/// servers by address or certificate and has no partner keys; a partner
/// connector has sender domains and what its restrictions need.
fn kind_fits(
    c: &RawConnector,
    key: &str,
    has_nets: bool,
    has_cert_name: bool,
    sender_domains: &[String],
    recipient_domains: &[String],
) -> Result<(), String> {
    let partner_only = !sender_domains.is_empty()
        || !recipient_domains.is_empty()
        || c.restrict_domains_to_ip_addresses
        || c.restrict_domains_to_certificate;
    let misfit = match c.kind {
        ConnectorKind::OnPremises if !has_nets && !has_cert_name => Some(
            "an on-premises connector identifies servers by sender_ip_addresses, tls_sender_certificate_name, or both; it has neither",
        ),
        ConnectorKind::OnPremises if partner_only => Some(
            "sender_domains, recipient_domains and restrict_domains_to_* apply to partner connectors only",
        ),
        ConnectorKind::Partner if c.restrict_domains_to_ip_addresses && !has_nets => {
            Some("restrict_domains_to_ip_addresses needs sender_ip_addresses")
        }
        ConnectorKind::Partner if c.restrict_domains_to_certificate && !has_cert_name => {
            Some("restrict_domains_to_certificate needs tls_sender_certificate_name")
        }
        ConnectorKind::Partner if sender_domains.is_empty() => {
            Some("a partner connector needs sender_domains (use [\"*\"] for all senders)")
        }
        _ => None,
    };
    misfit.map_or(Ok(()), |m| Err(format!("{key}: {m}")))
}

/// `recipients`: mailboxes in the tenant's accepted domains; never empty
/// (an empty list would refuse every recipient of the tenant).
fn recipients(
    list: &[String],
    key: &str,
    tenant: &str,
    accepted: &[String],
) -> Result<Vec<Mailbox>, String> {
    if list.is_empty() {
        return Err(format!(
            "{key}.recipients: the recipient list of tenant '{tenant}' is empty: every recipient in its domains would get 550 5.1.10; list them, or leave recipients out to let the policy decide"
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, text)| {
            let ekey = format!("{key}.recipients[{i}]");
            let mailbox = Mailbox::parse(text.trim(), false).map_err(|e| {
                format!(
                    "{ekey}: '{}' is not an address local@domain: {e}",
                    printable(text)
                )
            })?;
            let domain = mailbox.domain().as_str();
            if !accepted.iter().any(|d| d == domain) {
                return Err(format!(
                    "{ekey}: {domain} is not an accepted domain of tenant '{tenant}'"
                ));
            }
            Ok(mailbox)
        })
        .collect()
}

/// Untrusted text quoted in an error: printable ASCII, at most 80 characters.
fn printable(s: &str) -> String {
    s.chars()
        .take(80)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLES: &str = r#"
[[tenant]]
id = "contoso"
accepted_domains = ["contoso.com"]
smart_hosts = ["mail.contoso.com:25"]
[[tenant.connector]]
name = "Contoso relay"
type = "on-premises"
sender_ip_addresses = ["203.0.113.0/24"]
tls_sender_certificate_name = "*.contoso.com"
"#;

    #[test]
    fn the_relays_tables_load_as_toml_and_as_json() {
        let toml_tenants = parse(TABLES, Format::Toml).unwrap();
        let json = r#"{"tenant": [{"id": "contoso", "accepted_domains": ["contoso.com"],
            "connector": [{"name": "Contoso relay", "type": "on-premises",
            "sender_ip_addresses": ["203.0.113.0/24"], "tls_sender_certificate_name": "*.contoso.com"}]}]}"#;
        let json_tenants = parse(json, Format::Json).unwrap();
        assert_eq!(toml_tenants[0].connectors, json_tenants[0].connectors);
        assert_eq!(toml_tenants[0].connectors[0].tenant, "contoso");
    }

    #[test]
    fn what_the_gateway_cannot_honour_is_refused_by_key() {
        let with_policy = format!("{TABLES}\n[[tenant]]\nid = \"x\"\npolicy = \"x.wasm\"\n");
        let e = parse(&with_policy, Format::Toml).unwrap_err();
        assert!(e.starts_with("tenant[1].policy: "), "{e}");
        let with_file = "[[tenant]]\nid = \"x\"\nrecipients_file = \"r.txt\"\n";
        let e = parse(with_file, Format::Toml).unwrap_err();
        assert!(e.starts_with("tenant[0].recipients_file: "), "{e}");
        let typo = "[[tenant]]\nid = \"x\"\naccepted_domain = [\"x.com\"]\n";
        let e = parse(typo, Format::Toml).unwrap_err();
        assert!(e.contains("line 3") && e.contains("accepted_domain"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "[[tenant]]\nid = \"a\"\naccepted_domains = [\"a.com\"]\n[[tenant]]\nid = \"b\"\naccepted_domains = [\"A.com.\"]\n",
                "tenant[1].accepted_domains[0]: domain a.com",
            ),
            (
                "[[tenant]]\nid = \"a\"\n[[tenant.connector]]\nname = \"c\"\ntype = \"on-premises\"\nsender_ip_addresses = [\"10.0.0.0/33\"]\n",
                "tenant[0].connector[0].sender_ip_addresses[0]: ",
            ),
            (
                "[[tenant]]\nid = \"a\"\n[[tenant.connector]]\nname = \"c\"\ntype = \"partner\"\n",
                "tenant[0].connector[0]: a partner connector needs sender_domains",
            ),
            (
                "[[tenant]]\nid = \"a\"\naccepted_domains = [\"a.com\"]\nrecipients = [\"x@b.com\"]\n",
                "tenant[0].recipients[0]: b.com is not an accepted domain",
            ),
        ];
        for (text, expected) in cases {
            let e = parse(text, Format::Toml).unwrap_err();
            assert!(e.starts_with(expected), "{e}");
        }
    }
}
