//! The seed scenarios as data: the conformance kit's table
//! (`conformance/scenarios.json`), read here into the fixture directory
//! and, for each scenario, the session facts, the settings, the sender and
//! the expected reply per recipient.
//!
//! One table serves every purpose: the native unit tests of the rules, the
//! host's tests that run it through the compiled component, the built-in
//! checks a host runs on a new policy before letting it decide (a policy
//! that gets the reference's scenarios wrong should not go live), and the
//! kit's runners against whole hosts (the relay, the policy service, the
//! gateway component in wasmtime, Node and Haraka).

use std::net::IpAddr;

use crate::certname;
use crate::model::{
    ClientCertificate, Connector, ConnectorKind, Directory, SessionFacts, TlsFacts, Verdict,
};

/// A tenant of the fixture.
#[derive(Clone, Debug)]
pub struct FixtureTenant {
    pub id: String,
    pub accepted_domains: Vec<String>,
    pub connectors: Vec<Connector>,
}

/// A small, linear-scan directory over fixture tenants (tests and checks only;
/// the relay's directory is indexed).
#[derive(Clone, Debug, Default)]
pub struct MemoryDirectory {
    pub tenants: Vec<FixtureTenant>,
}

/// Whether `ip` is in `range` ("203.0.113.0/24", "198.51.100.7" or an IPv6 form).
pub fn ip_in_range(ip: IpAddr, range: &str) -> bool {
    let (addr, len) = match range.split_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().ok()),
        None => (range, None),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let len = len.unwrap_or(32).min(32);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let len = len.unwrap_or(128).min(128);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl Directory for MemoryDirectory {
    fn connectors_by_ip(&self, ip: IpAddr) -> Vec<Connector> {
        self.tenants
            .iter()
            .flat_map(|t| &t.connectors)
            .filter(|c| c.sender_ip_addresses.iter().any(|r| ip_in_range(ip, r)))
            .cloned()
            .collect()
    }
    fn connectors_by_certificate_name(&self, name: &str) -> Vec<Connector> {
        let n = certname::normalize(name);
        self.tenants
            .iter()
            .flat_map(|t| &t.connectors)
            .filter(|c| {
                c.tls_sender_certificate_name
                    .as_deref()
                    .map(certname::normalize)
                    == Some(n.clone())
            })
            .cloned()
            .collect()
    }
    fn connectors_of_tenant(&self, tenant: &str) -> Vec<Connector> {
        self.tenants
            .iter()
            .filter(|t| t.id == tenant)
            .flat_map(|t| t.connectors.clone())
            .collect()
    }
    fn tenant_of_domain(&self, domain: &str) -> Option<String> {
        let d = certname::normalize(domain);
        self.tenants
            .iter()
            .find(|t| t.accepted_domains.contains(&d))
            .map(|t| t.id.clone())
    }
}

/// What a recipient must get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub code: u16,
    pub enhanced: &'static str,
    pub tenant: Option<&'static str>,
    pub reason: &'static str,
    /// The grace-period warning header must be present.
    pub warning_header: bool,
}

/// The conformance kit's table (`conformance/scenarios.json`), compiled in.
pub const KIT_JSON: &str = include_str!("../../conformance/scenarios.json");

