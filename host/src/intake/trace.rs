//! The header fields the relay adds to the messages it accepts (`Received`,
//! `X-Attributed-Tenant`, a policy's fields), and the removal of the client's
//! copies of the fields only the relay may write.
//!
//! Every fact that goes into these fields comes from someone else: HELO and
//! the recipient from the client, the certificate subject from whoever made
//! the certificate (a self-signed one can hold CR LF and a whole header
//! line), field values from a policy. None of them may become header syntax,
//! so this module is the one place that writes trace fields, and every fact
//! passes one sanitiser on its way in (`sanitize`): printable ASCII only,
//! the characters that delimit comments, quoted strings, addresses and the
//! date escaped, and a bound on its length. Lines are folded (CRLF TAB) only
//! where [`compose`] folds them, and no line exceeds RFC 5322's 998 bytes.
//!
//! A statement of trust is only worth something if nobody else can make it:
//! [`strip_trusted`] removes the client's `X-Attributed-Tenant` and
//! `X-Attrelay-*` fields in every spelling a reader downstream might accept,
//! and [`compose`] writes the relay's fields from the relay's own facts and
//! never a policy's copy of them.

use std::fmt::Write as _;
use std::net::IpAddr;

use attrelay_policy::model::{HeaderField, TlsFacts};
use attrelay_policy::replies::is_relay_field;

/// The field stating the tenant the relay attributed a message to.
pub const ATTRIBUTION_HEADER: &str = attrelay_policy::replies::ATTRIBUTION_HEADER;
/// The grace period's warning field, written for an `attr36` accept
/// (see [`attrelay_policy::replies::grace_warning`]).
pub const WARNING_HEADER: &str = attrelay_policy::replies::WARNING_HEADER;

/// RFC 5322 2.1.1: a line is at most 998 bytes, CRLF excluded.
pub const MAX_LINE: usize = 998;
/// HELO, the relay's host name, a tenant id.
const MAX_NAME: usize = 255;
/// Short words: protocol, cipher, `with`, queue id, date.
const MAX_WORD: usize = 64;
/// The recipient of the `for` clause (RFC 5321 allows a 256-byte path).
const MAX_ADDRESS: usize = 512;
/// The quoted certificate subject, escapes included.
const MAX_SUBJECT: usize = 900;
/// A policy field's value (the verdict check allows 900 bytes too).
const MAX_VALUE: usize = 900;
/// A policy field's name.
const MAX_FIELD_NAME: usize = 64;
/// Ends a fact cut at its bound.
const CUT: &str = "...";

/// What the trace fields of one message say.
#[derive(Debug, Clone, Copy)]
pub struct TraceFacts<'a> {
    /// The name the client gave in HELO/EHLO.
    pub helo: &'a str,
    pub client_ip: IpAddr,
    /// The relay's own host name.
    pub hostname: &'a str,
    /// `SMTP`, `ESMTP` or `ESMTPS`.
    pub with: &'a str,
    pub queue_id: &'a str,
    /// The recipient, when the message has exactly one.
    pub for_recipient: Option<&'a str>,
    /// The TLS state, when the session used STARTTLS.
    pub tls: Option<&'a TlsFacts>,
    /// The RFC 5322 date of receipt.
    pub date: &'a str,
    /// The attributed tenant, written as `X-Attributed-Tenant`.
    pub tenant: Option<&'a str>,
    /// The grace-period warnings of the message's recipients, written as
    /// `X-Attrelay-Warning`; duplicates are written once.
    pub warnings: &'a [String],
    /// Fields the policies asked for; duplicates are written once.
    pub policy_headers: &'a [HeaderField],
}

