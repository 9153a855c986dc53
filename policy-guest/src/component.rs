//! The component glue: exports the `attribution-policy` world of
//! `wit/policy.wit` by converting between the generated bindings and the
//! native types the rules use. No rule lives here.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::decide;
use crate::model;
use crate::settings::Settings;

wit_bindgen::generate!({
    path: "../wit",
    world: "attribution-policy",
});

use attrelay::policy::directory as dir;
use attrelay::policy::types as wit;
use exports::attrelay::policy::policy::{Guest, GuestSession, SessionFacts, Setting, Verdict};

thread_local! {
    /// Settings given to `configure`; one instance serves one host (one SMTP session).
    static SETTINGS: RefCell<Settings> = RefCell::new(Settings::default());
}

struct Policy;

impl Guest for Policy {
    type Session = Session;

    fn configure(settings: Vec<Setting>) -> Result<(), String> {
        let parsed =
            Settings::from_pairs(settings.iter().map(|s| (s.key.as_str(), s.value.as_str())))?;
        SETTINGS.with(|s| *s.borrow_mut() = parsed);
        Ok(())
    }
}

/// The directory, as imported host functions.
struct HostDirectory;

impl model::Directory for HostDirectory {
    fn connectors_by_ip(&self, ip: IpAddr) -> Vec<model::Connector> {
        dir::connectors_by_ip(ip_to_wit(ip))
            .into_iter()
            .map(connector_from_wit)
            .collect()
    }
    fn connectors_by_certificate_name(&self, name: &str) -> Vec<model::Connector> {
        dir::connectors_by_certificate_name(name)
            .into_iter()
            .map(connector_from_wit)
            .collect()
    }
    fn connectors_of_tenant(&self, tenant: &str) -> Vec<model::Connector> {
        dir::connectors_of_tenant(tenant)
            .into_iter()
            .map(connector_from_wit)
            .collect()
    }
    fn tenant_of_domain(&self, domain: &str) -> Option<String> {
        dir::tenant_of_domain(domain)
    }
}

struct Session(RefCell<decide::Session<HostDirectory>>);

impl GuestSession for Session {
    fn new(facts: SessionFacts) -> Self {
        let settings = SETTINGS.with(|s| s.borrow().clone());
        Session(RefCell::new(decide::Session::open(
            HostDirectory,
            settings,
            facts_from_wit(facts),
        )))
    }
    fn mail_from(&self, sender: String) -> Verdict {
        verdict_to_wit(self.0.borrow_mut().mail_from(&sender))
    }
    fn rcpt_to(&self, recipient: String) -> Verdict {
        verdict_to_wit(self.0.borrow_mut().rcpt_to(&recipient))
    }
}

fn ip_to_wit(ip: IpAddr) -> wit::IpAddress {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            wit::IpAddress::Ipv4((a, b, c, d))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            wit::IpAddress::Ipv6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
        }
    }
}

fn ip_from_wit(ip: wit::IpAddress) -> IpAddr {
    match ip {
        wit::IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        wit::IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
        }
    }
}

fn connector_from_wit(c: wit::Connector) -> model::Connector {
    model::Connector {
        tenant: c.tenant,
        name: c.name,
        kind: match c.kind {
            wit::ConnectorKind::OnPremises => model::ConnectorKind::OnPremises,
            wit::ConnectorKind::Partner => model::ConnectorKind::Partner,
        },
        enabled: c.enabled,
        sender_ip_addresses: c.sender_ip_addresses,
        tls_sender_certificate_name: c.tls_sender_certificate_name,
        sender_domains: c.sender_domains,
        recipient_domains: c.recipient_domains,
        restrict_domains_to_ip_addresses: c.restrict_domains_to_ip_addresses,
        restrict_domains_to_certificate: c.restrict_domains_to_certificate,
    }
}

fn facts_from_wit(f: SessionFacts) -> model::SessionFacts {
    model::SessionFacts {
        client_ip: ip_from_wit(f.client_ip),
        helo: f.helo,
        server_hostname: f.server_hostname,
        time: f.time.seconds,
        tls: f.tls.map(|t| model::TlsFacts {
            protocol: t.protocol,
            cipher: t.cipher,
            client_certificate: t.client_certificate.map(|c| model::ClientCertificate {
                verified: c.verified,
                verification_error: c.verification_error,
                subject: c.subject,
                common_names: c.common_names,
                dns_names: c.dns_names,
                issuer: c.issuer,
                serial: c.serial,
                sha256_fingerprint: c.sha256_fingerprint,
                not_before: c.not_before.seconds,
                not_after: c.not_after.seconds,
            }),
        }),
    }
}

fn verdict_to_wit(v: model::Verdict) -> Verdict {
    Verdict {
        action: match v.action {
            model::Action::Accept => wit::Action::Accept,
            model::Action::Defer => wit::Action::Defer,
            model::Action::Reject => wit::Action::Reject,
        },
        code: v.code,
        enhanced: v.enhanced,
        text: v.text,
        tenant: v.tenant,
        reason: v.reason,
        explanation: v.explanation,
        headers: v
            .headers
            .into_iter()
            .map(|h| wit::HeaderField {
                name: h.name,
                value: h.value,
            })
            .collect(),
    }
}

export!(Policy);
