//! The component glue: exports the `attribution-policy` world of
//! `wit/policy.wit` by converting between the generated bindings and the
//! native types the rules use. No rule lives here.

use std::cell::RefCell;
use std::net::IpAddr;

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

crate::wit_conversions!(wit);

export!(Policy);