/// The header fields to put before a message: `Received`, then
/// `X-Attributed-Tenant` when a tenant is given, `X-Attrelay-Warning` for
/// each distinct warning, then the policy's fields (each once; a
/// well-formed `X-` name only; never one of the relay's own fields, which
/// the verdict check refuses already). Each line ends in CRLF, continuation lines
/// start with a TAB, every byte is printable ASCII, and no line is longer
/// than [`MAX_LINE`].
pub fn compose(f: &TraceFacts<'_>) -> String {
    let mut out = received(f);
    if let Some(tenant) = f.tenant {
        push_field(
            &mut out,
            ATTRIBUTION_HEADER,
            &sanitize(tenant, MAX_NAME, Context::Token),
        );
    }
    let mut warnings: Vec<&String> = Vec::new();
    for w in f.warnings {
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
    for w in warnings {
        push_field(
            &mut out,
            WARNING_HEADER,
            &sanitize(w, MAX_VALUE, Context::Text),
        );
    }
    for h in policy_fields(f.policy_headers) {
        push_field(
            &mut out,
            &h.name,
            &sanitize(&h.value, MAX_VALUE, Context::Text),
        );
    }
    out
}

/// `Received: from HELO ([IP]) by HOST (attrelay) with WITH (TLS) id ID
/// for <RCPT>; DATE`, folded as attrelay always wrote it.
fn received(f: &TraceFacts<'_>) -> String {
    let mut lines = vec![
        format!(
            "Received: from {} ([{}])",
            sanitize(f.helo, MAX_NAME, Context::Token),
            f.client_ip
        ),
        format!(
            "\tby {} (attrelay) with {}",
            sanitize(f.hostname, MAX_NAME, Context::Token),
            sanitize(f.with, MAX_WORD, Context::Token)
        ),
    ];
    if let Some(tls) = f.tls {
        lines.extend(tls_lines(tls));
    }
    lines.push(format!(
        "\tid {}",
        sanitize(f.queue_id, MAX_WORD, Context::Token)
    ));
    if let Some(rcpt) = f.for_recipient {
        lines.push(format!(
            "\tfor <{}>",
            sanitize(rcpt, MAX_ADDRESS, Context::Token)
        ));
    }
    if let Some(last) = lines.last_mut() {
        last.push(';');
    }
    lines.push(format!("\t{}", sanitize(f.date, MAX_WORD, Context::Text)));
    let mut out = lines.join("\r\n");
    out.push_str("\r\n");
    out
}

/// The TLS comment: `(version=V cipher=C no client certificate)`, or with a
/// second line `client certificate "SUBJECT" verified)`.
fn tls_lines(tls: &TlsFacts) -> Vec<String> {
    let head = format!(
        "\t(version={} cipher={}",
        sanitize(&tls.protocol, MAX_WORD, Context::Token),
        sanitize(&tls.cipher, MAX_WORD, Context::Token)
    );
    match &tls.client_certificate {
        None => vec![format!("{head} no client certificate)")],
        Some(c) => vec![
            head,
            format!(
                "\tclient certificate \"{}\" {})",
                sanitize(&c.subject, MAX_SUBJECT, Context::Quoted),
                if c.verified {
                    "verified"
                } else {
                    "not verified"
                }
            ),
        ],
    }
}

fn push_field(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str(": ");
    out.push_str(value);
    out.push_str("\r\n");
}

/// The policy fields compose writes: a well-formed `X-` name (a bad one is
/// dropped: a name cannot be repaired), never one of the relay's own
/// fields, each field once, in first-seen order.
fn policy_fields(headers: &[HeaderField]) -> Vec<&HeaderField> {
    let mut out: Vec<&HeaderField> = Vec::new();
    for h in headers {
        let allowed = policy_field_name_ok(&h.name) && !is_relay_field(&h.name);
        if allowed && !out.contains(&h) {
            out.push(h);
        }
    }
    out
}

/// `X-` and letters, digits and hyphens, as the verdict check requires.
fn policy_field_name_ok(name: &str) -> bool {
    name.len() > 2
        && name.len() <= MAX_FIELD_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("x-"))
}

/// Where a fact is written, which decides what must be escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// A word of a structured field (HELO, host, id, address, tenant): no
    /// space, and none of `"()<>;\` which would open a quoted string, a
    /// comment or an address, or start the date.
    Token,
    /// Unstructured text (a policy field's value, the date): space allowed.
    Text,
    /// Inside the quoted subject, itself inside the TLS comment: `\` is
    /// written as the quoted-pair `\\`; `"`, `(`, `)` are not written at all
    /// but hex-escaped, so that even a reader that ignores quoted-pairs (many
    /// do, in comments) finds no quote or parenthesis inside.
    Quoted,
}

/// Whether byte `b` is written as it is in `context`.
fn plain(b: u8, context: Context) -> bool {
    let printable = b == b' ' || b.is_ascii_graphic();
    match context {
        Context::Token => b.is_ascii_graphic() && !b"\"()<>;\\".contains(&b),
        Context::Text => printable,
        Context::Quoted => printable && !b"\"()\\".contains(&b),
    }
}

