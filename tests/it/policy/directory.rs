//! The tenant directory built from a configuration: lookups by address,
//! certificate name and domain, and the tenants' recipient lists.

use crate::support;

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

/// A connector written with IPv4-mapped IPv6 addresses loads with a
/// warning, as the IPv4 addresses they carry, and matches those clients —
/// over the wire, in `attrelay check`, and whatever spelling the client has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_written_as_ipv4_mapped_matches_the_ipv4_client() {
    let mapped = "\n[[tenant]]\nid = \"mapped\"\naccepted_domains = [\"mapped.example\"]\n\n[[tenant.connector]]\nname = \"mapped-ip\"\ntype = \"on-premises\"\nsender_ip_addresses = [\"::ffff:127.0.9.6\", \"::ffff:127.0.8.0/120\"]\n";
    let relay = support::relay::Setup::new().merge(mapped).start().await;
    let config = Config::load(&relay.pki.path("relay.toml")).unwrap();
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("IPv4-mapped") && w.contains("taken as 127.0.9.6")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("taken as 127.0.8.0/24")),
        "{warnings:?}"
    );
    for client in ["127.0.9.6", "127.0.8.77"] {
        let mut c = relay.session(client, None).await;
        assert_eq!(c.cmd("MAIL FROM:<app@mapped.example>").await.code, 250);
        let r = c.cmd("RCPT TO:<someone@internet.example>").await;
        assert!(r.is(250, "2.1.5"), "{client}: {r:?}");
    }
    let config_path = relay.pki.path("relay.toml").display().to_string();
    for ip in ["127.0.9.6", "::ffff:127.0.9.6"] {
        let out = support::attrelay(&[
            "check",
            "--config",
            &config_path,
            "--ip",
            ip,
            "--from",
            "app@mapped.example",
            "--to",
            "someone@internet.example",
            "--json",
        ]);
        let report: serde_json::Value = serde_json::from_str(&support::stdout(&out)).unwrap();
        let r = &report["recipients"][0];
        assert_eq!(r["tenant"], "mapped", "{ip}: {r}");
        let why = r["explanation"].to_string();
        assert!(!why.contains("::ffff:"), "one spelling: {why}");
    }
    relay.handle.stop().await;
}

#[test]
fn ipv4_mapped_ranges_are_ipv4_or_refused() {
    use attrelay::directory::{is_ipv4_mapped, net_text, parse_net};
    let text = |t: &str| parse_net(t).map(|n| net_text(&n));
    assert_eq!(text("::ffff:192.0.2.1").unwrap(), "192.0.2.1");
    assert_eq!(text("::ffff:192.0.2.0/120").unwrap(), "192.0.2.0/24");
    assert_eq!(text("::ffff:0:0/96").unwrap(), "0.0.0.0/0");
    // Wider than the mapped space: never a mapped range (host bits).
    assert!(text("::ffff:0:0/95").is_err());
    assert_eq!(text("2001:db8::/32").unwrap(), "2001:db8::/32");
    assert!(is_ipv4_mapped("::FFFF:192.0.2.1") && is_ipv4_mapped(" ::ffff:192.0.2.0/120"));
    assert!(!is_ipv4_mapped("192.0.2.1") && !is_ipv4_mapped("2001:db8::1"));
}
