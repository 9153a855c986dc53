//! The decision procedure of the reference ("Decision procedure, per
//! recipient"), for one SMTP session.
//!
//! A [`Session`] is opened with the session's facts. The certificate and the
//! client IP are analysed once (they do not change within a session);
//! `mail_from` then computes the origin of the transaction (who sent it, and
//! whether relaying is allowed), and `rcpt_to` answers each recipient from it.

use std::collections::BTreeSet;

use crate::certname::{self, Specificity};
use crate::model::{Action, Connector, ConnectorKind, Directory, SessionFacts, Verdict};
use crate::replies::{self, reason};
use crate::settings::{GraceMode, Settings, format_instant};

/// How many tenants "closest connector" explanations look at, at most.
const MAX_CLOSEST_TENANTS: usize = 4;

/// A connector whose certificate name matches one of the certificate's names.
#[derive(Clone, Debug)]
struct CertMatch {
    connector: Connector,
    cert_name: String,
    specificity: Specificity,
    /// The connector name's domain is an accepted domain of its tenant.
    domain_accepted: bool,
}

/// What the client certificate establishes, computed once per session.
#[derive(Debug, Default)]
struct CertAnalysis {
    /// Enabled on-premises connectors matched by a verified certificate.
    matches: Vec<CertMatch>,
    /// The tenant and match that attribute the session by certificate (step 2).
    attributed: Option<CertMatch>,
    /// Tenants tied for the most specific match, when more than one.
    tie: Vec<String>,
    lines: Vec<String>,
}

/// Who a transaction comes from.
#[derive(Clone, Debug)]
enum Origin {
    /// Step 2: a certificate-based connector with an accepted domain.
    Certificate(CertMatch),
    /// Step 3: a connector identified the server and the sender domain is accepted.
    Identified { tenant: String },
    /// Step 3, ATTR36: connectors identified the server, but the sender domain
    /// belongs to none of their tenants.
    Unrecognized { connectors: Vec<Connector> },
    /// No connector identified the server.
    Unknown,
}

#[derive(Debug)]
struct Transaction {
    sender_domain: Option<String>,
    origin: Origin,
    lines: Vec<String>,
}

/// One SMTP session as the default policy sees it.
pub struct Session<D> {
    dir: D,
    settings: Settings,
    facts: SessionFacts,
    cert: CertAnalysis,
    /// Enabled on-premises connectors whose sender IP addresses contain the client IP.
    ip_connectors: Vec<Connector>,
    /// Every connector (any kind, enabled or not) containing the client IP.
    all_ip_connectors: Vec<Connector>,
    tx: Option<Transaction>,
}

/// The domain of an address (after the last `@`), normalised; `None` for the
/// null sender or an address without a domain.
pub fn domain_of_address(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    let d = certname::normalize(domain.trim_end_matches('>'));
    (!d.is_empty()).then_some(d)
}

/// How many names a list in an explanation shows.
const MAX_LISTED: usize = 8;
/// Explanation bounds, inside what hosts accept (64 lines of 1000 bytes).
const MAX_LINES: usize = 60;
const MAX_LINE: usize = 900;

fn list(names: &[String]) -> String {
    match names.len() {
        0 => "(none)".to_string(),
        n if n <= MAX_LISTED => names.join(", "),
        n => format!(
            "{}, ... ({} more)",
            names[..MAX_LISTED].join(", "),
            n - MAX_LISTED
        ),
    }
}

/// Keeps an explanation within the host's limits whatever the input (a
/// certificate with thousands of names, a tenant with hundreds of
/// connectors): a policy that produced an oversized verdict would fail closed.
fn bounded(mut lines: Vec<String>) -> Vec<String> {
    for l in lines.iter_mut() {
        if l.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !l.is_char_boundary(cut) {
                cut -= 1;
            }
            l.truncate(cut);
            l.push_str(" ...");
        }
    }
    if lines.len() > MAX_LINES {
        let more = lines.len() - (MAX_LINES - 1);
        lines.truncate(MAX_LINES - 1);
        lines.push(format!("... ({more} more lines)"));
    }
    lines
}

impl<D: Directory> Session<D> {
    /// Opens a session: analyses the client certificate and the client IP.
    pub fn open(dir: D, settings: Settings, facts: SessionFacts) -> Self {
        let all_ip_connectors = dir.connectors_by_ip(facts.client_ip);
        let ip_connectors = all_ip_connectors
            .iter()
            .filter(|c| c.enabled && c.kind == ConnectorKind::OnPremises)
            .cloned()
            .collect();
        let cert = analyse_certificate(&dir, &facts);
        Session {
            dir,
            settings,
            facts,
            cert,
            ip_connectors,
            all_ip_connectors,
            tx: None,
        }
    }

