//! The tenant directory built from a configuration: lookups by address,
//! certificate name and domain, and the tenants' recipient lists.

use std::path::Path;

use attrelay::config::Config;
use attrelay::directory::{
    Directory, RECIPIENT_NOT_FOUND_REASON, RecipientCheck, recipient_not_found_reply,
    recipient_not_found_verdict,
};
use attrelay_policy::model::{self, Directory as _};

#[test]
fn lookups() {
    let cfg = Config::parse(
        Path::new("t.toml"),
        r#"
[[tenant]]
id = "contoso"
accepted_domains = ["contoso.com", "Contoso.NET."]
[[tenant.connector]]
name = "onprem"
type = "on-premises"
sender_ip_addresses = ["203.0.113.0/24", "198.51.100.7", "2001:db8::/32"]
tls_sender_certificate_name = "*.Contoso.com"
"#,
    )
    .unwrap();
    let d = cfg.directory();
    for ip in [
        "203.0.113.9",
        "198.51.100.7",
        "2001:db8::1",
        "::ffff:203.0.113.1",
    ] {
        assert_eq!(d.connectors_by_ip(ip.parse().unwrap()).len(), 1, "{ip}");
    }
    for ip in ["203.0.114.1", "198.51.100.8", "2001:db9::1"] {
        assert!(d.connectors_by_ip(ip.parse().unwrap()).is_empty(), "{ip}");
    }
    assert_eq!(d.connectors_by_certificate_name("*.contoso.com.").len(), 1);
    assert!(d.connectors_by_certificate_name("contoso.com").is_empty());
    assert_eq!(
        d.tenant_of_domain("CONTOSO.net").as_deref(),
        Some("contoso")
    );
    assert_eq!(d.tenant_of_domain("mail.contoso.com"), None);
}

fn with_recipient_lists() -> Directory {
    let cfg = Config::parse(
        Path::new("t.toml"),
        r#"
[[tenant]]
id = "contoso"
accepted_domains = ["contoso.com", "contoso.net"]
recipients = ["Alice@contoso.com", "\"John Smith\"@contoso.com", "\"bob\"@CONTOSO.net."]

[[tenant]]
id = "fabrikam"
accepted_domains = ["fabrikam.com"]
"#,
    )
    .unwrap();
    cfg.directory()
}

#[test]
fn listed_recipients_are_known_whatever_their_case_or_quoting() {
    let d = with_recipient_lists();
    for known in [
        "alice@contoso.com",
        "ALICE@Contoso.COM",
        "\"alice\"@contoso.com",
        "\"john smith\"@contoso.com",
        "bob@contoso.net",
        "postmaster@contoso.com",
        "PostMaster@contoso.net",
    ] {
        assert_eq!(d.recipient_check(known), RecipientCheck::Known, "{known}");
    }
}

#[test]
fn unlisted_recipients_of_a_listing_tenant_are_unknown() {
    let d = with_recipient_lists();
    let unknown = RecipientCheck::Unknown {
        tenant: "contoso".into(),
    };
    for address in [
        "nobody@contoso.com",
        // Listed in the other domain only: lists are per address.
        "alice@contoso.net",
        "john.smith@contoso.com",
        "\"alice \"@contoso.com",
        // Not a mailbox at all: never on a list.
        "alice@contoso.com\r\n",
        "@contoso.com",
    ] {
        assert_eq!(d.recipient_check(address), unknown, "{address:?}");
    }
}

#[test]
fn recipients_of_other_domains_or_tenants_without_lists_are_not_ours() {
    let d = with_recipient_lists();
    for address in [
        "anyone@fabrikam.com",
        "someone@internet.example",
        "alice@mail.contoso.com",
        "postmaster",
        "joe@[192.0.2.1]",
        "",
    ] {
        assert_eq!(
            d.recipient_check(address),
            RecipientCheck::NotOurs,
            "{address:?}"
        );
    }
}

#[test]
fn the_not_found_reply_is_exchanges_and_one_safe_line() {
    assert_eq!(
        recipient_not_found_reply("nobody@contoso.com"),
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient nobody@contoso.com not found by SMTP address lookup"
    );
    let hostile = format!("a\r\n250 ok\u{0}é{}@contoso.com", "x".repeat(2000));
    let reply = recipient_not_found_reply(&hostile);
    assert!(reply.len() <= 510, "{}", reply.len());
    assert!(
        reply.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
        "{reply:?}"
    );
    assert!(reply.starts_with("550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient a??250 ok??"));
    let v = recipient_not_found_verdict("nobody@contoso.com", "contoso");
    assert_eq!(
        v.reply_line(),
        recipient_not_found_reply("nobody@contoso.com")
    );
    assert_eq!(v.action, model::Action::Reject);
    assert_eq!(v.tenant.as_deref(), Some("contoso"));
    assert_eq!(v.reason.as_deref(), Some(RECIPIENT_NOT_FOUND_REASON));
}
