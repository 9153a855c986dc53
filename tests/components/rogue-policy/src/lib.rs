//! A rogue attribution policy. The `behavior` setting picks the misbehaviour,
//! and `stage` picks when: `configure`, `session` (the constructor),
//! `mail-from`, `rcpt-to` (default) or `every` stage. With `only`, it
//! misbehaves only when the address contains that text (so it passes
//! load-time checks and fails on live traffic). `iterations` sets the work
//! of the `spin` behaviour. `accept-all` (the default) accepts everything;
//! `attribute-by-domain` too, attributing mail for a tenant's domain to that
//! tenant (read from the host's directory).

use std::cell::RefCell;

wit_bindgen::generate!({ path: "../../../wit", world: "attribution-policy" });

use attrelay::policy::types::{Action, HeaderField};
use exports::attrelay::policy::policy::{Guest, GuestSession, SessionFacts, Setting, Verdict};

thread_local! {
    static BEHAVIOR: RefCell<(String, String)> = RefCell::new((String::new(), "rcpt-to".into()));
    static ONLY: RefCell<Option<String>> = const { RefCell::new(None) };
    static ITERATIONS: RefCell<u64> = const { RefCell::new(0) };
}

fn ok() -> Verdict {
    Verdict {
        action: Action::Accept,
        code: 250,
        enhanced: "2.1.5".into(),
        text: "OK".into(),
        tenant: None,
        reason: None,
        explanation: Vec::new(),
        headers: Vec::new(),
    }
}

/// Misbehaves if `stage` is the configured stage (and `address` contains
/// the `only` text, if set); otherwise returns `ok()`.
fn act(stage: &str, address: &str) -> Verdict {
    let (behavior, when) = BEHAVIOR.with(|b| b.borrow().clone());
    let selected = ONLY.with(|o| {
        o.borrow()
            .as_ref()
            .is_none_or(|t| address.contains(t.as_str()))
    });
    if (when != stage && when != "every") || !selected {
        return ok();
    }
    match behavior.as_str() {
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "trap" => panic!("rogue policy: deliberate panic"),
        // Waits on the host's clock, where no epoch deadline reaches.
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            ok()
        }
        "oom" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        // Busy for `iterations` rounds, then well-behaved: a slow step that
        // alone stays within the budget.
        "spin" => {
            let n = ITERATIONS.with(|i| *i.borrow());
            let mut x: u64 = 0;
            for _ in 0..n {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            ok()
        }
        // 100 000 explanation lines of 1000 bytes (each within the verdict
        // check's bound) that are all one buffer: about a megabyte of the
        // instance's memory, 100 MB if the host copied each line out.
        // (Aliasing owned strings breaks Rust's rules; this component exists
        // to break the host's.)
        "aliased-lines" => {
            let line: &'static mut str = Box::leak("x".repeat(1000).into_boxed_str());
            let (ptr, len) = (line.as_mut_ptr(), line.len());
            let explanation = (0..100_000)
                .map(|_| unsafe { String::from_raw_parts(ptr, len, len) })
                .collect();
            Verdict {
                explanation,
                ..ok()
            }
        }
        "lines-65" => Verdict {
            explanation: vec!["line".into(); 65],
            ..ok()
        },
        "long-line" => Verdict {
            explanation: vec!["x".repeat(1001)],
            ..ok()
        },
        // Writes the relay's own fields, as the relay would.
        "relay-field" => Verdict {
            headers: vec![HeaderField {
                name: "X-Attrelay-Warning".into(),
                value: "none".into(),
            }],
            ..ok()
        },
        "attribution-field" => Verdict {
            headers: vec![HeaderField {
                name: "X-Attributed-Tenant".into(),
                value: "fabrikam".into(),
            }],
            ..ok()
        },
        "huge-explanation" => Verdict {
            explanation: vec!["x".repeat(8 << 20)],
            ..ok()
        },
        "many-lines" => Verdict {
            explanation: vec!["line".into(); 100_000],
            ..ok()
        },
        "code-mismatch" => Verdict { code: 550, ..ok() },
        "crlf-injection" => Verdict {
            text: "OK\r\n250 smuggled".into(),
            ..ok()
        },
        "bad-enhanced" => Verdict {
            enhanced: "5.7.1".into(),
            ..ok()
        },
        "unknown-tenant" => Verdict {
            tenant: Some("no-such-tenant".into()),
            ..ok()
        },
        "bad-header" => Verdict {
            headers: vec![HeaderField {
                name: "Received".into(),
                value: "forged".into(),
            }],
            ..ok()
        },
        // Reads what a policy must not depend on: the wall clock and the
        // random numbers of WASI (std's hash keys come from them).
        "ambient" => {
            use std::hash::{BuildHasher, Hasher};
            let clock = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(7);
            Verdict {
                explanation: vec![format!("clock={clock}"), format!("random={}", h.finish())],
                ..ok()
            }
        }
        // An open relay for everyone, attributing mail for a tenant's
        // domain to that tenant (read from the host's directory).
        "attribute-by-domain" => Verdict {
            tenant: address
                .rsplit_once('@')
                .and_then(|(_, domain)| attrelay::policy::directory::tenant_of_domain(domain)),
            ..ok()
        },
        "accept-all" | "" => ok(),
        other => panic!("unknown behavior {other}"),
    }
}

struct Rogue;

impl Guest for Rogue {
    type Session = Session;
    fn configure(settings: Vec<Setting>) -> Result<(), String> {
        for s in settings {
            match s.key.as_str() {
                "behavior" => BEHAVIOR.with(|b| b.borrow_mut().0 = s.value),
                "stage" => BEHAVIOR.with(|b| b.borrow_mut().1 = s.value),
                "only" => ONLY.with(|o| *o.borrow_mut() = Some(s.value)),
                "iterations" => match s.value.parse() {
                    Ok(n) => ITERATIONS.with(|i| *i.borrow_mut() = n),
                    Err(_) => return Err(format!("iterations: not a number: {}", s.value)),
                },
                other => return Err(format!("unknown setting '{other}'")),
            }
        }
        act("configure", "");
        Ok(())
    }
}

struct Session;

impl GuestSession for Session {
    fn new(_facts: SessionFacts) -> Self {
        act("session", "");
        Session
    }
    fn mail_from(&self, sender: String) -> Verdict {
        act("mail-from", &sender)
    }
    fn rcpt_to(&self, recipient: String) -> Verdict {
        act("rcpt-to", &recipient)
    }
}

export!(Rogue);
