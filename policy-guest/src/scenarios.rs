//! The seed scenarios as data: a fixture of tenants and, for each scenario, the
//! session facts, the settings, the sender and the expected reply per
//! recipient.
//!
//! One table serves three purposes: the native unit tests of the rules, the
//! host's tests that run the same table through the compiled component, and
//! the built-in checks a host can run on a new policy before letting it decide
//! (a policy that gets the reference's scenarios wrong should not go live).

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

fn on_prem(tenant: &str, name: &str, ips: &[&str], cert: Option<&str>) -> Connector {
    Connector {
        sender_ip_addresses: ips.iter().map(|s| s.to_string()).collect(),
        tls_sender_certificate_name: cert.map(str::to_string),
        ..Connector::on_premises(tenant, name)
    }
}

fn tenant(id: &str, domains: &[&str], connectors: Vec<Connector>) -> FixtureTenant {
    FixtureTenant {
        id: id.to_string(),
        accepted_domains: domains.iter().map(|s| s.to_string()).collect(),
        connectors,
    }
}

/// The fixture: the reference's example organisations.
pub fn fixture() -> MemoryDirectory {
    let mut disabled = on_prem("litware", "Litware old relay", &["192.0.2.200"], None);
    disabled.enabled = false;
    let partner = Connector {
        kind: ConnectorKind::Partner,
        sender_ip_addresses: vec!["192.0.2.128/25".into()],
        sender_domains: vec!["partner.example".into()],
        restrict_domains_to_ip_addresses: true,
        ..Connector::on_premises("tailspintoys", "Partner relay")
    };
    MemoryDirectory {
        tenants: vec![
            tenant(
                "contoso",
                &["contoso.com"],
                vec![on_prem(
                    "contoso",
                    "Contoso on-premises",
                    &["203.0.113.0/24", "2001:db8::/32"],
                    Some("*.contoso.com"),
                )],
            ),
            // Configured by the hybrid wizard with a host name, not an accepted domain.
            tenant(
                "fabrikam",
                &["fabrikam.com"],
                vec![on_prem(
                    "fabrikam",
                    "Fabrikam HCW",
                    &[],
                    Some("mail.fabrikam.com"),
                )],
            ),
            tenant("tailspintoys", &["tailspintoys.com"], vec![partner]),
            tenant(
                "northwind",
                &["northwind.com"],
                vec![on_prem(
                    "northwind",
                    "Northwind",
                    &[],
                    Some("*.northwind.com"),
                )],
            ),
            tenant(
                "adatum",
                &["adatum.com"],
                vec![on_prem("adatum", "Adatum", &[], Some("*.adatum.com"))],
            ),
            tenant(
                "woodgrove",
                &["woodgrove.com"],
                vec![on_prem(
                    "woodgrove",
                    "Woodgrove",
                    &[],
                    Some("*.woodgrove.com"),
                )],
            ),
            tenant(
                "woodgrove-eu",
                &["eu.woodgrove.com"],
                vec![on_prem(
                    "woodgrove-eu",
                    "Woodgrove EU",
                    &[],
                    Some("*.eu.woodgrove.com"),
                )],
            ),
            tenant(
                "woodgrove-mail",
                &["mail.woodgrove.com"],
                vec![on_prem(
                    "woodgrove-mail",
                    "Woodgrove mail host",
                    &[],
                    Some("mail.woodgrove.com"),
                )],
            ),
            tenant("litware", &["litware.com"], vec![disabled]),
        ],
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

const fn expect(
    code: u16,
    enhanced: &'static str,
    tenant: Option<&'static str>,
    reason: &'static str,
) -> Expect {
    Expect {
        code,
        enhanced,
        tenant,
        reason,
        warning_header: false,
    }
}

/// Relay allowed by a certificate-based connector.
pub const fn by_cert(t: &'static str) -> Expect {
    expect(250, "2.1.5", Some(t), "originating-certificate")
}
/// Relay allowed: a connector identified the server, the sender domain is accepted.
pub const fn by_ip(t: &'static str) -> Expect {
    expect(250, "2.1.5", Some(t), "originating-ip")
}
/// Incoming mail for an accepted domain.
pub const fn incoming(t: &'static str) -> Expect {
    expect(250, "2.1.5", Some(t), "incoming")
}
/// `550 5.7.64 TenantAttribution; Relay Access Denied`.
pub const DENIED: Expect = expect(550, "5.7.64", None, "tenant-attribution");
/// `550 5.7.64 ... ATTR36` (enforcement in force).
pub const fn attr36_enforced(t: Option<&'static str>) -> Expect {
    expect(550, "5.7.64", t, "attr36")
}
/// `451 4.4.4 ... ATTR36` (grace period, defer mode).
pub const fn attr36_deferred(t: Option<&'static str>) -> Expect {
    expect(451, "4.4.4", t, "attr36")
}
/// Accepted with the warning header (grace period, warn mode).
pub const fn attr36_warned(t: Option<&'static str>) -> Expect {
    Expect {
        code: 250,
        enhanced: "2.1.5",
        tenant: t,
        reason: "attr36",
        warning_header: true,
    }
}
/// `550 5.7.51 TenantInboundAttribution`.
pub const fn inbound_denied(t: &'static str) -> Expect {
    expect(550, "5.7.51", Some(t), "tenant-inbound-attribution")
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

/// 2017-03-01, in the grace period before the default enforcement date.
pub const GRACE: i64 = 1_488_326_400;
/// 2017-08-01, after the default enforcement date.
pub const ENFORCED: i64 = 1_501_545_600;

/// A verified certificate with the given CN and DNS SANs.
pub fn cert(cn: &str, sans: &[&str]) -> ClientCertificate {
    ClientCertificate {
        verified: true,
        verification_error: None,
        subject: format!("CN={cn}"),
        common_names: vec![cn.to_string()],
        dns_names: sans.iter().map(|s| s.to_string()).collect(),
        issuer: "CN=Fixture Issuing CA".into(),
        serial: "01".into(),
        sha256_fingerprint: "00".repeat(32),
        not_before: 1_400_000_000,
        not_after: 2_000_000_000,
    }
}

/// The same certificate, failing verification for `why`.
pub fn unverified(mut c: ClientCertificate, why: &str) -> ClientCertificate {
    c.verified = false;
    c.verification_error = Some(why.to_string());
    c
}

fn facts(ip: &str, cert: Option<ClientCertificate>, time: i64) -> SessionFacts {
    SessionFacts {
        client_ip: ip.parse().expect("fixture IP"),
        helo: "mail.example.test".into(),
        server_hostname: "relay.example.test".into(),
        time,
        tls: Some(TlsFacts {
            protocol: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            client_certificate: cert,
        }),
    }
}

fn clear(ip: &str, time: i64) -> SessionFacts {
    SessionFacts {
        tls: None,
        ..facts(ip, None, time)
    }
}

fn scenario(
    name: &'static str,
    facts: SessionFacts,
    sender: &'static str,
    recipients: Vec<(&'static str, Expect)>,
) -> Scenario {
    Scenario {
        name,
        settings: Vec::new(),
        facts,
        sender,
        recipients,
    }
}

/// Client IPs: contoso's on-premises range, an address nobody configured.
const CONTOSO_IP: &str = "203.0.113.10";
const UNKNOWN_IP: &str = "192.0.2.77";

/// Every scenario of the seeds and the reference.
pub fn scenarios() -> Vec<Scenario> {
    let contoso_cert = || cert("mail.contoso.com", &["mail.contoso.com"]);
    let mut v = vec![
        // The three scenarios that work only through a certificate-based connector.
        scenario(
            "NDR through the certificate-based connector",
            facts(UNKNOWN_IP, Some(contoso_cert()), ENFORCED),
            "",
            vec![("sender@internet.example", by_cert("contoso"))],
        ),
        scenario(
            "sending as a domain the tenant does not own, with the certificate",
            facts(UNKNOWN_IP, Some(contoso_cert()), ENFORCED),
            "john@fabrikam-other.example",
            vec![("someone@internet.example", by_cert("contoso"))],
        ),
        scenario(
            "forwarding rule, with the certificate",
            facts(CONTOSO_IP, Some(contoso_cert()), ENFORCED),
            "john@fabrikam.com",
            vec![("kate@tailspintoys.example", by_cert("contoso"))],
        ),
        // The same three through an IP-only identification: ATTR36.
        scenario(
            "NDR identified by IP only, enforced",
            clear(CONTOSO_IP, ENFORCED),
            "",
            vec![("sender@internet.example", attr36_enforced(Some("contoso")))],
        ),
        scenario(
            "sending as an unowned domain by IP only, enforced",
            clear(CONTOSO_IP, ENFORCED),
            "john@fabrikam-other.example",
            vec![("someone@internet.example", attr36_enforced(Some("contoso")))],
        ),
        scenario(
            "forwarding by IP only, enforced",
            facts(CONTOSO_IP, None, ENFORCED),
            "john@fabrikam.com",
            vec![(
                "kate@tailspintoys.example",
                attr36_enforced(Some("contoso")),
            )],
        ),
        // Rule 1: the sender domain.
        scenario(
            "originating by IP with an accepted sender domain",
            clear(CONTOSO_IP, ENFORCED),
            "John@CONTOSO.com",
            vec![("someone@internet.example", by_ip("contoso"))],
        ),
        scenario(
            "originating by IPv6",
            clear("2001:db8::25", ENFORCED),
            "john@contoso.com",
            vec![("someone@internet.example", by_ip("contoso"))],
        ),
        scenario(
            "a subdomain of an accepted domain is not accepted",
            clear(CONTOSO_IP, ENFORCED),
            "john@sales.contoso.com",
            vec![("someone@internet.example", attr36_enforced(Some("contoso")))],
        ),
        // The troubleshooting article: no connector matches any more.
        scenario(
            "certificate renewed under a different name",
            facts(
                UNKNOWN_IP,
                Some(cert("mail.contoso-mail.net", &["mail.contoso-mail.net"])),
                ENFORCED,
            ),
            "john@contoso.com",
            vec![("someone@internet.example", DENIED)],
        ),
        scenario(
            "on-premises IP address changed",
            clear(UNKNOWN_IP, ENFORCED),
            "john@contoso.com",
            vec![("someone@internet.example", DENIED)],
        ),
        // Host-name connector (mail.fabrikam.com is not an accepted domain).
        scenario(
            "host-name connector with an accepted sender domain",
            facts(UNKNOWN_IP, Some(cert("mail.fabrikam.com", &[])), ENFORCED),
            "john@fabrikam.com",
            vec![("someone@internet.example", by_ip("fabrikam"))],
        ),
        scenario(
            "host-name connector cannot relay NDRs",
            facts(UNKNOWN_IP, Some(cert("mail.fabrikam.com", &[])), ENFORCED),
            "",
            vec![(
                "someone@internet.example",
                attr36_enforced(Some("fabrikam")),
            )],
        ),
        // Certificates.
        scenario(
            "wildcard certificate",
            facts(
                UNKNOWN_IP,
                Some(cert("*.contoso.com", &["*.contoso.com"])),
                ENFORCED,
            ),
            "",
            vec![("someone@internet.example", by_cert("contoso"))],
        ),
        scenario(
            "multi-SAN certificate",
            facts(
                UNKNOWN_IP,
                Some(cert(
                    "mail1.contoso.com",
                    &["mail1.contoso.com", "mail2.contoso.com"],
                )),
                ENFORCED,
            ),
            "",
            vec![("someone@internet.example", by_cert("contoso"))],
        ),
        scenario(
            "look-alike names do not match",
            facts(
                UNKNOWN_IP,
                Some(cert("contoso.com.evil.example", &["evilcontoso.com"])),
                ENFORCED,
            ),
            "",
            vec![("someone@internet.example", DENIED)],
        ),
        scenario(
            "self-signed certificate is not authentication",
            facts(
                UNKNOWN_IP,
                Some(unverified(contoso_cert(), "self-signed certificate")),
                ENFORCED,
            ),
            "",
            vec![("someone@internet.example", DENIED)],
        ),
        scenario(
            "expired certificate is not authentication",
            facts(
                UNKNOWN_IP,
                Some(unverified(contoso_cert(), "certificate expired")),
                ENFORCED,
            ),
            "",
            vec![("someone@internet.example", DENIED)],
        ),
        scenario(
            "unverified certificate falls back to the IP rule",
            facts(
                CONTOSO_IP,
                Some(unverified(contoso_cert(), "issuer not trusted")),
                ENFORCED,
            ),
            "",
            vec![("someone@internet.example", attr36_enforced(Some("contoso")))],
        ),
        // Most specific match and ties.
        scenario(
            "an exact name beats a wildcard",
            facts(UNKNOWN_IP, Some(cert("mail.woodgrove.com", &[])), ENFORCED),
            "",
            vec![("someone@internet.example", by_cert("woodgrove-mail"))],
        ),
        scenario(
            "a longer domain beats a shorter one",
            facts(UNKNOWN_IP, Some(cert("mx.eu.woodgrove.com", &[])), ENFORCED),
            "",
            vec![("someone@internet.example", by_cert("woodgrove-eu"))],
        ),
        scenario(
            "tie between tenants: nothing attributed by certificate",
            facts(
                UNKNOWN_IP,
                Some(cert(
                    "mail.northwind.com",
                    &["mail.northwind.com", "mail.adatum.com"],
                )),
                ENFORCED,
            ),
            "",
            vec![("someone@internet.example", DENIED)],
        ),
        scenario(
            "tie between tenants: the sender domain does not pick one",
            facts(
                UNKNOWN_IP,
                Some(cert(
                    "mail.northwind.com",
                    &["mail.northwind.com", "mail.adatum.com"],
                )),
                ENFORCED,
            ),
            "john@adatum.com",
            vec![
                ("someone@internet.example", DENIED),
                // Mail for a tenant is still incoming mail (step 4).
                ("kate@northwind.com", incoming("northwind")),
            ],
        ),
        // Grace period and enforcement.
        scenario(
            "ATTR36 in the grace period is deferred",
            clear(CONTOSO_IP, GRACE),
            "john@fabrikam-other.example",
            vec![("someone@internet.example", attr36_deferred(Some("contoso")))],
        ),
        scenario(
            "ATTR36 exactly at the deadline is enforced",
            clear(CONTOSO_IP, 1_499_212_800),
            "",
            vec![("someone@internet.example", attr36_enforced(Some("contoso")))],
        ),
        Scenario {
            settings: vec![("before_enforcement", "warn")],
            ..scenario(
                "ATTR36 in the grace period, warn mode",
                clear(CONTOSO_IP, GRACE),
                "",
                vec![("someone@internet.example", attr36_warned(Some("contoso")))],
            )
        },
        Scenario {
            settings: vec![("enforcement", "2030-01-01T00:00:00Z")],
            ..scenario(
                "a later enforcement date set by the operator",
                clear(CONTOSO_IP, ENFORCED),
                "",
                vec![("someone@internet.example", attr36_deferred(Some("contoso")))],
            )
        },
        // Incoming mail and partner connectors.
        scenario(
            "incoming mail from the Internet",
            clear(UNKNOWN_IP, ENFORCED),
            "someone@internet.example",
            vec![
                ("kate@contoso.com", incoming("contoso")),
                ("other@internet.example", DENIED),
            ],
        ),
        scenario(
            "incoming NDR from the Internet",
            clear(UNKNOWN_IP, ENFORCED),
            "",
            vec![("kate@CONTOSO.COM", incoming("contoso"))],
        ),
        scenario(
            "partner connector restricts a sender domain to its IPs",
            clear(UNKNOWN_IP, ENFORCED),
            "john@partner.example",
            vec![
                ("kate@tailspintoys.com", inbound_denied("tailspintoys")),
                ("kate@contoso.com", incoming("contoso")),
            ],
        ),
        scenario(
            "partner connector admits its IPs",
            clear("192.0.2.130", ENFORCED),
            "john@partner.example",
            vec![("kate@tailspintoys.com", incoming("tailspintoys"))],
        ),
        // Mixed recipients in one transaction.
        scenario(
            "mixed recipients with an unowned sender domain",
            clear(CONTOSO_IP, ENFORCED),
            "john@fabrikam-other.example",
            vec![
                ("kate@contoso.com", incoming("contoso")),
                ("bob@tailspintoys.com", incoming("tailspintoys")),
                ("someone@internet.example", attr36_enforced(Some("contoso"))),
            ],
        ),
        scenario(
            "a disabled connector never matches",
            clear("192.0.2.200", ENFORCED),
            "john@litware.com",
            vec![("someone@internet.example", DENIED)],
        ),
    ];
    v.sort_by_key(|s| s.name);
    v
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
            facts(
                UNKNOWN_IP,
                Some(cert("mail.contoso-mail.net", &[])),
                ENFORCED,
            ),
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
