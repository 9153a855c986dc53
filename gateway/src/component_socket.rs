//! The component glue of the `gateway-socket` world (feature `socket`):
//! the gateway without a policy of its own. The base policy and the
//! directory are imports, plugged by composition (`gateway/compose.wac`):
//! an operator's `attribution-policy` component and the
//! `directory-provider` both read. The judgement is [`crate::judge`]'s.

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;

use attrelay_engine::certificate::TrustAnchors;
use attrelay_engine::verdict::policy_failure;
use attrelay_policy::model;

use crate::judge::{self, PolicyCalls, Tenants};

wit_bindgen::generate!({
    path: "../wit/gateway",
    world: "gateway-socket",
    generate_all,
});

use attrelay::gateway::directory_store as store;
use attrelay::policy::policy as base;
use attrelay::policy::types as wit;
use exports::attrelay::gateway::gateway::{Configuration, Guest, GuestSession, SessionFacts};

thread_local! {
    /// The client-certificate anchors once `configure` succeeded; `Err`
    /// with the reason until then, so that every call fails closed.
    static ANCHORS: RefCell<Result<Rc<TrustAnchors>, String>> =
        RefCell::new(Err("the gateway is not configured".into()));
}

struct Component;

impl Guest for Component {
    type Session = Session;

    fn configure(configuration: Configuration) -> Result<(), String> {
        let result = configure(configuration).map(Rc::new);
        let reply = result.as_ref().map(|_| ()).map_err(Clone::clone);
        ANCHORS.with(|a| *a.borrow_mut() = result);
        reply
    }
}

/// Loads the directory into the provider, configures the plugged policy
/// and reads the anchors; the error says which part refused.
fn configure(c: Configuration) -> Result<TrustAnchors, String> {
    store::load(&c.directory, c.directory_format)?;
    base::configure(&c.settings).map_err(|e| format!("the policy refused its settings: {e}"))?;
    judge::anchors(&c.client_trust_anchors)
}

/// The directory, as the provider's functions.
struct ImportedTenants;

impl Tenants for ImportedTenants {
    fn has_tenant(&self, id: &str) -> bool {
        store::has_tenant(id)
    }
    fn unknown_recipient(&self, address: &str) -> Option<String> {
        store::unknown_recipient(address)
    }
}

/// The plugged policy's session.
struct ImportedPolicy(base::Session);

impl PolicyCalls for ImportedPolicy {
    fn mail_from(&mut self, sender: &str) -> model::Verdict {
        verdict_from_wit(self.0.mail_from(sender))
    }
    fn rcpt_to(&mut self, recipient: &str) -> model::Verdict {
        verdict_from_wit(self.0.rcpt_to(recipient))
    }
}

struct Session(RefCell<Result<judge::Session<ImportedPolicy, ImportedTenants>, String>>);

impl GuestSession for Session {
    fn new(facts: SessionFacts) -> Self {
        let anchors = ANCHORS.with(|a| a.borrow().clone());
        Session(RefCell::new(anchors.map(|a| {
            let facts = judge::facts(&a, raw_from_wit(facts));
            let policy = ImportedPolicy(base::Session::new(&facts_to_wit(&facts)));
            judge::Session::new(policy, ImportedTenants)
        })))
    }

    fn mail_from(&self, sender: String) -> wit::Verdict {
        verdict_to_wit(match &mut *self.0.borrow_mut() {
            Ok(s) => s.mail_from(&sender),
            Err(why) => policy_failure(why.as_str()),
        })
    }

    fn rcpt_to(&self, recipient: String) -> wit::Verdict {
        verdict_to_wit(match &mut *self.0.borrow_mut() {
            Ok(s) => s.rcpt_to(&recipient),
            Err(why) => policy_failure(why.as_str()),
        })
    }
}

fn ip_from_wit(ip: wit::IpAddress) -> IpAddr {
    match ip {
        wit::IpAddress::Ipv4((a, b, c, d)) => IpAddr::from([a, b, c, d]),
        wit::IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::from([a, b, c, d, e, f, g, h]),
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

fn raw_from_wit(f: SessionFacts) -> judge::RawFacts {
    judge::RawFacts {
        client_ip: ip_from_wit(f.client_ip),
        helo: f.helo,
        server_hostname: f.server_hostname,
        time: f.time.seconds,
        tls: f.tls.map(|t| judge::RawTls {
            protocol: t.protocol,
            cipher: t.cipher,
            client_chain: t.client_chain,
        }),
    }
}

fn datetime(seconds: i64) -> wit::Datetime {
    wit::Datetime {
        seconds,
        nanoseconds: 0,
    }
}

/// The facts as the plugged policy receives them.
fn facts_to_wit(f: &model::SessionFacts) -> wit::SessionFacts {
    wit::SessionFacts {
        client_ip: ip_to_wit(f.client_ip),
        helo: f.helo.clone(),
        server_hostname: f.server_hostname.clone(),
        time: datetime(f.time),
        tls: f.tls.as_ref().map(|t| wit::TlsFacts {
            protocol: t.protocol.clone(),
            cipher: t.cipher.clone(),
            client_certificate: t
                .client_certificate
                .as_ref()
                .map(|c| wit::ClientCertificate {
                    verified: c.verified,
                    verification_error: c.verification_error.clone(),
                    subject: c.subject.clone(),
                    common_names: c.common_names.clone(),
                    dns_names: c.dns_names.clone(),
                    issuer: c.issuer.clone(),
                    serial: c.serial.clone(),
                    sha256_fingerprint: c.sha256_fingerprint.clone(),
                    not_before: datetime(c.not_before),
                    not_after: datetime(c.not_after),
                }),
        }),
    }
}

fn verdict_from_wit(v: wit::Verdict) -> model::Verdict {
    model::Verdict {
        action: match v.action {
            wit::Action::Accept => model::Action::Accept,
            wit::Action::Defer => model::Action::Defer,
            wit::Action::Reject => model::Action::Reject,
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
            .map(|h| model::HeaderField {
                name: h.name,
                value: h.value,
            })
            .collect(),
    }
}

fn verdict_to_wit(v: model::Verdict) -> wit::Verdict {
    wit::Verdict {
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

export!(Component);