/// The kit as written (see `conformance/README.md` for the schema).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Kit {
    pub version: u32,
    pub helo: String,
    pub server_hostname: String,
    pub tls_protocol: String,
    pub tls_cipher: String,
    /// The authority of `certs/recipe.json` whose certificate is the trust anchor.
    pub trust_anchors: String,
    /// The relay's `[[tenant]]` tables, as JSON.
    pub directory: KitDirectory,
    /// Certificate name (a chain `make-certs.py` writes) → the facts a
    /// host derives from it.
    pub certificates: std::collections::BTreeMap<String, KitCertificate>,
    pub scenarios: Vec<KitScenario>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct KitDirectory {
    pub tenant: Vec<KitTenant>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct KitTenant {
    pub id: String,
    #[serde(default)]
    pub accepted_domains: Vec<String>,
    #[serde(default)]
    pub recipients: Option<Vec<String>>,
    #[serde(default)]
    pub connector: Vec<KitConnector>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct KitConnector {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub sender_ip_addresses: Vec<String>,
    pub tls_sender_certificate_name: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub sender_domains: Vec<String>,
    #[serde(default)]
    pub recipient_domains: Vec<String>,
    #[serde(default)]
    pub restrict_domains_to_ip_addresses: bool,
    #[serde(default)]
    pub restrict_domains_to_certificate: bool,
}

fn yes() -> bool {
    true
}

/// What a host makes of a chain at the kit's instants (2017).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct KitCertificate {
    pub subject: String,
    pub verified: bool,
    pub common_names: Vec<String>,
    pub dns_names: Vec<String>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct KitScenario {
    pub name: String,
    /// `policy`: the bare policy judges it so (given the facts); `host`:
    /// what a host adds around the policy (chain verification, recipient
    /// lists, sender routing) is tested, so only whole hosts run it.
    pub layer: String,
    pub client_ip: String,
    /// RFC 3339.
    pub time: String,
    /// `None`: clear text.
    pub tls: Option<KitTls>,
    #[serde(default)]
    pub settings: std::collections::BTreeMap<String, String>,
    /// What a host must know to run the scenario, beyond what every host
    /// knows (see the README): `session-time` (judging at `time` rather
    /// than at its wall clock), `subject-alt-names` (the certificate's DNS
    /// names, which Postfix does not pass on), `verifying-chain` (the
    /// chain that verified it, for its name constraints). A host that
    /// lacks one leaves the scenario out and says so.
    #[serde(default)]
    pub needs: Vec<String>,
    pub sender: String,
    pub recipients: Vec<KitRecipient>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct KitTls {
    pub certificate: Option<String>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct KitRecipient {
    pub address: String,
    pub code: u16,
    pub enhanced: String,
    pub tenant: Option<String>,
    pub reason: String,
    pub warning: bool,
}

/// The kit, parsed once.
pub fn kit() -> &'static Kit {
    static KIT: std::sync::OnceLock<Kit> = std::sync::OnceLock::new();
    KIT.get_or_init(|| serde_json::from_str(KIT_JSON).expect("conformance/scenarios.json parses"))
}

impl KitRecipient {
    pub fn expect(&'static self) -> Expect {
        Expect {
            code: self.code,
            enhanced: &self.enhanced,
            tenant: self.tenant.as_deref(),
            reason: &self.reason,
            warning_header: self.warning,
        }
    }
}

impl KitCertificate {
    /// The facts a policy receives for this certificate.
    pub fn facts(&self) -> ClientCertificate {
        ClientCertificate {
            verified: self.verified,
            verification_error: (!self.verified).then(|| "not verified (conformance kit)".into()),
            subject: self.subject.clone(),
            common_names: self.common_names.clone(),
            dns_names: self.dns_names.clone(),
            issuer: "CN=Conformance Kit Root CA".into(),
            serial: "01".into(),
            sha256_fingerprint: "00".repeat(32),
            not_before: 1_420_070_400,
            not_after: 4_102_358_400,
        }
    }
}

impl KitScenario {
    /// The session facts a host gives the policy for this scenario.
    pub fn facts(&self) -> SessionFacts {
        let kit = kit();
        SessionFacts {
            client_ip: self.client_ip.parse().expect("kit client_ip"),
            helo: kit.helo.clone(),
            server_hostname: kit.server_hostname.clone(),
            time: crate::settings::parse_instant(&self.time).expect("kit time"),
            tls: self.tls.as_ref().map(|t| TlsFacts {
                protocol: kit.tls_protocol.clone(),
                cipher: kit.tls_cipher.clone(),
                client_certificate: t.certificate.as_ref().map(|c| kit.certificates[c].facts()),
            }),
        }
    }
}

/// The kit's directory as the fixture the bare policy's tests look up.
pub fn fixture() -> MemoryDirectory {
    let tenants = kit().directory.tenant.iter().map(|t| FixtureTenant {
        id: t.id.clone(),
        accepted_domains: t.accepted_domains.clone(),
        connectors: t
            .connector
            .iter()
            .map(|c| Connector {
                tenant: t.id.clone(),
                name: c.name.clone(),
                kind: match c.kind.as_str() {
                    "partner" => ConnectorKind::Partner,
                    _ => ConnectorKind::OnPremises,
                },
                enabled: c.enabled,
                sender_ip_addresses: c.sender_ip_addresses.clone(),
                tls_sender_certificate_name: c.tls_sender_certificate_name.clone(),
                sender_domains: c.sender_domains.clone(),
                recipient_domains: c.recipient_domains.clone(),
                restrict_domains_to_ip_addresses: c.restrict_domains_to_ip_addresses,
                restrict_domains_to_certificate: c.restrict_domains_to_certificate,
            })
            .collect(),
    });
    MemoryDirectory {
        tenants: tenants.collect(),
    }
}

/// One scenario: a session, a sender and recipients with their expected replies.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    /// Policy settings (`[policy.settings]`).
    pub settings: Vec<(&'static str, &'static str)>,
    pub facts: SessionFacts,
    /// Empty for `<>`.
    pub sender: &'static str,
    pub recipients: Vec<(&'static str, Expect)>,
}

/// The kit's scenarios of the `policy` layer, as facts for a bare policy.
pub fn scenarios() -> Vec<Scenario> {
    kit()
        .scenarios
        .iter()
        .filter(|s| s.layer == "policy")
        .map(|s| Scenario {
            name: &s.name,
            settings: s
                .settings
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            facts: s.facts(),
            sender: &s.sender,
            recipients: s
                .recipients
                .iter()
                .map(|r| (r.address.as_str(), r.expect()))
                .collect(),
        })
        .collect()
}

/// Checks a verdict against an expectation; `Err` says what differs.
pub fn check(expect: &Expect, v: &Verdict) -> Result<(), String> {
    let has_warning = crate::replies::grace_warning(v).is_some();
    let ok = v.code == expect.code
        && v.enhanced == expect.enhanced
        && v.tenant.as_deref() == expect.tenant
        && v.reason.as_deref() == Some(expect.reason)
        && has_warning == expect.warning_header;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected {} {} tenant {:?} reason {} warning {}, got {} tenant {:?} reason {:?} warning {has_warning}\n  why: {}",
            expect.code,
            expect.enhanced,
            expect.tenant,
            expect.reason,
            expect.warning_header,
            v.reply_line(),
            v.tenant,
            v.reason,
            v.explanation.join("\n       ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Session;
    use crate::settings::Settings;

    const CONTOSO_IP: &str = "203.0.113.10";
    const UNKNOWN_IP: &str = "192.0.2.77";
    /// 2017-03-01, in the grace period before the default enforcement date.
    const GRACE: i64 = 1_488_326_400;
    /// 2017-08-01, after it.
    const ENFORCED: i64 = 1_501_545_600;

    fn clear(ip: &str, time: i64) -> SessionFacts {
        SessionFacts {
            client_ip: ip.parse().unwrap(),
            helo: "mail.example.test".into(),
            server_hostname: "relay.example.test".into(),
            time,
            tls: None,
        }
    }

    fn with_certificate(ip: &str, dns_names: &[&str], time: i64) -> SessionFacts {
        let certificate = KitCertificate {
            subject: format!("CN={}", dns_names[0]),
            verified: true,
            common_names: Vec::new(),
            dns_names: dns_names.iter().map(|s| s.to_string()).collect(),
        };
        SessionFacts {
            tls: Some(TlsFacts {
                protocol: "TLSv1.3".into(),
                cipher: "TLS_AES_256_GCM_SHA384".into(),
                client_certificate: Some(certificate.facts()),
            }),
            ..clear(ip, time)
        }
    }

    #[test]
    fn the_kit_covers_every_seed() {
        let kit = kit();
        assert_eq!(kit.version, 1);
        assert!(scenarios().len() >= 33, "{}", scenarios().len());
        for s in &kit.scenarios {
            assert!(["policy", "host"].contains(&s.layer.as_str()), "{}", s.name);
            if let Some(c) = s.tls.as_ref().and_then(|t| t.certificate.as_ref()) {
                assert!(kit.certificates.contains_key(c), "{}: {c}", s.name);
            }
        }
    }

    #[test]
    fn every_seed_scenario_natively() {
        let dir = fixture();
        let mut failures = Vec::new();
        for s in scenarios() {
            let settings = Settings::from_pairs(s.settings.iter().copied()).unwrap();
            let mut session = Session::open(dir.clone(), settings, s.facts.clone());
            let mail = session.mail_from(s.sender);
            assert_eq!(mail.code, 250, "{}: MAIL FROM", s.name);
            for (rcpt, expect) in &s.recipients {
                if let Err(e) = check(expect, &session.rcpt_to(rcpt)) {
                    failures.push(format!("{} / {rcpt}: {e}", s.name));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn reply_texts_are_the_reference_ones() {
        let dir = fixture();
        let mut s = Session::open(
            dir.clone(),
            Settings::default(),
            clear(CONTOSO_IP, ENFORCED),
        );
        s.mail_from("");
        assert_eq!(
            s.rcpt_to("x@internet.example").reply_line(),
            "550 5.7.64 Relay Access Denied ATTR36. For more details please refer to KB 3169958"
        );
        let mut s = Session::open(dir.clone(), Settings::default(), clear(CONTOSO_IP, GRACE));
        s.mail_from("");
        assert_eq!(
            s.rcpt_to("x@internet.example").reply_line(),
            "451 4.4.4 Relay Access Denied, unrecognized sender domain. ATTR36"
        );
        let mut s = Session::open(dir, Settings::default(), clear(UNKNOWN_IP, GRACE));
        s.mail_from("a@b.example");
        assert_eq!(
            s.rcpt_to("x@internet.example").reply_line(),
            "550 5.7.64 TenantAttribution; Relay Access Denied"
        );
    }

    #[test]
    fn explanations_name_the_closest_connector() {
        let mut s = Session::open(
            fixture(),
            Settings::default(),
            with_certificate(UNKNOWN_IP, &["mail.contoso-mail.net"], ENFORCED),
        );
        s.mail_from("john@contoso.com");
        let v = s.rcpt_to("x@internet.example");
        let why = v.explanation.join("\n");
        assert!(
            why.contains("closest: connector 'Contoso on-premises' (tenant contoso)"),
            "{why}"
        );
        assert!(why.contains("expects a certificate named *.contoso.com, but the certificate carries [mail.contoso-mail.net]"), "{why}");
        assert!(why.contains("client IP 192.0.2.77 is not in its sender IP addresses [203.0.113.0/24, 2001:db8::/32]"), "{why}");
    }

    #[test]
    fn rcpt_before_mail_is_a_sequence_error() {
        let mut s = Session::open(fixture(), Settings::default(), clear(CONTOSO_IP, ENFORCED));
        assert_eq!(s.rcpt_to("x@y.example").code, 503);
    }

    #[test]
    fn ip_ranges() {
        assert!(ip_in_range(
            "203.0.113.10".parse().unwrap(),
            "203.0.113.0/24"
        ));
        assert!(!ip_in_range(
            "203.0.114.10".parse().unwrap(),
            "203.0.113.0/24"
        ));
        assert!(ip_in_range("2001:db8::1".parse().unwrap(), "2001:db8::/32"));
        assert!(!ip_in_range(
            "2001:db8::1".parse().unwrap(),
            "203.0.113.0/24"
        ));
    }
}
