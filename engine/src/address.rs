//! RFC 5321 mailboxes and paths: parsed, validated, canonicalised and
//! written back in one place.
//!
//! Why by hand: the relay judges an address and then writes it to the spool,
//! the next hop and DSNs. If the parser and the writer disagree about where a
//! mailbox ends — a quoted local part holding `@`, `>` or a space — the policy
//! judges one address and the next hop receives another (with ESMTP
//! parameters the client chose). smtp-proto unquotes local parts lossily and
//! mail-send writes addresses as given, so neither may decide what an address
//! is. Here an address has exactly one text form, [`Mailbox`]'s `Display`:
//!
//! - the local part as a dot-string when it is one, otherwise as a quoted
//!   string with `"` and `\` escaped (RFC 5321 4.1.2, quoted-pairSMTP);
//! - the domain in lower case, without a trailing dot, internationalised
//!   names as A-labels; address literals in their canonical form;
//! - a source route (`@a,@b:`) dropped (RFC 5321 C).
//!
//! Parsing the written form gives the same mailbox back (tested, and fuzzed
//! in `fuzz/fuzz_targets/address.rs`); whatever cannot be written back that
//! way — NUL, CR, LF, other controls, 8-bit bytes without SMTPUTF8, over-long
//! parts — is refused.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// RFC 5321 4.5.3.1.1: the longest local part.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 4.5.3.1.2: the longest domain.
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 4.5.3.1.3: the longest path, angle brackets included.
pub const MAX_PATH: usize = 256;

/// Why an address or a MAIL/RCPT argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("the path must be enclosed in angle brackets")]
    NoBrackets,
    #[error("the local part is not a dot-string or a quoted string")]
    BadLocalPart,
    #[error("the local part is longer than {MAX_LOCAL_PART} octets")]
    LocalPartTooLong,
    #[error("the domain is missing")]
    NoDomain,
    #[error("the domain is not a valid domain name")]
    BadDomain,
    #[error("the domain is longer than {MAX_DOMAIN} octets")]
    DomainTooLong,
    #[error("the address literal is not a valid IPv4 or IPv6 address")]
    BadLiteral,
    #[error("the path is longer than {MAX_PATH} octets")]
    PathTooLong,
    #[error("the source route is malformed")]
    BadRoute,
    #[error("control characters are not allowed in addresses")]
    Control,
    #[error("8-bit characters in addresses need SMTPUTF8")]
    EightBit,
    #[error("unexpected text after the address")]
    Trailing,
}

impl AddressError {
    /// Whether the address is well formed but cannot be accepted (RFC 5321
    /// `553`: mailbox name not allowed) rather than a syntax error (`501`).
    pub fn is_unacceptable(&self) -> bool {
        matches!(
            self,
            AddressError::LocalPartTooLong
                | AddressError::DomainTooLong
                | AddressError::PathTooLong
                | AddressError::EightBit
        )
    }
}

/// The domain of a mailbox: a name or an address literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Domain {
    /// Lower case, LDH labels, A-labels for internationalised names, no
    /// trailing dot.
    Name(String),
    /// `[192.0.2.1]` or `[IPv6:2001:db8::1]`, canonical.
    Literal(String),
}

