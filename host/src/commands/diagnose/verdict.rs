//! What the relay makes of a certificate a send log recorded: which
//! connector and tenant it is attributed to, or why not, and the fix, in
//! the words of the reference (steps 2 and 3, and its troubleshooting
//! article: a certificate renewed under another name, a connector set to a
//! host name, a domain that is not accepted, a name two tenants claim).

use std::collections::BTreeSet;

use attrelay_policy::certname;
use attrelay_policy::model::{ClientCertificate, Directory as _};
use serde::Serialize;

use super::super::inspect::{ConnectorView, connector_views, shared_suffix_labels};
use super::sendlog::SentCertificate;
use crate::directory::Directory;

/// What a log cannot show, said with every verdict that depends on it.
pub const UNSEEN: &str = "a send log records the certificate, not whether its chain verifies: the relay also needs the intermediates the server sends and a CA in [server] client_ca, which `attrelay cert inspect FILE --config ...` checks on the certificate file";

/// How a certificate is attributed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// Certificate-based: relays any sender, NDRs and forwarded mail.
    Attributed { tenant: String, connector: String },
    /// A host-name connector: identifies the server only; relaying needs
    /// MAIL FROM in one of the tenant's accepted domains (else ATTR36).
    IdentifiesOnly { tenant: String, connector: String },
    /// Connectors of several tenants match equally: nothing attributed.
    Ambiguous { tenants: Vec<String> },
    /// No connector matches.
    NoMatch,
}

/// One certificate's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The names attribution considers (SANs, else the CN).
    pub names: Vec<String>,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Why, in words.
    pub why: String,
    /// What to change; empty when nothing needs to.
    pub fix: String,
    /// What else to know about this verdict.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// The verdict on `sent` for the directory `dir`.
pub fn verdict(dir: &Directory, sent: &SentCertificate) -> Verdict {
    let cert = ClientCertificate {
        // A log cannot tell; the verdict says what follows if it verifies.
        verified: true,
        verification_error: None,
        subject: sent.subject.clone(),
        common_names: sent.common_names(),
        dns_names: sent.alternate_names.clone(),
        issuer: sent.issuer.clone(),
        serial: sent.serial.clone(),
        sha256_fingerprint: String::new(),
        not_before: 0,
        not_after: i64::MAX,
    };
    let names = cert.names();
    let views = connector_views(dir, &cert);
    let matching: Vec<&ConnectorView> = views.iter().filter(|v| v.why_not.is_none()).collect();
    let accepted: Vec<&&ConnectorView> = matching.iter().filter(|v| v.domain_accepted).collect();
    let best = accepted
        .iter()
        .filter_map(|v| v.matched.as_ref().map(|m| m.1))
        .max();
    let top: Vec<&&&ConnectorView> = accepted
        .iter()
        .filter(|v| v.matched.as_ref().map(|m| m.1) == best)
        .collect();
    let tenants: BTreeSet<&str> = top.iter().map(|v| v.connector.tenant.as_str()).collect();
    if names.is_empty() {
        return Verdict {
            names,
            outcome: Outcome::NoMatch,
            why: format!("the log records no usable name (subject '{}')", sent.subject),
            fix: "send a certificate whose subject or alternative names carry the server's DNS name under an accepted domain".into(),
            note: String::new(),
        };
    }
    let mut v = match (tenants.len(), top.first()) {
        (1, Some(v)) => attributed(names, v),
        (n, _) if n > 1 => ambiguous(names, tenants),
        _ => match matching.first() {
            Some(v) => identifies_only(dir, names, v, matching.len() - 1),
            None => no_match(dir, names, &views),
        },
    };
    if sent.alternate_names.is_empty() {
        v.note = "the log lists no alternate names (Exchange 2010 logs none): judged by the subject's CN, while the relay judges a certificate that has DNS names by those".into();
    }
    v
}

fn pattern(v: &ConnectorView) -> &str {
    v.connector
        .tls_sender_certificate_name
        .as_deref()
        .unwrap_or_default()
}

fn attributed(names: Vec<String>, v: &ConnectorView) -> Verdict {
    Verdict {
        why: format!(
            "{} ({}) matches and {} is an accepted domain of tenant {}: certificate-based, it relays any sender, NDRs and forwarded mail included",
            v.connector.label(),
            pattern(v),
            certname::domain_of(pattern(v)),
            v.connector.tenant
        ),
        outcome: Outcome::Attributed {
            tenant: v.connector.tenant.clone(),
            connector: v.connector.name.clone(),
        },
        fix: String::new(),
        note: String::new(),
        names,
    }
}

