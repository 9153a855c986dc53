//! `attrelay cert inspect`: what a client certificate carries, whether it
//! verifies, and how every connector sees it. This is the diagnosis the seeds'
//! troubleshooting article walks admins through by hand (subject, issuer,
//! serial, thumbprint against the connector's TlsSenderCertificateName).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;

use attrelay_policy::certname::{self, Specificity};
use attrelay_policy::model::{ClientCertificate, Connector, ConnectorKind, Directory as _};
use attrelay_policy::settings::format_instant;

use super::{EXIT_OK, UsageError, session_time};
use crate::certificate::{
    ChainInspection, MAX_DNS_NAMES, TrustAnchors, inspect_chain_detailed, unix_time,
};
use crate::config::Config;
use crate::directory::Directory;
use crate::pem::read_certificates;

/// The arguments of `attrelay cert inspect`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InspectArgs {
    /// PEM file, leaf first, then intermediates.
    pub pem: PathBuf,
    /// Verify against this configuration's CAs and compare its connectors.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The time to verify at, RFC 3339 (default: now).
    #[arg(long, value_name = "RFC3339")]
    pub at: Option<String>,
}

/// How one connector sees the certificate.
#[derive(Debug, Clone)]
pub struct ConnectorView {
    pub connector: Connector,
    /// The certificate name it matched and how specifically.
    pub matched: Option<(String, Specificity)>,
    /// The connector name's domain is an accepted domain of its tenant.
    pub domain_accepted: bool,
    /// Why it does not match, when it does not.
    pub why_not: Option<String>,
}

/// Labels shared at the end of two names ("mail.contoso.com" and
/// "contoso.com" share 2): how close a non-matching connector came.
pub(super) fn shared_suffix_labels(a: &str, b: &str) -> usize {
    a.rsplit('.')
        .zip(b.rsplit('.'))
        .take_while(|(x, y)| x == y)
        .count()
}

fn why_not(c: &Connector, pattern: &str, names: &[String]) -> String {
    if !c.enabled {
        return "the connector is disabled".into();
    }
    let domain = certname::domain_of(pattern);
    if certname::is_wildcard(pattern) {
        return format!(
            "none of the certificate's names [{}] is {domain} or a subdomain of it",
            names.join(", ")
        );
    }
    if let Some(w) = names
        .iter()
        .find(|n| certname::is_wildcard(n) && certname::matches(n, pattern).is_some())
    {
        return format!(
            "the certificate name {w} is a wildcard, which never matches an exact connector name; set the connector to {w}"
        );
    }
    format!(
        "the exact name {pattern} is not among the certificate's names [{}]",
        names.join(", ")
    )
}

/// Every on-premises connector with a certificate name, as it sees `cert`.
pub fn connector_views(dir: &Directory, cert: &ClientCertificate) -> Vec<ConnectorView> {
    let names = cert.names();
    dir.connectors()
        .iter()
        .filter(|c| c.kind == ConnectorKind::OnPremises)
        .filter_map(|c| {
            let pattern = c.tls_sender_certificate_name.clone()?;
            let matched = names
                .iter()
                .filter_map(|n| certname::matches(&pattern, n).map(|s| (n.clone(), s)))
                // The first of the most specific names (max_by_key keeps the last).
                .rev()
                .max_by_key(|(_, s)| *s);
            let domain = certname::domain_of(&pattern);
            let domain_accepted =
                dir.tenant_of_domain(domain).as_deref() == Some(c.tenant.as_str());
            let why_not = match (&matched, c.enabled) {
                (Some(_), true) => None,
                _ => Some(why_not(c, &pattern, &names)),
            };
            Some(ConnectorView {
                connector: c.clone(),
                matched,
                domain_accepted,
                why_not,
            })
        })
        .collect()
}