impl Domain {
    pub fn as_str(&self) -> &str {
        match self {
            Domain::Name(s) | Domain::Literal(s) => s,
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mailbox (`local-part@domain`) in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mailbox {
    /// The local part as written: a dot-string, or a quoted string with
    /// its quotes and escapes.
    local: String,
    domain: Domain,
}

impl Mailbox {
    /// Parses a bare mailbox (no angle brackets), as configuration files
    /// write them. `utf8` allows non-ASCII (SMTPUTF8, RFC 6531).
    pub fn parse(text: &str, utf8: bool) -> Result<Mailbox, AddressError> {
        let mut p = Parser::new(text.as_bytes(), utf8);
        let m = p.mailbox()?;
        p.end()?;
        Ok(m)
    }

    /// The local part as written (quoted when it is not a dot-string).
    pub fn local_part(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }
}

/// Whether the local part holds `@`, `%` or `!`: sender routing
/// (`user%host@relay`, `host!user@relay`, `"user@host"@relay`), which
/// sendmail and, by default, Postfix (`allow_percent_hack`,
/// `swap_bangpath`, `resolve_dequoted_address`) take for a route to
/// another host. Judged as a mailbox of this domain, it could still be
/// relayed onward by the server that receives it.
///
/// `address` is the canonical form the SMTP server passes on, or the
/// internal (unquoted) form Postfix sends the policy service: either way the
/// local part is what precedes the last `@`.
pub fn has_routing(address: &str) -> bool {
    address
        .rsplit_once('@')
        .is_some_and(|(local, _)| local.contains(['@', '%', '!']))
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// Checks that `text` is a mailbox in canonical form, as written to the
/// spool by the SMTP session: the last gate before an address goes on the
/// wire to a next hop (the relay's command writer, like mail-send, writes
/// whatever it is given). An envelope
/// from an older version, a damaged spool or a bug can then never put a
/// second path or an ESMTP parameter on a next hop's command line.
pub fn canonical(text: &str) -> Result<&str, AddressError> {
    let m = Mailbox::parse(text, false)?;
    if m.to_string() == text {
        Ok(text)
    } else {
        Err(AddressError::BadLocalPart)
    }
}

/// A MAIL FROM path: the null sender or a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    Null,
    Mailbox(Mailbox),
}

impl ReversePath {
    /// The text a policy judges and the relay writes: empty for `<>`.
    pub fn text(&self) -> String {
        match self {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(m) => m.to_string(),
        }
    }
}

/// A RCPT TO path: a mailbox, or the bare `<postmaster>` every SMTP server
/// must accept (RFC 5321 4.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    Postmaster,
    Mailbox(Mailbox),
}

/// The BODY parameter of MAIL FROM (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Body {
    #[default]
    SevenBit,
    EightBitMime,
}

/// Why a MAIL or RCPT command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgumentError {
    #[error("{0}")]
    Address(#[from] AddressError),
    #[error("syntax: {0}")]
    Syntax(&'static str),
    #[error("parameter {0} is not supported")]
    Unsupported(String),
    #[error("parameter {0} has an invalid value")]
    InvalidParameter(String),
    #[error("parameter {0} is given twice")]
    Duplicate(String),
}

/// The arguments of `MAIL FROM:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailArgs {
    pub path: ReversePath,
    /// The declared size (RFC 1870), if given.
    pub size: Option<u64>,
    pub body: Body,
}

/// The arguments of `RCPT TO:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptArgs {
    pub path: ForwardPath,
}

/// Parses what follows `MAIL FROM:` (line terminator removed). Only the
/// parameters this relay advertises are accepted: `SIZE` and `BODY`; every
/// other one is refused, so none can reach the next hop.
pub fn parse_mail(args: &[u8]) -> Result<MailArgs, ArgumentError> {
    let mut p = Parser::new(args, false);
    p.skip_spaces();
    let path = if p.rest().starts_with(b"<>") {
        p.pos += 2;
        ReversePath::Null
    } else {
        ReversePath::Mailbox(p.path()?)
    };
    let mut out = MailArgs {
        path,
        size: None,
        body: Body::default(),
    };
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in parameters(p.rest())? {
        if seen.contains(&key) {
            return Err(ArgumentError::Duplicate(key));
        }
        seen.push(key.clone());
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => {
                let size =
                    (!v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| v.parse::<u64>().ok())
                        .flatten()
                        .ok_or_else(|| ArgumentError::InvalidParameter(key.clone()))?;
                out.size = Some(size);
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => out.body = Body::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                out.body = Body::EightBitMime
            }
            ("SIZE" | "BODY", _) => return Err(ArgumentError::InvalidParameter(key)),
            _ => return Err(ArgumentError::Unsupported(key)),
        }
    }
    Ok(out)
}

