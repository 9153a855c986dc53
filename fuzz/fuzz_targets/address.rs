//! RFC 5321 paths (`attrelay::address`): arbitrary bytes after `MAIL FROM:`
//! and `RCPT TO:`. Never panics; whatever is accepted has one text form,
//! and that form survives the real writer: the delivery's command lines to
//! the next hop, read back by our parser, give the same mailbox — the same
//! domain the policy judged, no parameter added.
#![no_main]

use attrelay::address::{self, ForwardPath, Mailbox, ReversePath};
use attrelay::delivery::transaction::{mail_command, rcpt_command};
use libfuzzer_sys::fuzz_target;

/// The domain a policy sees in an address text: after the last '@', as the
/// default policy's `domain_of_address` takes it.
fn judged_domain(text: &str) -> &str {
    text.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

fn check(m: &Mailbox) {
    let text = m.to_string();
    // Canonical: parsing the written form gives it back.
    let again = Mailbox::parse(&text, false).expect("the canonical form parses");
    assert_eq!(&again, m);
    assert_eq!(again.to_string(), text);
    assert_eq!(address::canonical(&text), Ok(text.as_str()));
    assert_eq!(judged_domain(&text), m.domain().as_str());
    assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)), "{text:?}");

    let (mail, rcpt) = (mail_command(&text, ""), rcpt_command(&text));
    let (mail, rcpt) = (mail.as_bytes(), rcpt.as_bytes());
    let mail = mail.strip_prefix(b"MAIL FROM:").unwrap();
    let mail = mail.strip_suffix(b"\r\n").unwrap();
    let rcpt = rcpt.strip_prefix(b"RCPT TO:").unwrap();
    let rcpt = rcpt.strip_suffix(b"\r\n").unwrap();
    let parsed = address::parse_mail(mail).expect("the written MAIL line parses");
    assert_eq!(parsed.path, ReversePath::Mailbox(m.clone()));
    assert_eq!(parsed.size, None);
    let parsed = address::parse_rcpt(rcpt).expect("the written RCPT line parses");
    assert_eq!(parsed.path, ForwardPath::Mailbox(m.clone()));
}

fuzz_target!(|data: &[u8]| {
    if let Ok(args) = address::parse_mail(data)
        && let ReversePath::Mailbox(m) = &args.path
    {
        check(m);
    }
    if let Ok(args) = address::parse_rcpt(data)
        && let ForwardPath::Mailbox(m) = &args.path
    {
        check(m);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        for utf8 in [false, true] {
            if let Ok(m) = Mailbox::parse(text, utf8) {
                let again = Mailbox::parse(&m.to_string(), utf8).expect("round trip");
                assert_eq!(again, m);
                if !utf8 {
                    check(&m);
                }
            }
        }
    }
});
