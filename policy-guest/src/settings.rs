//! The default policy's settings (`[policy.settings]` in the relay's config).
//!
//! | key | value | default |
//! |---|---|---|
//! | `enforcement` | RFC 3339 instant from which ATTR36 is a permanent 550 | `2017-07-05T00:00:00Z` |
//! | `before_enforcement` | `defer` (451 4.4.4) or `warn` (accept and stamp a warning header) | `defer` |

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::model::UnixSeconds;

/// What ATTR36 mail gets before the enforcement instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraceMode {
    /// `451 4.4.4 ... ATTR36`: the sender retries and its admin sees the warning.
    Defer,
    /// Accept, and stamp a warning header on the message.
    Warn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// From this instant on, ATTR36 is rejected with `550 5.7.64`.
    pub enforcement: UnixSeconds,
    pub before_enforcement: GraceMode,
}

/// 2017-07-05T00:00:00Z, the deadline the seeds give (moved from 1 February 2017).
pub const DEFAULT_ENFORCEMENT: UnixSeconds = 1_499_212_800;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enforcement: DEFAULT_ENFORCEMENT,
            before_enforcement: GraceMode::Defer,
        }
    }
}

/// Parses an RFC 3339 instant into seconds since the epoch.
pub fn parse_instant(value: &str) -> Result<UnixSeconds, String> {
    OffsetDateTime::parse(value.trim(), &Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| {
            format!("'{value}' is not an RFC 3339 instant such as 2017-07-05T00:00:00Z ({e})")
        })
}

/// Formats seconds since the epoch as RFC 3339 (UTC).
pub fn format_instant(t: UnixSeconds) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{t}"))
}

impl Settings {
    /// Builds the settings from key/value pairs; an unknown key or a bad value is
    /// an error naming the key, so that a typo never silently keeps a default.
    pub fn from_pairs<'a, I>(pairs: I) -> Result<Settings, String>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut s = Settings::default();
        for (key, value) in pairs {
            match key {
                "enforcement" => {
                    s.enforcement =
                        parse_instant(value).map_err(|e| format!("setting 'enforcement': {e}"))?
                }
                "before_enforcement" => {
                    s.before_enforcement = match value.trim() {
                        "defer" => GraceMode::Defer,
                        "warn" => GraceMode::Warn,
                        other => {
                            return Err(format!(
                                "setting 'before_enforcement': '{other}' is neither 'defer' nor 'warn'"
                            ));
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "unknown setting '{other}' (the default policy knows 'enforcement' and 'before_enforcement')"
                    ));
                }
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_parsing() {
        assert_eq!(
            parse_instant("2017-07-05T00:00:00Z").unwrap(),
            DEFAULT_ENFORCEMENT
        );
        let s = Settings::from_pairs([
            ("enforcement", "2030-01-01T00:00:00+01:00"),
            ("before_enforcement", "warn"),
        ])
        .unwrap();
        assert_eq!(s.before_enforcement, GraceMode::Warn);
        assert_eq!(format_instant(s.enforcement), "2029-12-31T23:00:00Z");
        assert!(
            Settings::from_pairs([("enforcment", "x")])
                .unwrap_err()
                .contains("unknown setting 'enforcment'")
        );
        assert!(Settings::from_pairs([("before_enforcement", "maybe")]).is_err());
        assert!(
            Settings::from_pairs([("enforcement", "yesterday")])
                .unwrap_err()
                .contains("enforcement")
        );
    }
}