/// Parses what follows `RCPT TO:`. This relay advertises no RCPT
/// parameters (no DSN), so any parameter is refused.
pub fn parse_rcpt(args: &[u8]) -> Result<RcptArgs, ArgumentError> {
    let mut p = Parser::new(args, false);
    p.skip_spaces();
    let rest = p.rest();
    let postmaster = b"<postmaster>";
    let path = if rest.len() >= postmaster.len()
        && rest[..postmaster.len()].eq_ignore_ascii_case(postmaster)
    {
        p.pos += postmaster.len();
        ForwardPath::Postmaster
    } else {
        ForwardPath::Mailbox(p.path()?)
    };
    if let Some((key, _)) = parameters(p.rest())?.into_iter().next() {
        return Err(ArgumentError::Unsupported(key));
    }
    Ok(RcptArgs { path })
}

/// ESMTP parameters (RFC 5321 4.1.2 `Mail-parameters`): ` keyword[=value]`
/// separated by spaces. Keywords are returned in upper case.
fn parameters(text: &[u8]) -> Result<Vec<(String, Option<String>)>, ArgumentError> {
    let mut out = Vec::new();
    if text.is_empty() {
        return Ok(out);
    }
    if text[0] != b' ' {
        return Err(ArgumentError::Syntax("a space must follow the path"));
    }
    for word in text.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
        let (key, value) = match word.iter().position(|&b| b == b'=') {
            Some(i) => (&word[..i], Some(&word[i + 1..])),
            None => (word, None),
        };
        let key_ok = key.first().is_some_and(u8::is_ascii_alphanumeric)
            && key.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-')
            && key.len() <= 64;
        if !key_ok {
            return Err(ArgumentError::Syntax("malformed ESMTP parameter"));
        }
        let key = String::from_utf8_lossy(key).to_ascii_uppercase();
        let value = match value {
            None => None,
            Some(v) if !v.is_empty() && v.iter().all(|&b| (33..=126).contains(&b) && b != b'=') => {
                Some(String::from_utf8_lossy(v).into_owned())
            }
            Some(_) => return Err(ArgumentError::InvalidParameter(key)),
        };
        out.push((key, value));
    }
    Ok(out)
}

/// RFC 5322 `atext`, which RFC 5321's `Atom` uses.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// Whether `s` is a Dot-string: atoms separated by single dots. Non-ASCII
/// UTF-8 counts as atext (RFC 6531) — only reachable when `utf8` parsing
/// let it in.
fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(|b| is_atext(b) || b >= 0x80))
}

