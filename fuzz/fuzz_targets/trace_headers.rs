//! Trace headers (`attrelay::intake::trace`): arbitrary facts — HELO, the
//! recipient, a certificate's subject, a tenant id, policy fields — go into
//! `compose`, and no fact can produce header syntax: every line ends in
//! CRLF, continuation lines start with a TAB, there is no other CR or LF,
//! every byte is printable ASCII, no line exceeds 998 bytes, and the only
//! `X-Attributed-Tenant` field is the relay's own. `strip_trusted` then
//! leaves no trust field in a client's message, whatever its spelling.
#![no_main]

use attrelay::intake::trace::{self, TraceFacts};
use attrelay_policy::model::{ClientCertificate, HeaderField, TlsFacts};
use libfuzzer_sys::fuzz_target;

fn field<'a>(parts: &mut impl Iterator<Item = &'a [u8]>) -> String {
    String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned()
}

fn check_lines(out: &str) {
    assert!(out.ends_with("\r\n"), "{out:?}");
    for (i, line) in out[..out.len() - 2].split("\r\n").enumerate() {
        assert!(line.len() <= trace::MAX_LINE, "{} bytes", line.len());
        assert!(
            line.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\t'),
            "{line:?}"
        );
        if i > 0 && !line.starts_with('\t') {
            // A new field: one of those compose writes.
            let name = line.split(':').next().unwrap_or_default();
            // (Policy fields are `X-` names in any case.)
            assert!(
                name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("x-")),
                "{line:?}"
            );
        }
    }
}

/// The lines of the header section, up to the first empty line; a line
/// ends in CRLF, LF or a bare CR, as `strip_trusted` reads them.
fn header_lines(message: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut pos = 0;
    while pos < message.len() {
        let rest = &message[pos..];
        let (len, ending) = match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            None => (rest.len(), 0),
            Some(i) if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') => (i, 2),
            Some(i) => (i, 1),
        };
        if len == 0 && ending > 0 {
            break;
        }
        lines.push(&rest[..len]);
        pos += len + ending;
    }
    lines
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xff);
    let (helo, rcpt, subject, tenant) = (
        field(&mut parts),
        field(&mut parts),
        field(&mut parts),
        field(&mut parts),
    );
    let (name, value) = (field(&mut parts), field(&mut parts));
    let tls = TlsFacts {
        protocol: field(&mut parts),
        cipher: field(&mut parts),
        client_certificate: Some(ClientCertificate {
            verified: data.first().is_some_and(|b| b & 1 == 1),
            subject,
            ..Default::default()
        }),
    };
    let headers = [HeaderField { name, value }];
    let facts = TraceFacts {
        helo: &helo,
        client_ip: "192.0.2.1".parse().unwrap(),
        hostname: "relay.example",
        with: "ESMTPS",
        queue_id: "Q1",
        for_recipient: Some(&rcpt),
        tls: Some(&tls),
        date: "Tue, 1 Dec 2026 00:00:00 +0000",
        tenant: (!tenant.is_empty()).then_some(tenant.as_str()),
        policy_headers: &headers,
    };
    let out = trace::compose(&facts);
    check_lines(&out);
    let attributions = out
        .split("\r\n")
        .filter(|l| {
            l.split(':')
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case("x-attributed-tenant"))
        })
        .count();
    assert_eq!(attributions, usize::from(facts.tenant.is_some()), "{out:?}");
    assert_eq!(out.matches("\r\nReceived:").count() + usize::from(out.starts_with("Received:")), 1);

    // A client's message: no trust field is left in its header section
    // (up to the first empty line), whatever its spelling.
    let stripped = trace::strip_trusted(data);
    for line in header_lines(&stripped) {
        let text = String::from_utf8_lossy(line).to_ascii_lowercase();
        if text.starts_with([' ', '\t']) {
            continue;
        }
        let name: String = text
            .split(':')
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .collect();
        assert!(
            name != "x-attributed-tenant" && name != "x-attrelay-warning",
            "{text:?} survived"
        );
    }
    let parsed = mail_parser::MessageParser::default().parse(&stripped);
    if let Some(m) = parsed {
        assert!(
            !m.headers().iter().any(|h| {
                let n = h.name().to_ascii_lowercase();
                n == "x-attributed-tenant" || n == "x-attrelay-warning"
            }),
            "mail-parser still reads a trust field"
        );
    }
    // Streaming: wherever the start of the message already decides its
    // header section, stripping that start and appending the rest gives the
    // same message as stripping the whole.
    let cut = data.len() / 2;
    if let Some(end) = trace::header_end(&data[..cut]) {
        assert_eq!(trace::header_end(data), Some(end));
        let mut streamed = trace::strip_trusted(&data[..cut]);
        streamed.extend_from_slice(&data[cut..]);
        assert_eq!(streamed, stripped);
        assert_eq!(trace::count_received(&data[..cut]), trace::count_received(data));
    }
});