/// Appends byte `b` of a fact. Anything that is not written as it is becomes
/// `\XX` (upper-case hex), the escape RFC 4514 uses, so that a quoted subject
/// read back (quoted-pairs undone) is the RFC 4514 subject again.
fn push_byte(out: &mut String, b: u8, context: Context) {
    if plain(b, context) {
        out.push(char::from(b));
    } else if context == Context::Quoted {
        out.push_str("\\\\");
        if b != b'\\' {
            // Writing to a String cannot fail.
            let _ = write!(out, "{b:02X}");
        }
    } else {
        let _ = write!(out, "\\{b:02X}");
    }
}

/// A fact as it may appear in `context`: escaped byte by byte, and cut to at
/// most `max` bytes, ending in [`CUT`] when it was longer. The cut falls
/// between escapes, never inside one, so a cut cannot leave a lone backslash
/// that would quote the closing `"`.
fn sanitize(raw: &str, max: usize, context: Context) -> String {
    let mut out = String::with_capacity(raw.len().min(max));
    // The longest prefix, on an escape boundary, that leaves room for CUT.
    let mut fits = 0;
    for b in raw.bytes() {
        push_byte(&mut out, b, context);
        if out.len() > max {
            out.truncate(fits);
            out.push_str(CUT);
            break;
        }
        if out.len() + CUT.len() <= max {
            fits = out.len();
        }
    }
    out
}

/// Removes from the header section of `message` every field only the relay
/// writes (`X-Attributed-Tenant`, any `X-Attrelay-*`:
/// [`is_relay_field`]), continuation lines included; the body, from
/// the first empty line on, is copied untouched.
///
/// A name matches in any case, with whitespace before the colon (RFC 5322's
/// obsolete syntax). Continuation lines before the first field are removed too:
/// they belong to no field, and once the relay's own fields are put in front
/// they would continue the last of them. Lines may end in CRLF, a bare LF or
/// a bare CR.
///
/// The header section ends at the first line that does not start a
/// well-formed field (see `is_well_formed`): a line without a colon, an
/// empty name (`:X-Attributed-Tenant: x`), a name with bytes RFC 5322 does
/// not allow in one (`junk` then ` X-Attributed-Tenant: x`, which this
/// reader would take for one field named `junk X-Attributed-Tenant`).
/// Readers downstream recover from such lines in their own ways —
/// mail-parser skips a leading colon, and starts a new field on a
/// continuation line after a line without a colon — so any of them could
/// find a trust field there that this function did not. An empty line is
/// inserted before that line, as Postfix's cleanup does, so that every
/// reader takes it and all that follows for the body.
pub fn strip_trusted(message: &[u8]) -> Vec<u8> {
    let header = split_header(message);
    let mut out = Vec::with_capacity(message.len() + 2);
    for field in header.fields {
        if !is_trusted(field) {
            out.extend_from_slice(field);
        }
    }
    if header.unterminated {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(header.rest);
    out
}

/// Whether a field has a name every reader agrees on: on its first line,
/// before its colon, one or more RFC 5322 `ftext` bytes (printable ASCII but
/// the colon), optionally followed by spaces and tabs (the obsolete `WSP`
/// before the colon). A name folded onto the next line is not: mail-parser,
/// for one, starts a new field after the fold. Nor is a field holding a bare
/// CR, where readers disagree about where its lines end.
fn is_well_formed(field: &[u8]) -> bool {
    if has_bare_cr(field) {
        return false;
    }
    let Some(name) = field_name(field) else {
        return false;
    };
    let end = name
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(0, |i| i + 1);
    end > 0 && name[..end].iter().all(|b| (33..=126).contains(b))
}

/// Whether a field is one of the relay's own, however spelled (the bytes
/// [`name_is`] ignores left out).
fn is_trusted(field: &[u8]) -> bool {
    field_name(field).is_some_and(|n| {
        let name: String = n
            .iter()
            .filter(|b| b.is_ascii_graphic())
            .map(|&b| char::from(b))
            .collect();
        is_relay_field(&name)
    })
}

/// The number of `Received` fields in the header section of `message`,
/// spelled in any of the ways [`strip_trusted`] recognises: the hop count of
/// RFC 5321 6.3 loop detection.
pub fn count_received(message: &[u8]) -> usize {
    split_header(message)
        .fields
        .into_iter()
        .filter(|f| field_name(f).is_some_and(|n| name_is(n, "Received")))
        .count()
}

/// The longest Message-ID a log line carries; a longer one is cut.
const MAX_LOGGED_MESSAGE_ID: usize = 256;

/// The first `Message-ID` of the header section of `message`, unfolded,
/// for the logs: at most [`MAX_LOGGED_MESSAGE_ID`] bytes, anything but
/// printable ASCII replaced with `?` (it is the client's text).
pub fn message_id(message: &[u8]) -> Option<String> {
    let fields = split_header(message).fields;
    let field = fields
        .into_iter()
        .find(|f| field_name(f).is_some_and(|n| name_is(n, "Message-ID")))?;
    let colon = field.iter().position(|&b| b == b':')?;
    let value: String = field[colon + 1..]
        .iter()
        .filter(|&&b| b != b'\r' && b != b'\n')
        .take(MAX_LOGGED_MESSAGE_ID)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    Some(value.trim().to_string()).filter(|v| !v.is_empty())
}

/// Where the header section ends in a message that begins with `prefix`,
/// when `prefix` already decides it: the offset of the empty line, or of
/// the first line that is no well-formed field, once that line is
/// complete. `None` while the section may still go on. Because the lines
/// before that one are complete too, [`strip_trusted`] and
/// [`count_received`] read the same header section in `prefix` as in the
/// whole message: a message can be checked and stripped from its start
/// while the rest of it streams to disk.
pub fn header_end(prefix: &[u8]) -> Option<usize> {
    let complete = prefix
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let header = split_header(&prefix[..complete]);
    (!header.rest.is_empty()).then(|| complete - header.rest.len())
}

/// A message's header section as this module reads it.
struct Header<'a> {
    /// The well-formed fields, each a line with its continuation lines,
    /// line endings included. Continuation lines before the first field
    /// (orphans) are left out.
    fields: Vec<&'a [u8]>,
    /// The rest: from the empty line that ends the header section, or from
    /// the first line that is no well-formed field.
    rest: &'a [u8],
    /// The header section ended at a line that is no field, not at an
    /// empty line.
    unterminated: bool,
}