/// The canonical text of a local part whose value is `value`: as is when it
/// is a dot-string, otherwise quoted with `"` and `\` escaped.
fn write_local_part(value: &str) -> String {
    if is_dot_string(value) {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    utf8: bool,
}

impl<'a> Parser<'a> {
    fn new(input: &'a [u8], utf8: bool) -> Parser<'a> {
        Parser {
            input,
            pos: 0,
            utf8,
        }
    }

    fn rest(&self) -> &'a [u8] {
        &self.input[self.pos..]
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn end(&self) -> Result<(), AddressError> {
        if self.pos == self.input.len() {
            Ok(())
        } else {
            Err(AddressError::Trailing)
        }
    }

    /// Refuses bytes that can never be part of an address before any
    /// grammar is applied, so the error says what is wrong.
    fn check_bytes(&self, bytes: &[u8]) -> Result<(), AddressError> {
        if bytes.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(AddressError::Control);
        }
        if bytes.iter().any(|&b| b >= 0x80) {
            if !self.utf8 {
                return Err(AddressError::EightBit);
            }
            if std::str::from_utf8(bytes).is_err() {
                return Err(AddressError::EightBit);
            }
        }
        Ok(())
    }

    /// `"<" [ A-d-l ":" ] Mailbox ">"`; the source route is dropped.
    fn path(&mut self) -> Result<Mailbox, AddressError> {
        if self.peek() != Some(b'<') {
            return Err(AddressError::NoBrackets);
        }
        self.pos += 1;
        if self.peek() == Some(b'@') {
            self.source_route()?;
        }
        let m = self.mailbox()?;
        if self.peek() != Some(b'>') {
            return Err(if self.peek().is_none() {
                AddressError::NoBrackets
            } else {
                AddressError::Trailing
            });
        }
        self.pos += 1;
        Ok(m)
    }

    /// `At-domain *( "," At-domain ) ":"`, skipped after validation.
    fn source_route(&mut self) -> Result<(), AddressError> {
        loop {
            if self.peek() != Some(b'@') {
                return Err(AddressError::BadRoute);
            }
            self.pos += 1;
            self.domain().map_err(|_| AddressError::BadRoute)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b':') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(AddressError::BadRoute),
            }
        }
    }

    /// `Local-part "@" ( Domain / address-literal )`.
    fn mailbox(&mut self) -> Result<Mailbox, AddressError> {
        let value = if self.peek() == Some(b'"') {
            self.quoted_string()?
        } else {
            self.dot_string()?
        };
        let local = write_local_part(&value);
        if local.len() > MAX_LOCAL_PART {
            return Err(AddressError::LocalPartTooLong);
        }
        if self.peek() != Some(b'@') {
            return Err(AddressError::NoDomain);
        }
        self.pos += 1;
        let domain = if self.peek() == Some(b'[') {
            self.address_literal()?
        } else {
            self.domain()?
        };
        // Every mailbox must fit in a path as it will be written: the
        // brackets and the canonical form.
        if local.len() + 1 + domain.as_str().len() + 2 > MAX_PATH {
            return Err(AddressError::PathTooLong);
        }
        Ok(Mailbox { local, domain })
    }

    fn dot_string(&mut self) -> Result<String, AddressError> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if is_atext(b) || b == b'.' || (b >= 0x80 && self.utf8) {
                self.pos += 1;
            } else {
                break;
            }
        }
        let raw = &self.input[start..self.pos];
        if let Some(&b) = self.input.get(self.pos)
            && (b < 0x20 || b == 0x7f || b >= 0x80)
        {
            self.check_bytes(&[b])?;
        }
        self.check_bytes(raw)?;
        let text = std::str::from_utf8(raw).map_err(|_| AddressError::EightBit)?;
        if !is_dot_string(text) {
            return Err(AddressError::BadLocalPart);
        }
        Ok(text.to_string())
    }

    /// The value of a quoted string (quotes removed, escapes resolved).
    fn quoted_string(&mut self) -> Result<String, AddressError> {
        self.pos += 1; // the opening quote
        let mut value: Vec<u8> = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(AddressError::BadLocalPart);
            };
            self.pos += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err(AddressError::BadLocalPart);
                    };
                    self.check_bytes(&[e])?;
                    if !(32..=126).contains(&e) {
                        return Err(AddressError::BadLocalPart);
                    }
                    self.pos += 1;
                    value.push(e);
                }
                _ => {
                    self.check_bytes(&[b]).or_else(|e| {
                        // A UTF-8 sequence is checked whole below.
                        if b >= 0x80 && self.utf8 {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })?;
                    value.push(b);
                }
            }
            if value.len() > MAX_LOCAL_PART * 4 {
                return Err(AddressError::LocalPartTooLong);
            }
        }
        self.check_bytes(&value)?;
        String::from_utf8(value).map_err(|_| AddressError::EightBit)
    }

    /// `sub-domain *("." sub-domain)` with an optional trailing dot, turned
    /// into lower-case A-labels.
    fn domain(&mut self) -> Result<Domain, AddressError> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || (b >= 0x80 && self.utf8) {
                self.pos += 1;
            } else {
                break;
            }
        }
        if let Some(&b) = self.input.get(self.pos)
            && (b < 0x20 || b == 0x7f || b >= 0x80)
        {
            self.check_bytes(&[b])?;
        }
        let raw = &self.input[start..self.pos];
        self.check_bytes(raw)?;
        let text = std::str::from_utf8(raw).map_err(|_| AddressError::EightBit)?;
        let text = text.strip_suffix('.').unwrap_or(text);
        if text.is_empty() {
            return Err(AddressError::NoDomain);
        }
        let ascii = if text.is_ascii() {
            text.to_ascii_lowercase()
        } else {
            idna::domain_to_ascii_strict(text).map_err(|_| AddressError::BadDomain)?
        };
        if ascii.len() > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong);
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !ascii.split('.').all(label_ok) {
            return Err(AddressError::BadDomain);
        }
        Ok(Domain::Name(ascii))
    }

    /// `"[" ( IPv4-address-literal / "IPv6:" IPv6-addr ) "]"`, canonical.
    /// General address literals (RFC 5321 4.1.3 `Standardized-tag`) name no
    /// registered tag but IPv6 and are refused.
    fn address_literal(&mut self) -> Result<Domain, AddressError> {
        self.pos += 1; // '['
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b == b']' {
                break;
            }
            self.pos += 1;
        }
        if self.peek() != Some(b']') {
            return Err(AddressError::BadLiteral);
        }
        let inner = &self.input[start..self.pos];
        self.pos += 1;
        self.check_bytes(inner)?;
        let inner = std::str::from_utf8(inner).map_err(|_| AddressError::BadLiteral)?;
        let canonical = if let Some(v6) = inner
            .get(..5)
            .filter(|p| p.eq_ignore_ascii_case("IPv6:"))
            .map(|_| &inner[5..])
        {
            let ip: Ipv6Addr = v6.parse().map_err(|_| AddressError::BadLiteral)?;
            format!("[IPv6:{ip}]")
        } else {
            // Only the dotted-quad form RFC 5321 defines (no octal, no
            // shortened forms): what `Ipv4Addr` parses.
            let ip: Ipv4Addr = inner.parse().map_err(|_| AddressError::BadLiteral)?;
            format!("[{ip}]")
        };
        Ok(Domain::Literal(canonical))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(s: &str) -> Result<String, ArgumentError> {
        parse_rcpt(s.as_bytes()).map(|r| match r.path {
            ForwardPath::Postmaster => "<postmaster>".into(),
            ForwardPath::Mailbox(m) => m.to_string(),
        })
    }

    #[test]
    fn canonical_forms() {
        for (input, canonical) in [
            ("<john@Contoso.COM>", "john@contoso.com"),
            ("<John.Smith@contoso.com.>", "John.Smith@contoso.com"),
            ("<\"john\"@contoso.com>", "john@contoso.com"),
            ("<\"j\\ohn\"@contoso.com>", "john@contoso.com"),
            ("<\"john smith\"@contoso.com>", "\"john smith\"@contoso.com"),
            ("<\"a\\\"b\"@contoso.com>", "\"a\\\"b\"@contoso.com"),
            ("<\"a\\\\b\"@contoso.com>", "\"a\\\\b\"@contoso.com"),
            ("<\"a..b\"@contoso.com>", "\"a..b\"@contoso.com"),
            ("<\"\"@contoso.com>", "\"\"@contoso.com"),
            (
                "<@relay.example,@b.example:joe@contoso.com>",
                "joe@contoso.com",
            ),
            ("<joe@[192.0.2.1]>", "joe@[192.0.2.1]"),
            ("<joe@[ipv6:2001:DB8:0::1]>", "joe@[IPv6:2001:db8::1]"),
            ("  <joe@contoso.com>", "joe@contoso.com"),
        ] {
            assert_eq!(rcpt(input).as_deref(), Ok(canonical), "{input}");
        }
    }

    #[test]
    fn the_quoted_local_part_attack_keeps_its_domain() {
        let m = rcpt("<\"victim@elsewhere.example> ORCPT=rfc822;x\"@contoso.com>").unwrap();
        assert_eq!(
            m,
            "\"victim@elsewhere.example> ORCPT=rfc822;x\"@contoso.com"
        );
        // The domain after the last '@' of the written form is the real one.
        assert_eq!(m.rsplit_once('@').unwrap().1, "contoso.com");
        // And it parses back to itself.
        assert_eq!(rcpt(&format!("<{m}>")).unwrap(), m);
    }

    #[test]
    fn refusals() {
        for (input, expected) in [
            ("john@contoso.com", AddressError::NoBrackets),
            ("<john@contoso.com", AddressError::NoBrackets),
            ("<john>", AddressError::NoDomain),
            ("<john@>", AddressError::NoDomain),
            ("<.john@contoso.com>", AddressError::BadLocalPart),
            ("<jo..hn@contoso.com>", AddressError::BadLocalPart),
            ("<jo hn@contoso.com>", AddressError::NoDomain),
            ("<\"jo\0hn\"@contoso.com>", AddressError::Control),
            ("<\"jo\rhn\"@contoso.com>", AddressError::Control),
            ("<jo\nhn@contoso.com>", AddressError::Control),
            ("<jöhn@contoso.com>", AddressError::EightBit),
            ("<john@cöntoso.com>", AddressError::EightBit),
            ("<john@-contoso.com>", AddressError::BadDomain),
            ("<john@contoso..com>", AddressError::BadDomain),
            ("<john@contoso_x.com>", AddressError::Trailing),
            ("<john@[300.1.1.1]>", AddressError::BadLiteral),
            ("<john@[IPv6:zz]>", AddressError::BadLiteral),
            ("<@a.example joe@contoso.com>", AddressError::BadRoute),
        ] {
            assert_eq!(
                rcpt(input),
                Err(ArgumentError::Address(expected.clone())),
                "{input:?}"
            );
        }
        assert_eq!(
            rcpt("<john@contoso.com>x"),
            Err(ArgumentError::Syntax("a space must follow the path"))
        );
        let long = format!("<{}@contoso.com>", "a".repeat(65));
        assert_eq!(
            rcpt(&long),
            Err(ArgumentError::Address(AddressError::LocalPartTooLong))
        );
        let long = format!("<a@{}.com>", "b.".repeat(130));
        assert_eq!(
            rcpt(&long),
            Err(ArgumentError::Address(AddressError::DomainTooLong))
        );
    }

    #[test]
    fn postmaster_without_domain_only_as_recipient() {
        assert_eq!(rcpt("<Postmaster>").unwrap(), "<postmaster>");
        assert_eq!(
            parse_mail(b"<postmaster>"),
            Err(ArgumentError::Address(AddressError::NoDomain))
        );
        assert_eq!(parse_mail(b"<>").unwrap().path, ReversePath::Null);
    }

    #[test]
    fn only_advertised_parameters_pass() {
        let m = parse_mail(b"<a@contoso.com> SIZE=1000 BODY=8bitmime").unwrap();
        assert_eq!(m.size, Some(1000));
        assert_eq!(m.body, Body::EightBitMime);
        for (input, err) in [
            (
                &b"<a@contoso.com> RET=HDRS"[..],
                ArgumentError::Unsupported("RET".into()),
            ),
            (
                b"<a@contoso.com> AUTH=<ceo@contoso.com>",
                ArgumentError::Unsupported("AUTH".into()),
            ),
            (
                b"<a@contoso.com> SIZE=x",
                ArgumentError::InvalidParameter("SIZE".into()),
            ),
            (
                b"<a@contoso.com> SIZE=1 SIZE=2",
                ArgumentError::Duplicate("SIZE".into()),
            ),
            (
                b"<a@contoso.com>SIZE=1",
                ArgumentError::Syntax("a space must follow the path"),
            ),
            (
                b"<a@contoso.com> SMTPUTF8",
                ArgumentError::Unsupported("SMTPUTF8".into()),
            ),
        ] {
            assert_eq!(
                parse_mail(input),
                Err(err),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(
            parse_rcpt(b"<a@contoso.com> NOTIFY=NEVER"),
            Err(ArgumentError::Unsupported("NOTIFY".into()))
        );
    }

    #[test]
    fn utf8_mode_writes_a_labels() {
        let m = Mailbox::parse("jöhn@Bücher.example", true).unwrap();
        assert_eq!(m.to_string(), "jöhn@xn--bcher-kva.example");
        assert_eq!(
            Mailbox::parse("jöhn@bücher.example", false),
            Err(AddressError::EightBit)
        );
    }

    #[test]
    fn written_forms_parse_back_to_themselves() {
        for input in [
            "<\"a b\"@x.example>",
            "<\"\\\\\"@x.example>",
            "<\"a@b>c d=e\"@x.example>",
            "<!#$%&'*+-/=?^_`{|}~@x.example>",
        ] {
            let once = rcpt(input).unwrap();
            let twice = rcpt(&format!("<{once}>")).unwrap();
            assert_eq!(once, twice);
            assert_eq!(Mailbox::parse(&once, false).unwrap().to_string(), once);
        }
    }
}
