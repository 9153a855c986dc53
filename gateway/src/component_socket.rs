//! The component glue of the `gateway-socket` world (feature `socket`):
//! the gateway without a policy of its own. The base policy and the
//! directory are imports, plugged by composition (`gateway/compose.wac`):
//! an operator's `attribution-policy` component and the
//! `directory-provider` both read. The judgement is [`crate::judge`]'s.

use std::cell::RefCell;
use std::rc::Rc;

use attrelay_engine::certificate::TrustAnchors;
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

struct Session(RefCell<judge::Judging<judge::Session<ImportedPolicy, ImportedTenants>>>);

impl GuestSession for Session {
    fn new(facts: SessionFacts) -> Self {
        let anchors = ANCHORS.with(|a| a.borrow().clone());
        Session(RefCell::new(judge::Judging(anchors.map(|a| {
            let facts = judge::facts(&a, raw_from_wit(facts));
            let policy = ImportedPolicy(base::Session::new(&facts_to_wit(&facts)));
            judge::Session::new(policy, ImportedTenants)
        }))))
    }

    fn mail_from(&self, sender: String) -> wit::Verdict {
        verdict_to_wit(self.0.borrow_mut().mail_from(&sender))
    }

    fn rcpt_to(&self, recipient: String) -> wit::Verdict {
        verdict_to_wit(self.0.borrow_mut().rcpt_to(&recipient))
    }
}

judge::raw_from_wit!();

attrelay_policy::wit_conversions!(wit);

export!(Component);