/// Splits `message` into its header fields and the rest.
fn split_header(message: &[u8]) -> Header<'_> {
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos < message.len() {
        let line = &message[pos..pos + line_len(&message[pos..])];
        // The empty line that ends the header section. A bare CR alone is
        // not one (not every reader agrees it is): it is no field either,
        // so it ends the section with an empty line inserted before it.
        if matches!(line, b"\r\n" | b"\n") {
            break;
        }
        let mut end = pos + line.len();
        while end < message.len() {
            let next = &message[end..end + line_len(&message[end..])];
            if !is_continuation(next) {
                break;
            }
            end += next.len();
        }
        let field = &message[pos..end];
        if is_orphan(field) {
            pos = end;
            continue;
        }
        if !is_well_formed(field) {
            return Header {
                fields,
                rest: &message[pos..],
                unterminated: true,
            };
        }
        fields.push(field);
        pos = end;
    }
    Header {
        fields,
        rest: &message[pos..],
        unterminated: false,
    }
}

/// The length of the first line of `bytes`, with its line ending: CRLF or
/// a bare LF. (A bare CR ends a line for some readers and not for others:
/// a field holding one is not well formed, see [`is_well_formed`].)
fn line_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |i| i + 1)
}

/// Whether `bytes` holds a CR that is not followed by LF.
fn has_bare_cr(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
}

fn is_continuation(line: &[u8]) -> bool {
    matches!(line.first(), Some(b' ' | b'\t'))
}

/// Continuation lines at the start of the header section, before any field.
fn is_orphan(field: &[u8]) -> bool {
    is_continuation(field)
}

/// The name of a field: what comes before its first colon (a folded name
/// includes its line ending, and is not well formed). `None` when there is
/// no colon, which is no field.
fn field_name(field: &[u8]) -> Option<&[u8]> {
    let colon = field.iter().position(|&b| b == b':')?;
    Some(&field[..colon])
}