    /// MAIL FROM: starts a transaction and works out its origin (steps 2 and 3).
    /// `sender` is the reverse-path address, empty for the null sender.
    pub fn mail_from(&mut self, sender: &str) -> Verdict {
        let sender_domain = domain_of_address(sender);
        let mut lines = self.session_lines();
        let sender_tenant = sender_domain
            .as_deref()
            .and_then(|d| self.dir.tenant_of_domain(d));
        match (&sender_domain, &sender_tenant) {
            (None, _) if sender.is_empty() => lines.push(
                "sender: null reverse-path <> (an NDR): only a certificate-based connector can relay it"
                    .to_string(),
            ),
            (None, _) => lines.push(format!("sender: '{sender}' has no domain")),
            (Some(d), Some(t)) => {
                lines.push(format!("sender domain {d} is an accepted domain of tenant {t}"))
            }
            (Some(d), None) => lines.push(format!("sender domain {d} is not an accepted domain of any tenant")),
        }

        let origin = if let Some(m) = &self.cert.attributed {
            lines.push(format!(
                "originating: {} matches certificate name {} and its domain {} is accepted by tenant {}: relay allowed with any sender",
                m.connector.label(),
                m.cert_name,
                certname::domain_of(m.connector.tls_sender_certificate_name.as_deref().unwrap_or_default()),
                m.connector.tenant
            ));
            Origin::Certificate(m.clone())
        } else {
            // Step 3: connectors that identify the server without attributing
            // it: IP connectors, and certificate names whose domain is not
            // accepted. A certificate-based connector tied with another
            // tenant's attributes nothing, and identifies nothing either
            // (reference, steps 2 and 3): the sender domain cannot pick one.
            let mut identifying: Vec<Connector> = self.ip_connectors.clone();
            for m in &self.cert.matches {
                if !m.domain_accepted && !identifying.iter().any(|c| c.same_as(&m.connector)) {
                    identifying.push(m.connector.clone());
                }
            }
            let owner = sender_tenant
                .as_ref()
                .and_then(|t| identifying.iter().find(|c| &c.tenant == t));
            match owner {
                Some(c) => {
                    lines.push(format!(
                        "originating: {} identified the server and the sender domain is accepted by tenant {}: relay allowed",
                        c.label(),
                        c.tenant
                    ));
                    Origin::Identified {
                        tenant: c.tenant.clone(),
                    }
                }
                None if !identifying.is_empty() => {
                    let tenants: BTreeSet<&str> =
                        identifying.iter().map(|c| c.tenant.as_str()).collect();
                    lines.push(format!(
                        "ATTR36: the server was identified for tenant(s) {} but the sender {} is not an accepted domain of it; relaying needs a certificate-based connector whose name's domain is accepted",
                        tenants.into_iter().collect::<Vec<_>>().join(", "),
                        sender_domain.as_deref().map(|d| format!("domain {d}")).unwrap_or_else(|| "<>".into())
                    ));
                    Origin::Unrecognized {
                        connectors: identifying,
                    }
                }
                None if !self.cert.tie.is_empty() => {
                    lines.push(format!(
                        "no tenant attributed: the certificate matches certificate-based connectors of tenants {} equally specifically, so it attributes the session to neither, and no IP connector identified the server; give one connector a more specific name (an exact host name beats a wildcard, a longer domain a shorter one), or issue each tenant's server its own certificate",
                        self.cert.tie.join(" and ")
                    ));
                    Origin::Unknown
                }
                None => {
                    lines.push(
                        "no connector identified the server by IP address or certificate"
                            .to_string(),
                    );
                    self.explain_closest(sender_tenant.as_deref(), &mut lines);
                    Origin::Unknown
                }
            }
        };

        let tenant = match &origin {
            Origin::Certificate(m) => Some(m.connector.tenant.clone()),
            Origin::Identified { tenant, .. } => Some(tenant.clone()),
            _ => None,
        };
        let why = match &origin {
            Origin::Certificate(_) => reason::ORIGINATING_CERTIFICATE,
            Origin::Identified { .. } => reason::ORIGINATING_IP,
            _ => reason::SENDER,
        };
        let mut v = replies::verdict(Action::Accept, 250, "2.1.0", "Sender OK", tenant, why);
        v.explanation = bounded(lines.clone());
        self.tx = Some(Transaction {
            sender_domain,
            origin,
            lines,
        });
        v
    }

