//! Native mirror of the WIT types (`wit/policy.wit`).
//!
//! The rules work on these plain Rust types so that they compile and are tested
//! natively; the component glue (`component.rs`) converts from and to the
//! generated bindings at the boundary, and the host can call the same rules
//! directly as a native baseline.

use std::net::IpAddr;

/// Seconds since the Unix epoch, UTC.
pub type UnixSeconds = i64;

/// The client certificate as the host saw and verified it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ClientCertificate {
    /// Chain verified against the operator's trust anchors at the session time.
    pub verified: bool,
    pub verification_error: Option<String>,
    /// RFC 4514 text; attrelay escapes it to printable ASCII.
    pub subject: String,
    /// The subject's CNs. attrelay leaves this empty when the CN is not an
    /// identifier: the certificate has DNS SANs, or its chain is name-constrained.
    pub common_names: Vec<String>,
    /// The dNSName entries of the subjectAltName.
    pub dns_names: Vec<String>,
    pub issuer: String,
    pub serial: String,
    pub sha256_fingerprint: String,
    pub not_before: UnixSeconds,
    pub not_after: UnixSeconds,
}

impl ClientCertificate {
    /// The names attribution considers: the DNS SANs or, for a certificate
    /// without any, its CNs — RFC 6125 6.4.4: once a certificate presents a
    /// DNS name in its subjectAltName, the CN is not an identifier (and a CA's
    /// name constraints, which bind SANs only, would not bind it). Normalised
    /// (lower case, no trailing dot) and without duplicates, in first-seen order.
    /// A name that is not a syntactically valid DNS name (or wildcard) — an
    /// embedded NUL, spaces, a U-label, a single label, an escape — is dropped:
    /// no connector name could match it, and a hostile certificate must not get
    /// one through a lenient comparison.
    pub fn names(&self) -> Vec<String> {
        let presented = if self.dns_names.is_empty() {
            &self.common_names
        } else {
            &self.dns_names
        };
        let mut out: Vec<String> = Vec::new();
        for n in presented {
            if let Ok(n) = crate::certname::validate(n, true)
                && !out.contains(&n)
            {
                out.push(n);
            }
        }
        out
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TlsFacts {
    pub protocol: String,
    pub cipher: String,
    pub client_certificate: Option<ClientCertificate>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SessionFacts {
    pub client_ip: IpAddr,
    pub helo: String,
    pub server_hostname: String,
    /// The decision instant (seconds since the epoch, UTC).
    pub time: UnixSeconds,
    pub tls: Option<TlsFacts>,
}

impl SessionFacts {
    /// The client certificate, if one was presented.
    pub fn certificate(&self) -> Option<&ClientCertificate> {
        self.tls
            .as_ref()
            .and_then(|t| t.client_certificate.as_ref())
    }
}

/// The kind of a connector, as the configuration spells it
/// (`type = "on-premises"` or `"partner"`) and the WIT's `connector-kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum ConnectorKind {
    OnPremises,
    Partner,
}

/// An inbound connector of a tenant: the one shape a connector has from
/// the configuration to the WIT boundary (the host converts it to the WIT
/// record with `From`). Addresses are canonical text (`203.0.113.0/24`, a
/// single address without its prefix length), names normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Connector {
    pub tenant: String,
    pub name: String,
    pub kind: ConnectorKind,
    pub enabled: bool,
    pub sender_ip_addresses: Vec<String>,
    pub tls_sender_certificate_name: Option<String>,
    pub sender_domains: Vec<String>,
    pub recipient_domains: Vec<String>,
    pub restrict_domains_to_ip_addresses: bool,
    pub restrict_domains_to_certificate: bool,
}

impl Connector {
    /// A connector that identifies a tenant's own servers.
    pub fn on_premises(tenant: &str, name: &str) -> Self {
        Connector {
            tenant: tenant.to_string(),
            name: name.to_string(),
            kind: ConnectorKind::OnPremises,
            enabled: true,
            sender_ip_addresses: Vec::new(),
            tls_sender_certificate_name: None,
            sender_domains: Vec::new(),
            recipient_domains: Vec::new(),
            restrict_domains_to_ip_addresses: false,
            restrict_domains_to_certificate: false,
        }
    }

    /// Whether two values denote the same connector (tenant and name are unique together).
    pub fn same_as(&self, other: &Connector) -> bool {
        self.tenant == other.tenant && self.name == other.name
    }

    /// A short label for explanations: `'Contoso on-premises' (tenant contoso)`.
    pub fn label(&self) -> String {
        format!("connector '{}' (tenant {})", self.name, self.tenant)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum Action {
    Accept,
    Defer,
    Reject,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HeaderField {
    pub name: String,
    pub value: String,
}

/// The answer to one SMTP command; see `verdict` in the WIT file for the checks hosts apply.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Verdict {
    pub action: Action,
    pub code: u16,
    pub enhanced: String,
    pub text: String,
    pub tenant: Option<String>,
    pub reason: Option<String>,
    pub explanation: Vec<String>,
    pub headers: Vec<HeaderField>,
}

impl Verdict {
    /// `code enhanced text`, as it goes on the wire.
    pub fn reply_line(&self) -> String {
        format!("{} {} {}", self.code, self.enhanced, self.text)
    }
}

/// Tenant data the rules look up. In the component these are imported host
/// functions; natively, any indexed store (tests use a small in-memory one).
pub trait Directory {
    fn connectors_by_ip(&self, ip: IpAddr) -> Vec<Connector>;
    fn connectors_by_certificate_name(&self, name: &str) -> Vec<Connector>;
    fn connectors_of_tenant(&self, tenant: &str) -> Vec<Connector>;
    fn tenant_of_domain(&self, domain: &str) -> Option<String>;
}

/// A borrowed directory is a directory (benchmarks and tools share one).
impl<T: Directory + ?Sized> Directory for &T {
    fn connectors_by_ip(&self, ip: IpAddr) -> Vec<Connector> {
        (**self).connectors_by_ip(ip)
    }
    fn connectors_by_certificate_name(&self, name: &str) -> Vec<Connector> {
        (**self).connectors_by_certificate_name(name)
    }
    fn connectors_of_tenant(&self, tenant: &str) -> Vec<Connector> {
        (**self).connectors_of_tenant(tenant)
    }
    fn tenant_of_domain(&self, domain: &str) -> Option<String> {
        (**self).tenant_of_domain(domain)
    }
}

/// A shared directory is a directory (a gateway's sessions share one).
impl<T: Directory + ?Sized> Directory for std::sync::Arc<T> {
    fn connectors_by_ip(&self, ip: IpAddr) -> Vec<Connector> {
        (**self).connectors_by_ip(ip)
    }
    fn connectors_by_certificate_name(&self, name: &str) -> Vec<Connector> {
        (**self).connectors_by_certificate_name(name)
    }
    fn connectors_of_tenant(&self, tenant: &str) -> Vec<Connector> {
        (**self).connectors_of_tenant(tenant)
    }
    fn tenant_of_domain(&self, domain: &str) -> Option<String> {
        (**self).tenant_of_domain(domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cn_is_a_name_only_without_dns_sans() {
        let both = ClientCertificate {
            common_names: vec!["mail.contoso.com".into()],
            dns_names: vec!["Mail.Fabrikam.com.".into(), "mail.fabrikam.com".into()],
            ..ClientCertificate::default()
        };
        assert_eq!(both.names(), ["mail.fabrikam.com"]);
        let cn_only = ClientCertificate {
            dns_names: Vec::new(),
            ..both
        };
        assert_eq!(cn_only.names(), ["mail.contoso.com"]);
    }
}
