//! A tenant policy: a longer grace period for one tenant.
//!
//! The base policy rejects ATTR36 mail once the global enforcement date has
//! passed. This tenant negotiated more time: until `grace_until`, its ATTR36
//! mail is deferred with `451 4.4.4` (so its servers retry and its admins see
//! the warning) instead of bounced. Everything else passes through unchanged.
//!
//! Settings: `grace_until` (required): seconds since the epoch, or an RFC 3339
//! instant in UTC such as `2030-01-01T00:00:00Z`.

use std::cell::Cell;

wit_bindgen::generate!({ path: "../../wit", world: "tenant-rules" });

use attrelay::policy::types::{Action, Verdict};
use exports::attrelay::policy::tenant_policy::{Guest, GuestSession, SessionFacts, Setting};

thread_local! {
    static GRACE_UNTIL: Cell<i64> = const { Cell::new(i64::MIN) };
}

/// Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` or plain epoch seconds.
fn parse_instant(s: &str) -> Option<i64> {
    if let Ok(n) = s.trim().parse::<i64>() {
        return Some(n);
    }
    let b = s.trim().as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| std::str::from_utf8(&b[r]).ok()?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

struct Policy;

impl Guest for Policy {
    type Session = Session;

    fn configure(settings: Vec<Setting>) -> Result<(), String> {
        let mut until = None;
        for s in settings {
            match s.key.as_str() {
                "grace_until" => until = Some(parse_instant(&s.value).ok_or_else(|| {
                    format!(
                        "setting 'grace_until': '{}' is not YYYY-MM-DDTHH:MM:SSZ or epoch seconds",
                        s.value
                    )
                })?),
                other => {
                    return Err(format!(
                        "unknown setting '{other}' (this policy knows 'grace_until')"
                    ));
                }
            }
        }
        let until = until.ok_or("setting 'grace_until' is required")?;
        GRACE_UNTIL.with(|g| g.set(until));
        Ok(())
    }
}

struct Session {
    time: i64,
}

impl GuestSession for Session {
    fn new(facts: SessionFacts) -> Self {
        Session {
            time: facts.time.seconds,
        }
    }

    fn rcpt_to(&self, _sender: String, _recipient: String, base: Verdict) -> Verdict {
        let until = GRACE_UNTIL.with(|g| g.get());
        let attr36 = base.reason.as_deref() == Some("attr36");
        if attr36 && base.action == Action::Reject && self.time < until {
            let mut explanation = base.explanation;
            explanation.push(format!("tenant policy: longer grace period for this tenant until epoch {until}: deferred, not rejected"));
            return Verdict {
                action: Action::Defer,
                code: 451,
                enhanced: "4.4.4".into(),
                text: "Relay Access Denied, unrecognized sender domain. ATTR36".into(),
                explanation,
                ..base
            };
        }
        base
    }
}

export!(Policy);
