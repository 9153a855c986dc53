//! Which queued messages a command means: `--sender`, `--rcpt`,
//! `--tenant`, `--older-than`, `--held`, all of which must match.

use std::time::Duration;

use crate::spool::QueueEntry;

/// The filters of `attrelay queue list` and of `--all-matching`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// The sender: an address (case-insensitive), `@domain` for any
    /// address at that domain, or `<>` for the null sender (DSNs).
    #[arg(long, value_name = "ADDRESS")]
    pub sender: Option<String>,
    /// A recipient still to deliver, matched as --sender is.
    #[arg(long, value_name = "ADDRESS")]
    pub rcpt: Option<String>,
    /// The attributed tenant's id.
    #[arg(long, value_name = "ID")]
    pub tenant: Option<String>,
    /// Received longer ago than this: 90s, 30m, 4h, 5d (a number alone is seconds).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Held messages only.
    #[arg(long)]
    pub held: bool,
}

impl Filter {
    /// Whether no filter is given (every message matches).
    pub fn is_empty(&self) -> bool {
        self.sender.is_none()
            && self.rcpt.is_none()
            && self.tenant.is_none()
            && self.older_than.is_none()
            && !self.held
    }

    /// Whether `e` matches every filter given, at time `now`.
    pub fn matches(&self, e: &QueueEntry, now: i64) -> bool {
        self.sender
            .as_deref()
            .is_none_or(|s| address_matches(s, &e.sender))
            && self
                .rcpt
                .as_deref()
                .is_none_or(|r| e.pending.iter().any(|p| address_matches(r, p)))
            && self
                .tenant
                .as_deref()
                .is_none_or(|t| e.tenant.as_deref() == Some(t))
            && self
                .older_than
                .is_none_or(|d| now - e.received_at > d.as_secs() as i64)
            && (!self.held || e.held)
    }
}

/// Whether `address` is what `pattern` names: the same address, any at a
/// domain (`@domain`), or the null sender (`<>`), ignoring case. No
/// substrings: a filter that deletes must not catch more than it says.
fn address_matches(pattern: &str, address: &str) -> bool {
    if pattern == "<>" {
        return address.is_empty();
    }
    match pattern.strip_prefix('@') {
        Some(domain) => address
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain)),
        None => address.eq_ignore_ascii_case(pattern),
    }
}

/// `90s`, `30m`, `4h`, `5d`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration such as 90s, 30m, 4h or 5d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("'{text}': the unit must be s, m, h or d")),
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("'{text}' is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        sender: &str,
        pending: &[&str],
        tenant: Option<&str>,
        received_at: i64,
        held: bool,
    ) -> QueueEntry {
        QueueEntry {
            id: "Q1".into(),
            sender: sender.into(),
            tenant: tenant.map(Into::into),
            pending: pending.iter().map(|s| s.to_string()).collect(),
            received_at,
            attempts: 0,
            next_attempt: 0,
            last_error: None,
            is_dsn: false,
            size: 1,
            held,
        }
    }

    #[test]
    fn every_filter_must_match_and_none_matches_by_substring() {
        let e = entry(
            "A@Contoso.com",
            &["x@example.org"],
            Some("contoso"),
            1000,
            false,
        );
        let f = |s: &str, r: &str| Filter {
            sender: (!s.is_empty()).then(|| s.into()),
            rcpt: (!r.is_empty()).then(|| r.into()),
            ..Filter::default()
        };
        assert!(Filter::default().matches(&e, 2000));
        assert!(f("a@contoso.com", "").matches(&e, 2000));
        assert!(f("@CONTOSO.COM", "@example.org").matches(&e, 2000));
        assert!(!f("a@contoso.co", "").matches(&e, 2000));
        assert!(!f("@ontoso.com", "").matches(&e, 2000));
        assert!(!f("contoso.com", "").matches(&e, 2000));
        assert!(!f("a@contoso.com", "y@example.org").matches(&e, 2000));
        assert!(!f("<>", "").matches(&e, 2000));
        assert!(f("<>", "").matches(&entry("", &[], None, 0, false), 0));
        let old = Filter {
            older_than: Some(Duration::from_secs(600)),
            ..Filter::default()
        };
        assert!(old.matches(&e, 1601));
        assert!(!old.matches(&e, 1600));
        let held = Filter {
            held: true,
            tenant: Some("contoso".into()),
            ..Filter::default()
        };
        assert!(!held.matches(&e, 0));
        assert!(held.matches(&entry("", &[], Some("contoso"), 0, true), 0));
    }

    #[test]
    fn durations_in_words() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(14400)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(432000)));
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
