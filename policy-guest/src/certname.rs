//! Certificate-name matching between a connector's `TlsSenderCertificateName`
//! and the names (CN, DNS SANs) of a client certificate.
//!
//! The rules (reference, "Certificate-name matching"):
//! - case-insensitive, trailing dot ignored;
//! - an exact connector name matches that exact certificate name only;
//! - `*.contoso.com` means contoso.com and all its subdomains, and also a
//!   wildcard certificate name `*.contoso.com` or `*.sub.contoso.com`;
//! - a wildcard certificate name never matches an exact connector name;
//! - a `*` anywhere but as the whole leftmost label is invalid.

/// Lower case, without a trailing dot, trimmed.
pub fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The domain a name stands for: the name without a leading `*.`.
pub fn domain_of(name: &str) -> &str {
    name.strip_prefix("*.").unwrap_or(name)
}

/// Whether a (normalised) name is a wildcard.
pub fn is_wildcard(name: &str) -> bool {
    name.starts_with("*.")
}

/// Why a connector certificate name is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    MisplacedWildcard,
    BadLabel(String),
    TooShort,
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameError::Empty => write!(f, "the name is empty"),
            NameError::MisplacedWildcard => write!(
                f,
                "a '*' is allowed only as the whole leftmost label, as in '*.contoso.com'"
            ),
            NameError::BadLabel(l) => write!(
                f,
                "label '{l}' is not a valid DNS label (letters, digits and inner hyphens, 1 to 63 characters)"
            ),
            NameError::TooShort => write!(
                f,
                "the domain must have at least two labels (a wildcard of a top-level domain would match the world)"
            ),
        }
    }
}

/// Validates a connector's certificate name (or an accepted domain when
/// `allow_wildcard` is false) and returns it normalised.
pub fn validate(name: &str, allow_wildcard: bool) -> Result<String, NameError> {
    let n = normalize(name);
    if n.is_empty() {
        return Err(NameError::Empty);
    }
    let domain = if allow_wildcard { domain_of(&n) } else { &n };
    let labels: Vec<&str> = domain.split('.').collect();
    for label in &labels {
        if label.contains('*') {
            return Err(NameError::MisplacedWildcard);
        }
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(NameError::BadLabel((*label).to_string()));
        }
    }
    if labels.len() < 2 {
        return Err(NameError::TooShort);
    }
    Ok(n)
}

/// How specifically a connector name matched: an exact name beats a wildcard,
/// then a longer domain (more labels) beats a shorter one. Ordered so that
/// `max()` is the most specific.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Specificity {
    pub exact: bool,
    pub labels: usize,
}

/// Whether the connector name `pattern` matches the certificate name `cert`
/// (both in any case), and how specifically.
pub fn matches(pattern: &str, cert: &str) -> Option<Specificity> {
    let p = normalize(pattern);
    let c = normalize(cert);
    if p.is_empty() || c.is_empty() {
        return None;
    }
    let labels = domain_of(&p).split('.').count();
    if let Some(pd) = p.strip_prefix("*.") {
        let cd = domain_of(&c);
        let within = cd == pd
            || (cd.len() > pd.len()
                && cd.ends_with(pd)
                && cd.as_bytes()[cd.len() - pd.len() - 1] == b'.');
        within.then_some(Specificity {
            exact: false,
            labels,
        })
    } else if !is_wildcard(&c) && c == p {
        Some(Specificity {
            exact: true,
            labels,
        })
    } else {
        None
    }
}

/// The connector names that could match certificate name `cert`: the lookup
/// keys for `connectors-by-certificate-name`. For `mail.contoso.com`: itself,
/// `*.mail.contoso.com`, `*.contoso.com`, `*.com`; for `*.mail.contoso.com`:
/// `*.mail.contoso.com`, `*.contoso.com`, `*.com`.
pub fn candidate_connector_names(cert: &str) -> Vec<String> {
    let c = normalize(cert);
    let mut out = Vec::new();
    if c.is_empty() {
        return out;
    }
    if !is_wildcard(&c) {
        out.push(c.clone());
    }
    let mut domain = domain_of(&c);
    loop {
        out.push(format!("*.{domain}"));
        match domain.split_once('.') {
            Some((_, parent)) if !parent.is_empty() => domain = parent,
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_match_only_themselves() {
        assert!(matches("mail.contoso.com", "MAIL.contoso.com.").is_some());
        assert!(matches("mail.contoso.com", "contoso.com").is_none());
        assert!(matches("mail.contoso.com", "a.mail.contoso.com").is_none());
        assert!(matches("contoso.com", "*.contoso.com").is_none());
        assert!(matches("mail.contoso.com", "*.contoso.com").is_none());
    }

    #[test]
    fn wildcard_connector_covers_domain_and_subdomains() {
        for name in [
            "contoso.com",
            "mail1.contoso.com",
            "a.b.contoso.com",
            "*.contoso.com",
        ] {
            assert!(matches("*.contoso.com", name).is_some(), "{name}");
        }
        for name in [
            "contoso.com.evil.example",
            "evilcontoso.com",
            "com",
            "*.com",
        ] {
            assert!(matches("*.contoso.com", name).is_none(), "{name}");
        }
        assert!(matches("*.example.com", "*.mail.example.com").is_some());
        assert!(matches("*.mail.example.com", "*.example.com").is_none());
    }

    #[test]
    fn exact_beats_wildcard_and_longer_beats_shorter() {
        let exact = matches("mail.contoso.com", "mail.contoso.com").unwrap();
        let wild_long = matches("*.mail.contoso.com", "mail.contoso.com").unwrap();
        let wild_short = matches("*.contoso.com", "mail.contoso.com").unwrap();
        assert!(exact > wild_long && wild_long > wild_short);
    }

    #[test]
    fn candidates_cover_every_possible_match() {
        assert_eq!(
            candidate_connector_names("Mail.Contoso.com"),
            [
                "mail.contoso.com",
                "*.mail.contoso.com",
                "*.contoso.com",
                "*.com"
            ]
        );
        assert_eq!(
            candidate_connector_names("*.mail.example.com"),
            ["*.mail.example.com", "*.example.com", "*.com"]
        );
    }

    #[test]
    fn validation() {
        assert_eq!(validate("*.Contoso.com.", true).unwrap(), "*.contoso.com");
        assert_eq!(
            validate("mail.*.com", true),
            Err(NameError::MisplacedWildcard)
        );
        assert_eq!(
            validate("*mail.contoso.com", true),
            Err(NameError::MisplacedWildcard)
        );
        assert_eq!(
            validate("*.contoso.com", false),
            Err(NameError::MisplacedWildcard)
        );
        assert_eq!(validate("*.com", true), Err(NameError::TooShort));
        assert_eq!(validate("", true), Err(NameError::Empty));
        assert!(matches!(
            validate("bad_-.com", true),
            Err(NameError::BadLabel(_))
        ));
    }

    /// The host escapes hostile certificate names (`\XX` for control and
    /// non-ASCII bytes, `\...` for a name cut at its bound): none of them may
    /// validate, even after the trailing dots of a cut are trimmed.
    #[test]
    fn escaped_and_cut_names_never_validate() {
        for name in [
            "mail.contoso.com\\00.evil.example",
            "mail.contoso.com\\0D\\0AX-Attributed-Tenant: contoso",
            "m\\C3\\BCller.contoso.com",
            "mail.contoso.com\\...",
            "a.contoso.com.\\...",
        ] {
            assert!(validate(name, true).is_err(), "{name}");
        }
    }
}