    /// RCPT TO: the verdict for one recipient (steps 2 to 5).
    pub fn rcpt_to(&mut self, recipient: &str) -> Verdict {
        let Some(tx) = &self.tx else {
            return replies::verdict(
                Action::Reject,
                503,
                "5.5.1",
                "MAIL FROM first",
                None,
                reason::SEQUENCE,
            );
        };
        let mut lines = tx.lines.clone();
        let rcpt_domain = domain_of_address(recipient);
        let rcpt_tenant = rcpt_domain
            .as_deref()
            .and_then(|d| self.dir.tenant_of_domain(d));

        let mut v = match &tx.origin {
            Origin::Certificate(m) => {
                lines.push(format!(
                    "recipient {recipient}: relay allowed for tenant {}",
                    m.connector.tenant
                ));
                replies::recipient_ok(
                    Some(m.connector.tenant.clone()),
                    reason::ORIGINATING_CERTIFICATE,
                )
            }
            Origin::Identified { tenant, .. } => {
                lines.push(format!(
                    "recipient {recipient}: relay allowed for tenant {tenant}"
                ));
                replies::recipient_ok(Some(tenant.clone()), reason::ORIGINATING_IP)
            }
            _ if rcpt_tenant.is_some() => {
                let t = rcpt_tenant.clone().unwrap_or_default();
                self.incoming(
                    recipient,
                    rcpt_domain.as_deref().unwrap_or_default(),
                    &t,
                    &mut lines,
                )
            }
            Origin::Unrecognized { connectors } => {
                let tenants: BTreeSet<&str> =
                    connectors.iter().map(|c| c.tenant.as_str()).collect();
                let tenant = (tenants.len() == 1)
                    .then(|| tenants.iter().next().map(|t| t.to_string()))
                    .flatten();
                self.attr36(recipient, tx, tenant, &mut lines)
            }
            Origin::Unknown => {
                lines.push(format!(
                    "recipient {recipient}: its domain is not an accepted domain of any tenant and no tenant was attributed: relay denied"
                ));
                replies::verdict(
                    Action::Reject,
                    550,
                    "5.7.64",
                    replies::TENANT_ATTRIBUTION,
                    None,
                    reason::TENANT_ATTRIBUTION,
                )
            }
        };
        if v.explanation.is_empty() {
            v.explanation = bounded(lines);
        }
        v
    }

    /// Step 4: incoming mail for tenant `tenant`, subject to its partner connectors.
    fn incoming(
        &self,
        recipient: &str,
        rcpt_domain: &str,
        tenant: &str,
        lines: &mut Vec<String>,
    ) -> Verdict {
        lines.push(format!("recipient {recipient}: {rcpt_domain} is an accepted domain of tenant {tenant}: incoming mail"));
        let sender_domain = self.tx.as_ref().and_then(|t| t.sender_domain.clone());
        let in_scope: Vec<Connector> = self
            .dir
            .connectors_of_tenant(tenant)
            .into_iter()
            .filter(|c| c.kind == ConnectorKind::Partner && c.enabled)
            .filter(|c| c.restrict_domains_to_ip_addresses || c.restrict_domains_to_certificate)
            .filter(|c| {
                c.sender_domains.iter().any(|d| {
                    d == "*"
                        || sender_domain
                            .as_deref()
                            .is_some_and(|s| certname::normalize(d) == s)
                })
            })
            .filter(|c| {
                c.recipient_domains.is_empty()
                    || c.recipient_domains
                        .iter()
                        .any(|d| certname::normalize(d) == rcpt_domain)
            })
            .collect();
        if in_scope.is_empty() {
            return replies::recipient_ok(Some(tenant.to_string()), reason::INCOMING);
        }
        let verified_names = self.verified_names();
        for c in &in_scope {
            let ip_ok = !c.restrict_domains_to_ip_addresses
                || self.all_ip_connectors.iter().any(|x| x.same_as(c));
            let cert_ok = !c.restrict_domains_to_certificate
                || c.tls_sender_certificate_name.as_deref().is_some_and(|p| {
                    verified_names
                        .iter()
                        .any(|n| certname::matches(p, n).is_some())
                });
            if ip_ok && cert_ok {
                lines.push(format!("partner {} admits the client", c.label()));
                return replies::recipient_ok(Some(tenant.to_string()), reason::INCOMING);
            }
            lines.push(format!(
                "partner {} restricts this mail{}{}",
                c.label(),
                if ip_ok {
                    ""
                } else {
                    "; the client IP is not in its sender IP addresses"
                },
                if cert_ok {
                    ""
                } else {
                    "; no verified certificate matches its certificate name"
                }
            ));
        }
        replies::verdict(
            Action::Reject,
            550,
            "5.7.51",
            replies::TENANT_INBOUND_ATTRIBUTION,
            Some(tenant.to_string()),
            reason::TENANT_INBOUND_ATTRIBUTION,
        )
    }

