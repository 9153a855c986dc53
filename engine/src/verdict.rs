//! Checking what a policy returns before anyone acts on it.
//!
//! A policy is untrusted code: a verdict whose code contradicts its action, an
//! injected CR/LF, a giant explanation or an unknown tenant would corrupt the
//! SMTP dialogue or the logs. Any such verdict becomes a policy failure
//! (`451 4.3.5`), exactly like a trap.

use attrelay_policy::model::{Action, HeaderField, Verdict};
use attrelay_policy::replies::{self, is_relay_field};

use crate::directory::Directory;

pub const MAX_TEXT: usize = 400;
pub const MAX_REASON: usize = 64;
pub const MAX_EXPLANATION_LINES: usize = 64;
pub const MAX_EXPLANATION_LINE: usize = 1000;
pub const MAX_HEADERS: usize = 8;
pub const MAX_HEADER_VALUE: usize = 900;

/// Whether a verdict's reason says a connector vouched for the sender (the
/// default policy's reasons for mail a tenant's own server sends): such mail
/// gets DSNs with its header section, unlimited. Anything else — `incoming`
/// Internet mail, the postmaster, a custom policy's own reasons — counts as
/// unauthenticated, the safe side; a tenant policy may not move a verdict
/// into this set.
pub fn vouches_for_sender(reason: Option<&str>) -> bool {
    matches!(
        reason,
        Some("originating-certificate" | "originating-ip" | "attr36")
    )
}

/// The reply to any policy failure: temporary, so the client retries and no
/// mail is accepted without a decision. `detail` says why for the logs; it
/// may quote the component (a trap's backtrace names its functions, a
/// refusal is its own text), so it is made one printable line within the
/// bounds of an explanation line ([`one_line`]).
pub fn policy_failure(detail: impl Into<String>) -> Verdict {
    Verdict {
        action: Action::Defer,
        code: 451,
        enhanced: "4.3.5".into(),
        text: "Policy evaluation failed; try again later".into(),
        tenant: None,
        reason: Some("policy-failure".into()),
        explanation: vec![one_line(&detail.into())],
        headers: Vec::new(),
    }
}

/// `recipient` accepted with sender routing in its local part (`@`, `%`
/// or `!`: [`crate::address::has_routing`]) for a client no connector
/// vouched for becomes `550 5.7.1`: the server behind the tenant's domain
/// might route it onward, to anywhere (Postfix's `allow_untrusted_routing =
/// no`). Every front end applies it after the policies, so that the SMTP
/// server, the Postfix policy service and the gateway component refuse
/// alike.
pub fn refuse_unvouched_routing(recipient: &str, v: Verdict) -> Verdict {
    if v.action != Action::Accept
        || !crate::address::has_routing(recipient)
        || vouches_for_sender(v.reason.as_deref())
    {
        return v;
    }
    Verdict {
        explanation: vec![format!(
            "{recipient}: the local part holds a route to another host, and no connector vouched for the client"
        )],
        ..replies::verdict(
            Action::Reject,
            550,
            "5.7.1",
            "Sender-specified routing (@, % or ! in the local part) is not accepted",
            None,
            "sender-routing",
        )
    }
}

/// `text` as one line of printable ASCII, at most
/// [`MAX_EXPLANATION_LINE`] bytes: line breaks become ` | `, any other
/// control or non-ASCII character `?`. For text from a component that goes
/// into logs, decision records and replies to operators.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_EXPLANATION_LINE));
    for c in text.chars() {
        let piece = match c {
            '\n' => " | ",
            '\r' => "",
            ' '..='~' => {
                if out.len() + 1 > MAX_EXPLANATION_LINE {
                    break;
                }
                out.push(c);
                continue;
            }
            _ => "?",
        };
        if out.len() + piece.len() > MAX_EXPLANATION_LINE {
            break;
        }
        out.push_str(piece);
    }
    out
}

fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn enhanced_ok(e: &str, class: u16) -> bool {
    let parts: Vec<&str> = e.split('.').collect();
    parts.len() == 3
        && parts[0] == class.to_string()
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Checks a verdict a policy returned: the bounds and forms the WIT
/// contract documents on `verdict`, and that a named tenant is one
/// `directory` knows. Every host applies it, whatever ran the policy.
pub fn check(v: Verdict, directory: &Directory) -> Result<Verdict, String> {
    check_with(v, |t| directory.has_tenant(t))
}

/// [`check`], asking `known_tenant` whether a named tenant exists (a host
/// whose directory lives elsewhere: a composed gateway's).
pub fn check_with(v: Verdict, known_tenant: impl Fn(&str) -> bool) -> Result<Verdict, String> {
    let action = v.action;
    let class = v.code / 100;
    let expected = match action {
        Action::Accept => 2,
        Action::Defer => 4,
        Action::Reject => 5,
    };
    if !(200..600).contains(&v.code) || class != expected {
        return Err(format!(
            "verdict code {} does not agree with action {action:?}",
            v.code
        ));
    }
    if !enhanced_ok(&v.enhanced, class) {
        return Err(format!(
            "enhanced status code {:?} is not {class}.x.y",
            truncate(&v.enhanced)
        ));
    }
    if v.text.len() > MAX_TEXT || !printable(&v.text) {
        return Err(format!(
            "reply text is longer than {MAX_TEXT} bytes or not printable ASCII: {:?}",
            truncate(&v.text)
        ));
    }
    if let Some(t) = &v.tenant
        && !known_tenant(t)
    {
        return Err(format!("verdict names unknown tenant {:?}", truncate(t)));
    }
    let reason_ok = |r: &str| {
        !r.is_empty()
            && r.len() <= MAX_REASON
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if let Some(r) = &v.reason
        && !reason_ok(r)
    {
        return Err(format!(
            "reason {:?} is not 1 to {MAX_REASON} characters of [a-z0-9-]",
            truncate(r)
        ));
    }
    if v.explanation.len() > MAX_EXPLANATION_LINES {
        return Err(format!(
            "explanation has {} lines, more than {MAX_EXPLANATION_LINES}",
            v.explanation.len()
        ));
    }
    if let Some(l) = v
        .explanation
        .iter()
        .find(|l| l.len() > MAX_EXPLANATION_LINE || l.contains(['\r', '\n']))
    {
        return Err(format!(
            "an explanation line is over {MAX_EXPLANATION_LINE} bytes or holds CR/LF ({} bytes)",
            l.len()
        ));
    }
    if v.headers.len() > MAX_HEADERS {
        return Err(format!(
            "{} header fields, more than {MAX_HEADERS}",
            v.headers.len()
        ));
    }
    let mut headers = Vec::new();
    for h in v.headers {
        let name_ok = h.name.len() > 2
            && h.name.len() <= 64
            && h.name[..2].eq_ignore_ascii_case("x-")
            && h.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !name_ok {
            return Err(format!(
                "header name {:?} is not X- followed by letters, digits and hyphens",
                truncate(&h.name)
            ));
        }
        // The relay alone writes its own fields: the attribution from the
        // verdict's `tenant` (which a tenant policy cannot set to another
        // tenant), the grace warning from an `attr36` accept (a reason a
        // tenant policy may give only where the base policy did). A policy
        // that could write them itself could name any tenant.
        if is_relay_field(&h.name) {
            return Err(format!(
                "header {} is one of the relay's own fields (X-Attributed-Tenant, X-Attrelay-*), which no policy writes",
                h.name
            ));
        }
        if h.value.len() > MAX_HEADER_VALUE || !printable(&h.value) {
            return Err(format!(
                "header {} has a value over {MAX_HEADER_VALUE} bytes or not printable ASCII",
                h.name
            ));
        }
        headers.push(HeaderField {
            name: h.name,
            value: h.value,
        });
    }
    Ok(Verdict {
        action,
        code: v.code,
        enhanced: v.enhanced,
        text: v.text,
        tenant: v.tenant,
        reason: v.reason,
        explanation: v.explanation,
        headers,
    })
}

/// At most 80 characters of untrusted text, for error messages.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(name: &str, value: &str) -> Verdict {
        Verdict {
            action: Action::Accept,
            code: 250,
            enhanced: "2.1.5".into(),
            text: "OK".into(),
            tenant: None,
            reason: None,
            explanation: Vec::new(),
            headers: vec![HeaderField {
                name: name.into(),
                value: value.into(),
            }],
        }
    }

    #[test]
    fn failure_details_are_one_bounded_printable_line() {
        let hostile = format!("trap\r\nX-Forged: 1\n\u{1b}[2J{}", "é".repeat(2000));
        let v = policy_failure(hostile);
        let line = &v.explanation[0];
        assert!(line.len() <= MAX_EXPLANATION_LINE, "{}", line.len());
        assert!(line.bytes().all(|b| (0x20..0x7f).contains(&b)), "{line:?}");
        assert!(line.starts_with("trap | X-Forged: 1 | ?[2J??"), "{line:?}");
    }

    #[test]
    fn no_policy_writes_a_relay_field() {
        let dir = Directory::default();
        for name in [
            "X-Attributed-Tenant",
            "x-attributed-tenant",
            "X-ATTRIBUTED-TENANT",
            "X-Attrelay-Warning",
            "x-attrelay-warning",
            "X-Attrelay-Anything-Later",
        ] {
            let e = check(with_header(name, "contoso"), &dir).unwrap_err();
            assert!(e.contains("relay's own"), "{name}: {e}");
        }
        let own = check(with_header("X-Contoso-Rule", "r1"), &dir).unwrap();
        assert_eq!(own.headers[0].name, "X-Contoso-Rule");
        assert!(check(with_header("X-Contoso-Rule", "a\r\nb"), &dir).is_err());
    }
}
