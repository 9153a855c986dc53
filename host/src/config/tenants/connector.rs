//! `[[tenant.connector]]`: how a tenant's servers are recognised (IP
//! ranges, a certificate name) and, for partner connectors, which domains
//! they may send for.

use attrelay_policy::certname;
use attrelay_policy::model::{Connector, ConnectorKind};
use toml::Spanned;

use super::super::source::{ConfigError, ConfigWarning, Source};
use super::raw::RawConnector;
use ipnet::IpNet as Net;

use crate::directory::{is_ipv4_mapped, net_text, parse_net};

/// The tenant a connector belongs to, as far as its checks need it.
pub(super) struct Owner<'a> {
    pub(super) id: &'a str,
    /// Normalised accepted domains.
    pub(super) accepted: &'a [String],
    /// The connectors parsed before this one (names are unique per tenant).
    pub(super) earlier: &'a [Connector],
}

/// Validates connector `c` (`key` is `tenant[N].connector[M]`) of `owner`;
/// the connector, and the line it starts on (for warnings).
pub(super) fn parse(
    src: &Source<'_>,
    c: &RawConnector,
    key: &str,
    owner: &Owner<'_>,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<(Connector, usize), ConfigError> {
    let name = c.name.get_ref().trim().to_string();
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(src.error(
            c.name.span(),
            format!("{key}.name"),
            "a connector needs a printable, non-empty name",
        ));
    }
    if owner.earlier.iter().any(|x| x.name == name) {
        return Err(src.error(
            c.name.span(),
            format!("{key}.name"),
            format!(
                "tenant '{}' already has a connector named '{name}'",
                owner.id
            ),
        ));
    }
    let nets = sender_nets(src, c, key, warnings)?;
    let cert_name = match &c.tls_sender_certificate_name {
        Some(n) => Some(certname::validate(n.get_ref(), true).map_err(|e| {
            src.error(
                n.span(),
                format!("{key}.tls_sender_certificate_name"),
                format!("'{}': {e}", n.get_ref()),
            )
        })?),
        None => None,
    };
    if c.kind == ConnectorKind::OnPremises && nets.is_empty() && cert_name.is_none() {
        return Err(src.error(
            c.name.span(),
            key,
            "an on-premises connector identifies servers by sender_ip_addresses, tls_sender_certificate_name, or both; it has neither",
        ));
    }
    let sender_domains = sender_domains(src, &c.sender_domains, key)?;
    let recipient_domains = recipient_domains(src, &c.recipient_domains, key, owner)?;
    let partner_only = !sender_domains.is_empty()
        || !recipient_domains.is_empty()
        || c.restrict_domains_to_ip_addresses
        || c.restrict_domains_to_certificate;
    let misfit = match c.kind {
        ConnectorKind::Partner => partner_misfit(c, &nets, cert_name.is_some(), &sender_domains),
        _ if partner_only => Some(
            "sender_domains, recipient_domains and restrict_domains_to_* apply to partner connectors only",
        ),
        _ => None,
    };
    if let Some(message) = misfit {
        return Err(src.error(c.name.span(), key, message));
    }
    let connector = Connector {
        tenant: owner.id.to_string(),
        name,
        kind: c.kind,
        enabled: c.enabled,
        sender_ip_addresses: nets.iter().map(net_text).collect(),
        tls_sender_certificate_name: cert_name,
        sender_domains,
        recipient_domains,
        restrict_domains_to_ip_addresses: c.restrict_domains_to_ip_addresses,
        restrict_domains_to_certificate: c.restrict_domains_to_certificate,
    };
    Ok((connector, src.line(&c.name.span())))
}

/// `sender_ip_addresses`, parsed; an IPv4-mapped IPv6 range is taken as the
/// IPv4 range it maps, with a warning.
fn sender_nets(
    src: &Source<'_>,
    c: &RawConnector,
    key: &str,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Vec<Net>, ConfigError> {
    let mut nets = Vec::new();
    for (i, ip) in c.sender_ip_addresses.iter().enumerate() {
        let ikey = format!("{key}.sender_ip_addresses[{i}]");
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
    Ok(nets)
}

/// `sender_domains`: domains, or `*` for every sender.
fn sender_domains(
    src: &Source<'_>,
    raw: &[Spanned<String>],
    key: &str,
) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for (i, d) in raw.iter().enumerate() {
        if d.get_ref().trim() == "*" {
            out.push("*".to_string());
            continue;
        }
        out.push(certname::validate(d.get_ref(), false).map_err(|e| {
            src.error(
                d.span(),
                format!("{key}.sender_domains[{i}]"),
                format!("'{}': {e}", d.get_ref()),
            )
        })?);
    }
    Ok(out)
}

/// `recipient_domains`: each an accepted domain of the owner.
fn recipient_domains(
    src: &Source<'_>,
    raw: &[Spanned<String>],
    key: &str,
    owner: &Owner<'_>,
) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for (i, d) in raw.iter().enumerate() {
        let rkey = format!("{key}.recipient_domains[{i}]");
        let domain = certname::validate(d.get_ref(), false)
            .map_err(|e| src.error(d.span(), &rkey, format!("'{}': {e}", d.get_ref())))?;
        if !owner.accepted.contains(&domain) {
            return Err(src.error(
                d.span(),
                &rkey,
                format!(
                    "{domain} is not an accepted domain of tenant '{}'",
                    owner.id
                ),
            ));
        }
        out.push(domain);
    }
    Ok(out)
}

/// What a partner connector lacks, if anything: the IP ranges or the
/// certificate name its restrictions need, or its sender domains.
fn partner_misfit(
    c: &RawConnector,
    nets: &[Net],
    has_cert_name: bool,
    sender_domains: &[String],
) -> Option<&'static str> {
    if c.restrict_domains_to_ip_addresses && nets.is_empty() {
        Some("restrict_domains_to_ip_addresses needs sender_ip_addresses")
    } else if c.restrict_domains_to_certificate && !has_cert_name {
        Some("restrict_domains_to_certificate needs tls_sender_certificate_name")
    } else if sender_domains.is_empty() {
        Some("a partner connector needs sender_domains (use [\"*\"] for all senders)")
    } else {
        None
    }
}