    /// The ATTR36 case: reject once enforced, otherwise defer or warn.
    fn attr36(
        &self,
        recipient: &str,
        tx: &Transaction,
        tenant: Option<String>,
        lines: &mut Vec<String>,
    ) -> Verdict {
        let deadline = format_instant(self.settings.enforcement);
        if self.facts.time >= self.settings.enforcement {
            lines.push(format!(
                "recipient {recipient} is outside the tenant: ATTR36, enforced since {deadline}"
            ));
            return replies::verdict(
                Action::Reject,
                550,
                "5.7.64",
                replies::ATTR36_ENFORCED,
                tenant,
                reason::ATTR36,
            );
        }
        match self.settings.before_enforcement {
            GraceMode::Defer => {
                lines.push(format!("recipient {recipient} is outside the tenant: ATTR36, deferred until enforcement at {deadline}"));
                replies::verdict(
                    Action::Defer,
                    451,
                    "4.4.4",
                    replies::ATTR36_GRACE,
                    tenant,
                    reason::ATTR36,
                )
            }
            GraceMode::Warn => {
                lines.push(format!("recipient {recipient} is outside the tenant: ATTR36, accepted with a warning until enforcement at {deadline}"));
                // The host writes the warning field from this text
                // (`replies::grace_warning`): no policy writes relay fields.
                let sender = tx.sender_domain.as_deref().unwrap_or("<>");
                let text = replies::grace_text(
                    sender,
                    tenant.as_deref().unwrap_or("(ambiguous)"),
                    &deadline,
                );
                replies::verdict(Action::Accept, 250, "2.1.5", &text, tenant, reason::ATTR36)
            }
        }
    }

    /// Names of the client certificate, when it is verified.
    fn verified_names(&self) -> Vec<String> {
        match self.facts.certificate() {
            Some(c) if c.verified => c.names(),
            _ => Vec::new(),
        }
    }

    fn session_lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "client {} (HELO {}), {}",
            self.facts.client_ip,
            self.facts.helo,
            match &self.facts.tls {
                Some(t) => format!("{} {}", t.protocol, t.cipher),
                None => "no TLS".to_string(),
            }
        )];
        for c in &self.ip_connectors {
            lines.push(format!(
                "{} identifies the client IP {}",
                c.label(),
                self.facts.client_ip
            ));
        }
        for c in self
            .all_ip_connectors
            .iter()
            .filter(|c| !c.enabled && c.kind == ConnectorKind::OnPremises)
        {
            lines.push(format!(
                "{} would identify the client IP but is disabled",
                c.label()
            ));
        }
        lines.extend(self.cert.lines.iter().cloned());
        lines
    }

    /// When nothing identified the server: explain, for the tenants the mail
    /// seems to belong to, why each of their connectors did not match.
    fn explain_closest(&self, sender_tenant: Option<&str>, lines: &mut Vec<String>) {
        let mut tenants: Vec<String> = Vec::new();
        if let Some(t) = sender_tenant {
            tenants.push(t.to_string());
        }
        if let Some(cert) = self.facts.certificate() {
            for name in cert.names() {
                let mut domain = certname::domain_of(&name).to_string();
                loop {
                    if let Some(t) = self.dir.tenant_of_domain(&domain)
                        && !tenants.contains(&t)
                    {
                        tenants.push(t);
                    }
                    match domain.split_once('.') {
                        Some((_, parent)) if parent.contains('.') => domain = parent.to_string(),
                        _ => break,
                    }
                }
            }
        }
        tenants.truncate(MAX_CLOSEST_TENANTS);
        let cert = self.facts.certificate();
        for t in tenants {
            let connectors: Vec<Connector> = self
                .dir
                .connectors_of_tenant(&t)
                .into_iter()
                .filter(|c| c.kind == ConnectorKind::OnPremises)
                .collect();
            if connectors.is_empty() {
                lines.push(format!("tenant {t} has no on-premises connector"));
            }
            for c in connectors {
                let mut why = Vec::new();
                if !c.enabled {
                    why.push("it is disabled".to_string());
                }
                let ip_listed = self.all_ip_connectors.iter().any(|x| x.same_as(&c));
                if !c.sender_ip_addresses.is_empty() && !ip_listed {
                    why.push(format!(
                        "client IP {} is not in its sender IP addresses [{}] (did the server's address change?)",
                        self.facts.client_ip,
                        c.sender_ip_addresses.join(", ")
                    ));
                }
                if let Some(p) = &c.tls_sender_certificate_name {
                    why.push(match (&self.facts.tls, cert) {
                        (None, _) => format!("it expects a certificate named {p}, but the session did not use STARTTLS"),
                        (Some(_), None) => format!("it expects a certificate named {p}, but the client presented none"),
                        (Some(_), Some(c)) if !c.verified => format!(
                            "it expects a certificate named {p}; the certificate presented is not verified ({})",
                            c.verification_error.as_deref().unwrap_or("unknown error")
                        ),
                        (Some(_), Some(c)) => format!(
                            "it expects a certificate named {p}, but the certificate carries [{}] (renewed under another name?)",
                            list(&c.names())
                        ),
                    });
                }
                if c.sender_ip_addresses.is_empty() && c.tls_sender_certificate_name.is_none() {
                    why.push(
                        "it has neither sender IP addresses nor a certificate name".to_string(),
                    );
                }
                lines.push(format!(
                    "closest: {} did not match: {}",
                    c.label(),
                    why.join("; ")
                ));
            }
        }
    }
}

