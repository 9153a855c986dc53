//! The component glue: exports `attrelay:gateway/gateway` by converting
//! between the generated bindings and [`crate::judge`]. No judgement lives
//! here.

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;

use attrelay_engine::verdict::policy_failure;
use attrelay_policy::model;

use crate::judge::{self, Gateway};
use crate::tenants::Format;

wit_bindgen::generate!({
    path: "../wit/gateway",
    world: "attrelay-gateway",
    generate_all,
});

use attrelay::gateway::types::DirectoryFormat;
use attrelay::policy::types as wit;
use exports::attrelay::gateway::gateway::{Configuration, Guest, GuestSession, SessionFacts};

thread_local! {
    /// The configured gateway; `Err` with the reason until `configure`
    /// succeeds, so that an unconfigured or misconfigured instance fails
    /// every call closed.
    static GATEWAY: RefCell<Result<Rc<Gateway>, String>> =
        RefCell::new(Err("the gateway is not configured".into()));
}

struct Component;

impl Guest for Component {
    type Session = Session;

    fn configure(configuration: Configuration) -> Result<(), String> {
        let config = judge::Configuration {
            directory: configuration.directory,
            directory_format: match configuration.directory_format {
                DirectoryFormat::Toml => Format::Toml,
                DirectoryFormat::Json => Format::Json,
            },
            client_trust_anchors: configuration.client_trust_anchors,
            settings: configuration
                .settings
                .into_iter()
                .map(|s| (s.key, s.value))
                .collect(),
        };
        let result = Gateway::configure(&config).map(Rc::new);
        let reply = result.as_ref().map(|_| ()).map_err(Clone::clone);
        GATEWAY.with(|g| *g.borrow_mut() = result);
        reply
    }
}

/// A session, or why there is none (every call then fails closed).
struct Session(RefCell<Result<judge::NativeSession, String>>);

impl GuestSession for Session {
    fn new(facts: SessionFacts) -> Self {
        let gateway = GATEWAY.with(|g| g.borrow().clone());
        Session(RefCell::new(
            gateway.map(|g| g.session(facts_from_wit(facts))),
        ))
    }

    fn mail_from(&self, sender: String) -> wit::Verdict {
        verdict_to_wit(match &mut *self.0.borrow_mut() {
            Ok(s) => s.mail_from(&sender),
            Err(why) => policy_failure(why.as_str()),
        })
    }

    fn rcpt_to(&self, recipient: String) -> wit::Verdict {
        #[cfg(feature = "faults")]
        crate::faults::inject(&recipient);
        verdict_to_wit(match &mut *self.0.borrow_mut() {
            Ok(s) => s.rcpt_to(&recipient),
            Err(why) => policy_failure(why.as_str()),
        })
    }
}

fn facts_from_wit(f: SessionFacts) -> judge::RawFacts {
    judge::RawFacts {
        client_ip: match f.client_ip {
            wit::IpAddress::Ipv4((a, b, c, d)) => IpAddr::from([a, b, c, d]),
            wit::IpAddress::Ipv6((a, b, c, d, e, g, h, i)) => {
                IpAddr::from([a, b, c, d, e, g, h, i])
            }
        },
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