pub fn inspect(args: &InspectArgs, out: &mut dyn Write) -> Result<u8, UsageError> {
    let config = match &args.config {
        Some(p) => Some(super::load_config(Some(p))?),
        None => None,
    };
    let time = session_time(args.at.as_deref())?;
    let chain = read_certificates(&args.pem).map_err(UsageError::new)?;
    let anchors = match &config {
        Some(c) => TrustAnchors::load(&c.server.client_ca).map_err(UsageError::new)?,
        None => TrustAnchors::default(),
    };
    let inspection = inspect_chain_detailed(&chain, &anchors, unix_time(time))
        .map_err(|e| UsageError(format!("{}: {e}", args.pem.display())))?;
    write_report(
        args,
        config.as_ref(),
        &anchors,
        &inspection,
        chain.len(),
        time,
        out,
    )
    .map_err(UsageError::new)?;
    Ok(EXIT_OK)
}

/// The CN line: every CN of the subject, and why attribution ignores them
/// when it does (RFC 6125, name constraints).
fn cn_line(inspection: &ChainInspection) -> String {
    let cns = &inspection.subject_common_names;
    match (cns.is_empty(), inspection.cn_ignored) {
        (true, _) => "(none)".into(),
        (false, None) => cns.join(", "),
        (false, Some(why)) => format!("{} (ignored: {why})", cns.join(", ")),
    }
}

/// The DNS SAN line, saying so when names beyond the bound were left out.
fn san_line(inspection: &ChainInspection) -> String {
    let names = &inspection.certificate.dns_names;
    if names.is_empty() {
        return "(none)".into();
    }
    match inspection.dns_names_dropped {
        0 => names.join(", "),
        n => format!(
            "{} (and {n} more, not considered: only the first {MAX_DNS_NAMES} are)",
            names.join(", ")
        ),
    }
}

