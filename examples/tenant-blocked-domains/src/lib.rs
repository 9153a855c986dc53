//! A tenant policy: refuse relaying to a list of recipient domains.
//!
//! A tenant that must never send to some domains (a competitor, a sanctioned
//! country's registry, a test domain) lists them; recipients there get
//! `550 5.7.1`, and every other recipient keeps the base verdict. Incoming
//! mail to the tenant's own accepted domains is never affected.
//!
//! Settings: `domains` (required): comma-separated domains; a domain also
//! covers its subdomains.

use std::cell::RefCell;

wit_bindgen::generate!({ path: "../../wit", world: "tenant-rules" });

use attrelay::policy::tenant_directory;
use attrelay::policy::types::{Action, Verdict};
use exports::attrelay::policy::tenant_policy::{Guest, GuestSession, SessionFacts, Setting};

thread_local! {
    static BLOCKED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct Policy;

impl Guest for Policy {
    type Session = Session;

    fn configure(settings: Vec<Setting>) -> Result<(), String> {
        let mut domains = None;
        for s in settings {
            match s.key.as_str() {
                "domains" => {
                    let list: Vec<String> = s
                        .value
                        .split(',')
                        .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
                        .filter(|d| !d.is_empty())
                        .collect();
                    if list
                        .iter()
                        .any(|d| !d.contains('.') || d.contains(char::is_whitespace))
                    {
                        return Err(format!(
                            "setting 'domains': '{}' holds something that is not a domain",
                            s.value
                        ));
                    }
                    domains = Some(list);
                }
                other => {
                    return Err(format!(
                        "unknown setting '{other}' (this policy knows 'domains')"
                    ));
                }
            }
        }
        let domains = domains.ok_or("setting 'domains' is required")?;
        BLOCKED.with(|b| *b.borrow_mut() = domains);
        Ok(())
    }
}

struct Session;

fn blocked(domain: &str) -> Option<String> {
    BLOCKED.with(|b| {
        b.borrow()
            .iter()
            .find(|d| domain == d.as_str() || domain.ends_with(&format!(".{d}")))
            .cloned()
    })
}

impl GuestSession for Session {
    fn new(_facts: SessionFacts) -> Self {
        Session
    }

    fn rcpt_to(&self, _sender: String, recipient: String, base: Verdict) -> Verdict {
        if base.action != Action::Accept {
            return base;
        }
        let domain = recipient
            .rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
            .unwrap_or_default();
        // The tenant's own domains are incoming mail, never blocked.
        if tenant_directory::accepted_domains().contains(&domain) {
            return base;
        }
        match blocked(&domain) {
            Some(d) => {
                let mut explanation = base.explanation;
                explanation.push(format!(
                    "tenant policy of {}: relaying to {d} is not allowed",
                    tenant_directory::tenant_id()
                ));
                Verdict {
                    action: Action::Reject,
                    code: 550,
                    enhanced: "5.7.1".into(),
                    text: format!("Relaying to {d} refused by tenant policy"),
                    reason: Some("tenant-blocked-domain".into()),
                    explanation,
                    headers: Vec::new(),
                    ..base
                }
            }
            None => base,
        }
    }
}

export!(Policy);