/// Whether a field name is `wanted` in any case, ignoring every byte that is
/// not printable ASCII other than space: whitespace before the colon, the
/// line ending of a folded name, and NUL, control or non-ASCII bytes a
/// lenient reader might skip.
fn name_is(name: &[u8], wanted: &str) -> bool {
    name.iter()
        .filter(|b| b.is_ascii_graphic())
        .map(u8::to_ascii_lowercase)
        .eq(wanted.bytes().map(|b| b.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use attrelay_policy::model::ClientCertificate;
    use mail_parser::{Host, MessageParser};

    const HOST: &str = "relay.example.test";
    const ID: &str = "0123456789ABCDEF01234";
    const DATE: &str = "Mon, 1 Jun 2026 00:00:00 +0000";

    fn tls_with_subject(subject: &str) -> TlsFacts {
        TlsFacts {
            protocol: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            client_certificate: Some(ClientCertificate {
                subject: subject.into(),
                ..ClientCertificate::default()
            }),
        }
    }

    fn facts<'a>(tls: Option<&'a TlsFacts>, tenant: Option<&'a str>) -> TraceFacts<'a> {
        TraceFacts {
            helo: "client.example.test",
            client_ip: "192.0.2.7".parse().unwrap(),
            hostname: HOST,
            with: if tls.is_some() { "ESMTPS" } else { "ESMTP" },
            queue_id: ID,
            for_recipient: Some("kate@contoso.com"),
            tls,
            date: DATE,
            tenant,
            warnings: &[],
            policy_headers: &[],
        }
    }

    /// The shape every composed header section must have, whatever the facts.
    fn assert_well_formed(head: &str) {
        assert!(head.ends_with("\r\n"), "{head:?}");
        assert!(
            !head.replace("\r\n", "").contains(['\r', '\n']),
            "bare CR or LF: {head:?}"
        );
        for line in head.trim_end_matches("\r\n").split("\r\n") {
            assert!(line.len() <= MAX_LINE, "{} bytes: {line:?}", line.len());
            assert!(
                line.bytes()
                    .all(|b| b == b'\t' || (0x20..0x7f).contains(&b)),
                "{line:?}"
            );
            let field = ["Received: ", "X-Attributed-Tenant: ", "X-"]
                .iter()
                .any(|p| line.starts_with(p));
            assert!(field || line.starts_with('\t'), "{line:?}");
        }
    }

    fn lines_starting_with(head: &str, prefix: &str) -> usize {
        head.split("\r\n")
            .filter(|l| {
                l.to_ascii_lowercase()
                    .starts_with(&prefix.to_ascii_lowercase())
            })
            .count()
    }

    /// Parses `head` plus a body with mail-parser, as a reader downstream
    /// would, and checks what it finds.
    fn assert_parses(head: &str, tenant: Option<&str>) {
        let message = format!("{head}Subject: test\r\n\r\nbody\r\n");
        let parsed = MessageParser::default()
            .parse(message.as_bytes())
            .expect("mail-parser reads it");
        let names: Vec<String> = parsed
            .headers()
            .iter()
            .map(|h| h.name().to_ascii_lowercase())
            .collect();
        let mut expected = vec!["received".to_string()];
        if tenant.is_some() {
            expected.push("x-attributed-tenant".into());
        }
        expected.push("subject".into());
        assert_eq!(names, expected, "{head}");
        let tenants: Vec<String> = parsed
            .headers()
            .iter()
            .filter(|h| h.name().eq_ignore_ascii_case(ATTRIBUTION_HEADER))
            .map(|h| h.value().as_text().unwrap_or_default().trim().to_string())
            .collect();
        assert_eq!(tenants, tenant.into_iter().collect::<Vec<_>>(), "{head}");
        let received = parsed.received().expect("a Received field");
        assert_eq!(received.by, Some(Host::Name(HOST.into())), "{head}");
        assert_eq!(received.id.as_deref(), Some(ID), "{head}");
        assert_eq!(received.for_.as_deref(), Some("kate@contoso.com"), "{head}");
        assert!(received.date.is_some(), "{head}");
    }

    #[test]
    fn the_trace_reads_as_attrelay_always_wrote_it() {
        let tls = tls_with_subject("CN=mail.contoso.com");
        let head = compose(&facts(Some(&tls), Some("contoso")));
        assert_eq!(
            head,
            format!(
                "Received: from client.example.test ([192.0.2.7])\r\n\tby {HOST} (attrelay) with ESMTPS\r\n\t(version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384\r\n\tclient certificate \"CN=mail.contoso.com\" not verified)\r\n\tid {ID}\r\n\tfor <kate@contoso.com>;\r\n\t{DATE}\r\nX-Attributed-Tenant: contoso\r\n"
            )
        );
        assert_well_formed(&head);
        assert_parses(&head, Some("contoso"));

        let head = compose(&TraceFacts {
            for_recipient: None,
            ..facts(None, None)
        });
        assert_eq!(
            head,
            format!(
                "Received: from client.example.test ([192.0.2.7])\r\n\tby {HOST} (attrelay) with ESMTP\r\n\tid {ID};\r\n\t{DATE}\r\n"
            )
        );
    }

    #[test]
    fn hostile_subjects_never_become_header_syntax() {
        let subjects = [
            "CN=a\rX-Attributed-Tenant: evil".to_string(),
            "CN=a\nX-Attributed-Tenant: evil".to_string(),
            "CN=a\r\nX-Attributed-Tenant: evil".to_string(),
            "CN=a\r\n\r\nX-Attributed-Tenant: evil".to_string(),
            "CN=a\0b".to_string(),
            "CN=\"quoted\" \"".to_string(),
            "CN=back\\slash\\".to_string(),
            "CN=a) X-Attributed-Tenant: (evil".to_string(),
            "CN=\tta\tbs".to_string(),
            "CN=M\u{fc}ller \u{202e}".to_string(),
            format!("CN={}", "x".repeat(10_000)),
            format!("CN={}", "\\\r\n\"".repeat(3_000)),
        ];
        for subject in &subjects {
            let tls = tls_with_subject(subject);
            for tenant in [Some("contoso"), None] {
                let head = compose(&facts(Some(&tls), tenant));
                assert_well_formed(&head);
                assert_eq!(
                    lines_starting_with(&head, "X-Attributed-Tenant"),
                    usize::from(tenant.is_some()),
                    "{head}"
                );
                assert_parses(&head, tenant);
            }
        }
        let tls = tls_with_subject("CN=a\r\nX-Attributed-Tenant: evil \"q\" (c) \\");
        let head = compose(&facts(Some(&tls), None));
        assert!(
            head.contains(
                "\tclient certificate \"CN=a\\\\0D\\\\0AX-Attributed-Tenant: evil \\\\22q\\\\22 \\\\28c\\\\29 \\\\\" not verified)\r\n"
            ),
            "{head}"
        );
    }

    #[test]
    fn a_long_subject_is_cut_between_escapes() {
        for filler in ["x", "\\", "\r"] {
            let tls = tls_with_subject(&filler.repeat(5_000));
            let head = compose(&facts(Some(&tls), None));
            let line = head
                .split("\r\n")
                .find(|l| l.starts_with("\tclient certificate"))
                .unwrap();
            assert!(line.contains("...\" not verified)"), "{line}");
            // An even number of backslashes before the cut: none quotes the `"`.
            let quoted = line.split('"').nth(1).unwrap();
            let before_cut = quoted.trim_end_matches("...");
            let trailing = before_cut.len() - before_cut.trim_end_matches('\\').len();
            assert_eq!(trailing % 2, 0, "{line}");
            assert_well_formed(&head);
        }
    }

    #[test]
    fn every_fact_is_sanitised() {
        let tls = TlsFacts {
            protocol: "TLSv1.3\r\nX-Attributed-Tenant: evil".into(),
            cipher: "(x".into(),
            client_certificate: None,
        };
        let hostile = "a\r\nX-Attributed-Tenant: evil (\"<>;\\";
        let policy = [
            HeaderField {
                name: "X-Note".into(),
                value: "a\r\nX-Attributed-Tenant: evil".into(),
            },
            HeaderField {
                name: "X-Bad Name".into(),
                value: "dropped".into(),
            },
            HeaderField {
                name: "Received".into(),
                value: "dropped".into(),
            },
        ];
        let head = compose(&TraceFacts {
            helo: hostile,
            hostname: hostile,
            with: hostile,
            queue_id: hostile,
            for_recipient: Some(hostile),
            date: hostile,
            tenant: Some(hostile),
            policy_headers: &policy,
            ..facts(Some(&tls), None)
        });
        assert_well_formed(&head);
        assert_eq!(
            lines_starting_with(&head, "X-Attributed-Tenant"),
            1,
            "{head}"
        );
        assert_eq!(lines_starting_with(&head, "Received"), 1, "{head}");
        assert!(
            head.contains("\r\nX-Attributed-Tenant: a\\0D\\0AX-Attributed-Tenant:\\20evil\\20\\28\\22\\3C\\3E\\3B\\5C\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\nX-Note: a\\0D\\0AX-Attributed-Tenant: evil\r\n"),
            "{head}"
        );
        assert!(!head.contains("dropped"), "{head}");
    }

    #[test]
    fn relay_fields_come_from_the_relay_and_policy_fields_once() {
        let note = HeaderField {
            name: "X-Contoso-Rule".into(),
            value: "r1".into(),
        };
        let policy = [
            note.clone(),
            HeaderField {
                name: "x-attributed-tenant".into(),
                value: "fabrikam".into(),
            },
            note,
            HeaderField {
                name: "X-ATTRELAY-WARNING".into(),
                value: "forged by a policy".into(),
            },
            HeaderField {
                name: "X-Attrelay-Later".into(),
                value: "forged by a policy".into(),
            },
        ];
        let warnings = [
            "ATTR36 for tenant contoso".to_string(),
            "ATTR36 for tenant contoso".to_string(),
        ];
        let head = compose(&TraceFacts {
            warnings: &warnings,
            policy_headers: &policy,
            ..facts(None, Some("contoso"))
        });
        assert_well_formed(&head);
        assert!(
            head.ends_with("\r\nX-Attributed-Tenant: contoso\r\nX-Attrelay-Warning: ATTR36 for tenant contoso\r\nX-Contoso-Rule: r1\r\n"),
            "{head}"
        );
        assert!(!head.contains("fabrikam"), "{head}");
        assert!(!head.contains("forged"), "{head}");
        let head = compose(&TraceFacts {
            policy_headers: &policy,
            ..facts(None, None)
        });
        assert_eq!(lines_starting_with(&head, ATTRIBUTION_HEADER), 0, "{head}");
    }

    #[test]
    fn forged_trace_headers_are_removed_from_the_header_section_only() {
        let m = b"X-Attributed-Tenant: forged\r\n\tcontinued\r\nSubject: hi\r\nx-attrelay-warning: no\r\n\r\nX-Attributed-Tenant: body text\r\n";
        assert_eq!(
            strip_trusted(m),
            b"Subject: hi\r\n\r\nX-Attributed-Tenant: body text\r\n".to_vec()
        );
    }

    #[test]
    fn trusted_headers_are_removed_in_every_spelling() {
        let m: &[u8] = b"X-Attributed-Tenant : a\r\n\
x-attributed-tenant\t:b\r\n\
X-ATTRIBUTED-TENANT:\r\n c\r\n\tcc\r\n\
X-Attrelay-Warning  : g\r\n\
X-Attributed-Tenant-Extra: kept\r\n\
Subject: kept\r\n X-Attributed-Tenant: kept as part of the subject\r\n\
\r\n\
X-Attributed-Tenant : body\r\n";
        assert_eq!(
            String::from_utf8_lossy(&strip_trusted(m)),
            "X-Attributed-Tenant-Extra: kept\r\nSubject: kept\r\n X-Attributed-Tenant: kept as part of the subject\r\n\r\nX-Attributed-Tenant : body\r\n"
        );
    }

    #[test]
    fn a_line_that_is_no_field_ends_the_header_section() {
        // Names another reader might still read as a trust field: each ends
        // the header section, and an empty line makes the rest body for all.
        for odd in [
            &b"X-Attributed-Tenant\0: d"[..],
            b"\x01X-Attributed-Tenant: e",
            b"X-Attributed-Tenant\xc2\xa0: h",
            b":X-Attributed-Tenant: i",
            b"::X-Attributed-Tenant: j",
            b"junk\r\n X-Attributed-Tenant: k",
            b"X-Attributed-Tenant\r\n : folded name",
            b"Received\r\n\t:X-Attrelay-Warning: l",
            b"no colon at all",
        ] {
            let mut m = b"Subject: s\r\n".to_vec();
            m.extend_from_slice(odd);
            m.extend_from_slice(b"\r\nFrom: f\r\n\r\nbody\r\n");
            let out = strip_trusted(&m);
            let mut expected = b"Subject: s\r\n\r\n".to_vec();
            expected.extend_from_slice(odd);
            expected.extend_from_slice(b"\r\nFrom: f\r\n\r\nbody\r\n");
            assert_eq!(out, expected, "{:?}", String::from_utf8_lossy(odd));
            let parsed = MessageParser::default().parse(&out).unwrap();
            assert!(
                !parsed
                    .headers()
                    .iter()
                    .any(|h| h.name().to_ascii_lowercase().contains("attributed")),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    #[test]
    fn leading_continuation_lines_are_removed() {
        // They would continue the relay's own last field.
        assert_eq!(
            strip_trusted(b" X-Attributed-Tenant: evil\r\n\tmore\r\nSubject: s\r\n\r\nb\r\n"),
            b"Subject: s\r\n\r\nb\r\n".to_vec()
        );
    }

    #[test]
    fn bare_line_endings_and_odd_messages() {
        assert_eq!(
            strip_trusted(b"X-Attributed-Tenant: a\n b\nSubject: s\n\nX-Attributed-Tenant: body\n"),
            b"Subject: s\n\nX-Attributed-Tenant: body\n".to_vec()
        );
        // A bare CR ends a line for some readers and not for others: the
        // header section ends before the field that holds one.
        assert_eq!(
            strip_trusted(b"Subject: a\rX-Attributed-Tenant: evil\r\n\r\nbody"),
            b"\r\nSubject: a\rX-Attributed-Tenant: evil\r\n\r\nbody".to_vec()
        );
        assert_eq!(
            strip_trusted(b"Subject: a\r\r\n\tX-Attributed-Tenant: evil\r\n\r\nbody"),
            b"\r\nSubject: a\r\r\n\tX-Attributed-Tenant: evil\r\n\r\nbody".to_vec()
        );
        assert_eq!(strip_trusted(b""), b"".to_vec());
        assert_eq!(
            strip_trusted(b"\r\nX-Attributed-Tenant: body only\r\n"),
            b"\r\nX-Attributed-Tenant: body only\r\n".to_vec()
        );
        assert_eq!(
            strip_trusted(b"Subject: no body\r\nX-Attributed-Tenant: x"),
            b"Subject: no body\r\n".to_vec()
        );
        // A message without a header section keeps all its lines, as body.
        assert_eq!(
            strip_trusted(b"no colon line\r\nmore\r\n"),
            b"\r\nno colon line\r\nmore\r\n".to_vec()
        );
    }

    /// The Message-ID is the client's text on its way into a log line:
    /// unfolded, bounded, anything but printable ASCII replaced; the log
    /// writer quotes it, so a quote in it cannot end the field.
    #[test]
    fn the_logged_message_id_is_unfolded_bounded_and_printable() {
        assert_eq!(
            message_id(b"Subject: x\r\nmessage-id:\r\n <a.1@b>\r\n\r\n").as_deref(),
            Some("<a.1@b>")
        );
        let hostile = b"Message-ID: <a\x1b[31m\"\x00 queue_id=forged@b>\r\n\r\n";
        let id = message_id(hostile).unwrap();
        assert!(
            id.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
            "{id:?}"
        );
        assert_eq!(id, "<a?[31m\"? queue_id=forged@b>");
        let long = format!("Message-ID: <{}@b>\r\n\r\n", "x".repeat(10_000));
        let cut = message_id(long.as_bytes()).unwrap();
        assert!(
            cut.starts_with("<xxx") && cut.len() <= MAX_LOGGED_MESSAGE_ID,
            "{}",
            cut.len()
        );
        assert_eq!(
            message_id(b"Subject: none\r\n\r\nMessage-ID: <in@body>\r\n"),
            None
        );
    }

    #[test]
    fn received_fields_are_counted_in_every_spelling() {
        let m = b"Received: a\r\nreceived : b\r\nRECEIVED\t:c\r\n folded Received: no\r\nX-Received: no\r\nSubject: x\r\n\r\nReceived: in the body\r\n";
        assert_eq!(count_received(m), 3);
        assert_eq!(count_received(b" Received: orphan\r\n\r\n"), 0);
        assert_eq!(count_received(b""), 0);
        let head = compose(&facts(None, Some("contoso")));
        assert_eq!(count_received(head.as_bytes()), 1);
    }

    #[test]
    fn a_decided_prefix_strips_and_counts_as_the_whole_message() {
        let messages: [&[u8]; 8] = [
            b"Received: a\r\nX-Attributed-Tenant: x\r\nSubject: s\r\n\r\nbody\r\nX-Attributed-Tenant: y\r\n",
            b"Subject: s\r\n folded\r\nReceived: b\r\n\tmore\r\n\r\n",
            b"Subject: s\r\nno colon here\r\nX-Attributed-Tenant: x\r\n",
            b"X-Attributed-Tenant: x\r\n",
            b"Subject: s\r\nX-Attrelay-Warning: w\r\n continued\r\n",
            b"\r\nX-Attributed-Tenant: x\r\n",
            b" orphan\r\nX-Attributed-Tenant: x\r\nSubject: a\rb\r\n\r\n",
            b":bad\r\nReceived: a\r\n\r\nx",
        ];
        for m in messages {
            let whole = strip_trusted(m);
            for k in 0..=m.len() {
                let Some(end) = header_end(&m[..k]) else {
                    continue;
                };
                assert_eq!(header_end(m), Some(end), "{m:?} at {k}");
                let mut streamed = strip_trusted(&m[..k]);
                streamed.extend_from_slice(&m[k..]);
                assert_eq!(streamed, whole, "{m:?} decided at {k}");
                assert_eq!(count_received(&m[..k]), count_received(m), "{m:?} at {k}");
            }
        }
    }
}