fn ambiguous(names: Vec<String>, tenants: BTreeSet<&str>) -> Verdict {
    let list: Vec<String> = tenants.iter().map(|t| t.to_string()).collect();
    Verdict {
        why: format!(
            "certificate-based connectors of tenants {} match it equally specifically: it attributes the session to neither, and unless an IP connector identifies the server, recipients outside the tenants get 550 5.7.64 TenantAttribution",
            list.join(" and ")
        ),
        fix: "give one tenant's connector a more specific name (an exact host name beats a wildcard, a longer domain a shorter one), or give each tenant's server a certificate of its own".into(),
        outcome: Outcome::Ambiguous { tenants: list },
        note: String::new(),
        names,
    }
}

fn identifies_only(
    dir: &Directory,
    names: Vec<String>,
    v: &ConnectorView,
    others: usize,
) -> Verdict {
    let domain = certname::domain_of(pattern(v));
    let accepted = dir.accepted_domains(&v.connector.tenant);
    let parent = accepted
        .iter()
        .find(|d| domain.ends_with(&format!(".{d}")))
        .cloned();
    let fix = match parent {
        Some(d) => format!(
            "set TlsSenderCertificateName (tls_sender_certificate_name) of {} to *.{d}: then the certificate attributes the session, and NDRs, forwarded mail and any sender are relayed",
            v.connector.label()
        ),
        None => format!(
            "{domain} is not under an accepted domain of tenant {}: add it to the tenant's accepted domains, or issue the server a certificate named under one of [{}] and set the connector to *.<that domain>",
            v.connector.tenant,
            accepted.join(", ")
        ),
    };
    Verdict {
        why: format!(
            "{} ({}) matches, but {domain} is not an accepted domain of tenant {}: it identifies the server only, so mail is relayed when MAIL FROM is in one of the tenant's domains, and NDRs, forwarded mail and other senders get ATTR36",
            v.connector.label(),
            pattern(v),
            v.connector.tenant
        ),
        outcome: Outcome::IdentifiesOnly {
            tenant: v.connector.tenant.clone(),
            connector: v.connector.name.clone(),
        },
        fix,
        note: if others > 0 {
            format!(
                "{others} other connector(s) match it the same way; the sender domain picks among their tenants"
            )
        } else {
            String::new()
        },
        names,
    }
}

fn no_match(dir: &Directory, names: Vec<String>, views: &[ConnectorView]) -> Verdict {
    let closest = views
        .iter()
        .map(|v| {
            let near = names
                .iter()
                .map(|n| {
                    shared_suffix_labels(certname::domain_of(pattern(v)), certname::domain_of(n))
                })
                .max()
                .unwrap_or(0);
            (near, v)
        })
        .filter(|(near, _)| *near >= 2)
        .max_by_key(|(near, _)| *near)
        .map(|(_, v)| v);
    let owner = names.iter().find_map(|n| {
        dir.tenant_of_domain(certname::domain_of(n))
            .map(|t| (n.clone(), t))
    });
    // A connector that matches but is disabled explains it first.
    let disabled = views
        .iter()
        .find(|v| v.matched.is_some() && !v.connector.enabled);
    let closest = disabled.or(closest);
    let (why, fix) = match (closest, owner) {
        (Some(v), _) if !v.connector.enabled => (
            format!("{} ({}) would match, but it is disabled", v.connector.label(), pattern(v)),
            format!("enable {}", v.connector.label()),
        ),
        (Some(v), _) => (
            format!(
                "no connector matches; the closest, {}, expects {} and the certificate carries [{}]: was the certificate renewed under another name?",
                v.connector.label(),
                pattern(v),
                names.join(", ")
            ),
            format!(
                "set tls_sender_certificate_name of {} to a name the new certificate carries under an accepted domain (a wildcard *.<accepted domain> covers every host), or send the certificate the connector names (on Exchange: rerun the Hybrid Configuration Wizard and pick the new certificate on its transport certificate page)",
                v.connector.label()
            ),
        ),
        (None, Some((name, tenant))) => (
            format!("no connector of any tenant matches {name}, though its domain is an accepted domain of tenant {tenant}"),
            format!("give tenant {tenant} an on-premises connector with tls_sender_certificate_name = \"*.{}\"", certname::domain_of(&name)),
        ),
        (None, None) => (
            format!("no connector matches [{}], and no tenant accepts any of their domains", names.join(", ")),
            "check that the server sends the certificate meant for this relay, and that this is the relay's configuration (--config)".into(),
        ),
    };
    Verdict {
        names,
        outcome: Outcome::NoMatch,
        why,
        fix,
        note: String::new(),
    }
}
