//! The component glue: exports `attrelay:gateway/gateway` by converting
//! between the generated bindings and [`crate::judge`]. No judgement lives
//! here.

use std::cell::RefCell;
use std::rc::Rc;

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
struct Session(RefCell<judge::Judging<judge::NativeSession>>);

impl GuestSession for Session {
    fn new(facts: SessionFacts) -> Self {
        let gateway = GATEWAY.with(|g| g.borrow().clone());
        Session(RefCell::new(judge::Judging(
            gateway.map(|g| g.session(raw_from_wit(facts))),
        )))
    }

    fn mail_from(&self, sender: String) -> wit::Verdict {
        verdict_to_wit(self.0.borrow_mut().mail_from(&sender))
    }

    fn rcpt_to(&self, recipient: String) -> wit::Verdict {
        #[cfg(feature = "faults")]
        crate::faults::inject(&recipient);
        verdict_to_wit(self.0.borrow_mut().rcpt_to(&recipient))
    }
}

judge::raw_from_wit!();

attrelay_policy::wit_conversions!(wit);

export!(Component);