/// Step 1 and 2: which connectors the certificate matches, and whether it
/// attributes the session to exactly one tenant.
fn analyse_certificate<D: Directory>(dir: &D, facts: &SessionFacts) -> CertAnalysis {
    let mut a = CertAnalysis::default();
    let Some(cert) = facts.certificate() else {
        if facts.tls.is_some() {
            a.lines.push("TLS without a client certificate".to_string());
        }
        return a;
    };
    let names = cert.names();
    a.lines.push(format!(
        "certificate subject {}, issuer {}, serial {}, SHA-256 {}, names [{}]",
        cert.subject,
        cert.issuer,
        cert.serial,
        cert.sha256_fingerprint,
        list(&names)
    ));
    if !cert.verified {
        a.lines.push(format!(
            "certificate not verified ({}): it is not certificate authentication and is ignored",
            cert.verification_error
                .as_deref()
                .unwrap_or("unknown error")
        ));
        return a;
    }
    for name in &names {
        for key in certname::candidate_connector_names(name) {
            for c in dir.connectors_by_certificate_name(&key) {
                if c.kind != ConnectorKind::OnPremises {
                    continue;
                }
                let Some(pattern) = c.tls_sender_certificate_name.clone() else {
                    continue;
                };
                let Some(specificity) = certname::matches(&pattern, name) else {
                    continue;
                };
                if !c.enabled {
                    a.lines.push(format!(
                        "{} matches certificate name {name} but is disabled",
                        c.label()
                    ));
                    continue;
                }
                if a.matches.iter().any(|m| m.connector.same_as(&c)) {
                    continue;
                }
                let domain = certname::domain_of(&certname::normalize(&pattern)).to_string();
                let domain_accepted =
                    dir.tenant_of_domain(&domain).as_deref() == Some(c.tenant.as_str());
                a.lines.push(if domain_accepted {
                    format!("{} ({pattern}) matches certificate name {name}; {domain} is an accepted domain of the tenant", c.label())
                } else {
                    format!(
                        "{} ({pattern}) matches certificate name {name}, but {domain} is not an accepted domain of the tenant: it identifies the server, and only the sender-domain rule can apply (set the connector to *.<accepted domain>)",
                        c.label()
                    )
                });
                a.matches.push(CertMatch {
                    connector: c,
                    cert_name: name.clone(),
                    specificity,
                    domain_accepted,
                });
            }
        }
    }
    let best = a
        .matches
        .iter()
        .filter(|m| m.domain_accepted)
        .map(|m| m.specificity)
        .max();
    if let Some(best) = best {
        let top: Vec<&CertMatch> = a
            .matches
            .iter()
            .filter(|m| m.domain_accepted && m.specificity == best)
            .collect();
        let tenants: BTreeSet<&str> = top.iter().map(|m| m.connector.tenant.as_str()).collect();
        if tenants.len() == 1 {
            a.attributed = top.first().map(|m| (*m).clone());
        } else {
            a.tie = tenants.iter().map(|t| t.to_string()).collect();
            a.lines.push(format!(
                "ambiguous: the certificate matches connectors of tenants {} equally specifically; nothing is attributed by certificate",
                a.tie.join(", ")
            ));
        }
    } else if a.matches.is_empty() {
        a.lines.push(format!(
            "no enabled on-premises connector matches the certificate names [{}]",
            list(&names)
        ));
    }
    a
}
