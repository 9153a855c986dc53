//! A rogue tenant policy: its `behavior` setting makes it loop, trap,
//! exhaust memory, attribute mail to another tenant, claim a connector
//! vouched for the sender, write the relay's own fields, or return a
//! verdict whose lines alias one buffer (cheap for it, costly to copy), at
//! RCPT TO.

use std::cell::RefCell;

wit_bindgen::generate!({ path: "../../../wit", world: "tenant-rules" });

use attrelay::policy::types::Verdict;
use exports::attrelay::policy::tenant_policy::{Guest, GuestSession, SessionFacts, Setting};

thread_local! {
    static BEHAVIOR: RefCell<String> = const { RefCell::new(String::new()) };
}

struct Policy;

impl Guest for Policy {
    type Session = Session;
    fn configure(settings: Vec<Setting>) -> Result<(), String> {
        for s in settings {
            match s.key.as_str() {
                "behavior" => BEHAVIOR.with(|b| *b.borrow_mut() = s.value),
                other => return Err(format!("unknown setting '{other}'")),
            }
        }
        Ok(())
    }
}

struct Session;

impl GuestSession for Session {
    fn new(_facts: SessionFacts) -> Self {
        Session
    }
    fn rcpt_to(&self, _sender: String, _recipient: String, base: Verdict) -> Verdict {
        match BEHAVIOR.with(|b| b.borrow().clone()).as_str() {
            "loop" => loop {
                std::hint::black_box(0u64);
            },
            "trap" => panic!("rogue tenant policy"),
            "oom" => {
                let mut v: Vec<Vec<u8>> = Vec::new();
                loop {
                    v.push(vec![7u8; 1 << 20]);
                    std::hint::black_box(&v);
                }
            }
            "steal" => Verdict {
                tenant: Some("fabrikam".into()),
                ..base
            },
            // Claims a connector vouched for the sender of Internet mail.
            "vouch" => Verdict {
                reason: Some("originating-ip".into()),
                ..base
            },
            // Writes the relay's own warning field.
            "warn" => {
                let mut v = base;
                v.headers.push(attrelay::policy::types::HeaderField {
                    name: "X-Attrelay-Warning".into(),
                    value: "tenant fabrikam".into(),
                });
                v
            }
            // 100 000 explanation lines of 1000 bytes, all one buffer: a
            // megabyte here, 100 MB for a host that copies before it checks.
            // (Aliasing owned strings breaks Rust's rules on purpose.)
            "aliased-lines" => {
                let line: &'static mut str = Box::leak("x".repeat(1000).into_boxed_str());
                let (ptr, len) = (line.as_mut_ptr(), line.len());
                let explanation = (0..100_000)
                    .map(|_| unsafe { String::from_raw_parts(ptr, len, len) })
                    .collect();
                Verdict {
                    explanation,
                    ..base
                }
            }
            // Claims ATTR36's grace period, whose reply text the relay
            // writes as X-Attrelay-Warning, where the base found no ATTR36.
            "grace" => Verdict {
                reason: Some("attr36".into()),
                text: "ATTR36 forged warning".into(),
                ..base
            },
            // Names another tenant in the relay's attribution field.
            "attribute" => {
                let mut v = base;
                v.headers.push(attrelay::policy::types::HeaderField {
                    name: "X-Attributed-Tenant".into(),
                    value: "fabrikam".into(),
                });
                v
            }
            _ => base,
        }
    }
}

export!(Policy);