fn write_report(
    args: &InspectArgs,
    config: Option<&Config>,
    anchors: &TrustAnchors,
    inspection: &ChainInspection,
    chain_len: usize,
    time: i64,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let cert = &inspection.certificate;
    let names = cert.names();
    let mut warnings: Vec<String> = Vec::new();
    writeln!(
        out,
        "certificate {} ({} in chain)",
        args.pem.display(),
        chain_len
    )?;
    writeln!(out, "  subject:     {}", cert.subject)?;
    writeln!(out, "  issuer:      {}", cert.issuer)?;
    writeln!(out, "  serial:      {}", cert.serial)?;
    writeln!(out, "  SHA-256:     {}", cert.sha256_fingerprint)?;
    let validity = if time < cert.not_before {
        "NOT YET VALID"
    } else if time > cert.not_after {
        "EXPIRED"
    } else {
        "valid"
    };
    writeln!(
        out,
        "  validity:    {} to {} ({validity} at {})",
        format_instant(cert.not_before),
        format_instant(cert.not_after),
        format_instant(time)
    )?;
    writeln!(out, "  CN:          {}", cn_line(inspection))?;
    writeln!(out, "  DNS SANs:    {}", san_line(inspection))?;
    if cert.subject == cert.issuer {
        warnings.push("the certificate is self-signed: a relay accepts only certificates signed by a CA it trusts".into());
    }
    if validity != "valid" {
        warnings.push(format!(
            "the certificate is {} at {}",
            validity.to_lowercase(),
            format_instant(time)
        ));
    }
    let Some(config) = config else {
        writeln!(
            out,
            "  chain:       not checked (give --config to verify it against server.client_ca and compare connectors)"
        )?;
        return write_warnings(&warnings, out);
    };
    let sources: Vec<String> = anchors
        .sources
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    if cert.verified {
        writeln!(
            out,
            "  chain:       verified against {} at {}",
            sources.join(", "),
            format_instant(time)
        )?;
    } else {
        let reason = cert
            .verification_error
            .as_deref()
            .unwrap_or("unknown error");
        writeln!(out, "  chain:       NOT verified: {reason}")?;
        warnings.push(format!(
            "the chain does not verify ({reason}): the relay will treat this client as unauthenticated, and only IP-based connectors with accepted sender domains can relay its mail"
        ));
    }

    let dir = config.directory();
    let views = connector_views(&dir, cert);
    writeln!(out, "connectors ({} with a certificate name):", views.len())?;
    let closest = views
        .iter()
        .filter(|v| v.why_not.is_some())
        .max_by_key(|v| {
            let d = certname::domain_of(
                v.connector
                    .tls_sender_certificate_name
                    .as_deref()
                    .unwrap_or_default(),
            )
            .to_string();
            names
                .iter()
                .map(|n| shared_suffix_labels(&d, certname::domain_of(n)))
                .max()
                .unwrap_or(0)
        })
        .map(|v| (v.connector.tenant.clone(), v.connector.name.clone()));
    for v in &views {
        let c = &v.connector;
        let pattern = c.tls_sender_certificate_name.as_deref().unwrap_or_default();
        match (&v.matched, &v.why_not) {
            (Some((name, s)), None) => {
                let kind = if s.exact { "exact" } else { "wildcard" };
                let effect = if v.domain_accepted {
                    format!(
                        "{} is an accepted domain: certificate-based connector (relays NDRs, forwarded mail and any sender)",
                        certname::domain_of(pattern)
                    )
                } else {
                    warnings.push(format!(
                        "connector '{}' (tenant {}) is set to {pattern}, whose domain is not an accepted domain of the tenant: it identifies the server, but NDRs, forwarded mail and mail sent as other domains are refused (ATTR36); set it to *.<accepted domain>",
                        c.name, c.tenant
                    ));
                    format!(
                        "{} is NOT an accepted domain: identifies the server only (sender-domain rule)",
                        certname::domain_of(pattern)
                    )
                };
                writeln!(
                    out,
                    "  MATCH  '{}' (tenant {}) {pattern}: matches {name} ({kind}); {effect}",
                    c.name, c.tenant
                )?;
            }
            (_, Some(why)) => {
                let mark = if closest.as_ref() == Some(&(c.tenant.clone(), c.name.clone())) {
                    "  <- closest"
                } else {
                    ""
                };
                writeln!(
                    out,
                    "  no     '{}' (tenant {}) {pattern}: {why}{mark}",
                    c.name, c.tenant
                )?;
            }
            (None, None) => {}
        }
    }

    // The seeds' advice: a certificate with several host names wants a wildcard connector.
    let hosts: Vec<&String> = names.iter().filter(|n| !certname::is_wildcard(n)).collect();
    for v in views.iter().filter(|v| v.why_not.is_none()) {
        let pattern = v
            .connector
            .tls_sender_certificate_name
            .as_deref()
            .unwrap_or_default();
        if !certname::is_wildcard(pattern) && hosts.len() > 1 {
            let parents: BTreeSet<&str> = hosts
                .iter()
                .filter_map(|h| h.split_once('.').map(|(_, p)| p))
                .collect();
            if let Some(p) = parents
                .iter()
                .find(|p| dir.tenant_of_domain(p).as_deref() == Some(v.connector.tenant.as_str()))
            {
                warnings.push(format!(
                    "the certificate carries several host names ({}); set connector '{}' to *.{p} rather than {pattern}",
                    hosts.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", "),
                    v.connector.name
                ));
            }
        }
    }

    let accepted: Vec<&ConnectorView> = views
        .iter()
        .filter(|v| v.why_not.is_none() && v.domain_accepted)
        .collect();
    let best = accepted
        .iter()
        .filter_map(|v| v.matched.as_ref().map(|m| m.1))
        .max();
    let tenants: BTreeSet<&str> = accepted
        .iter()
        .filter(|v| v.matched.as_ref().map(|m| m.1) == best)
        .map(|v| v.connector.tenant.as_str())
        .collect();
    let summary = match (cert.verified, tenants.len()) {
        (false, _) => "none: the certificate is not verified".to_string(),
        (true, 0) => {
            "none: no certificate-based connector with an accepted domain matches".to_string()
        }
        (true, 1) => format!(
            "tenant {} (relay allowed with any sender, including <>)",
            tenants.iter().next().unwrap_or(&"")
        ),
        (true, _) => format!(
            "ambiguous: tenants {} match equally specifically; nothing is attributed by certificate",
            tenants.into_iter().collect::<Vec<_>>().join(", ")
        ),
    };
    writeln!(out, "attribution by certificate: {summary}")?;
    write_warnings(&warnings, out)
}

fn write_warnings(warnings: &[String], out: &mut dyn Write) -> std::io::Result<()> {
    for w in warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(())
}
