//! No backscatter service, over the wire: a tenant's recipient list refuses
//! unknown recipients at `RCPT TO` (Exchange Online's `550 5.1.10`), before
//! the `250` that would end in a bounce; and the DSNs that remain, for mail
//! whose sender no connector authenticated, carry nothing of the message and
//! are limited per sender domain, while a tenant's own bounces keep the
//! original header section.
//!
//! The relay runs in-process on the wire fixture (IP ranges moved into
//! loopback) and delivers to a recording sink, which refuses recipients
//! whose address starts with `reject` (`550 5.1.1`) and also receives the
//! DSNs.

use crate::support;

use std::time::Duration;

use support::relay::Setup;
use support::smtp::{Client, Received};
use support::wire::{self, CONTOSO_IP, UNKNOWN_IP};

/// Contoso's tenant table as the fixture writes it.
/// The list file the recipient-list tests give contoso.
const LIST_FILE: &str = "contoso-recipients.txt";

/// The wire relay, with the helpers these tests share.
struct Relay(wire::Relay);

impl std::ops::Deref for Relay {
    type Target = wire::Relay;
    fn deref(&self) -> &wire::Relay {
        &self.0
    }
}

impl Relay {
    /// A relay on the wire fixture delivering to a fresh sink, with
    /// `delivery` merged into `[delivery]` and `tenant` into contoso's table.
    /// `files` are written beside the configuration first.
    async fn start(delivery: &str, tenant: &str, files: &[(&str, &str)]) -> Relay {
        let mut setup = Setup::new()
            .set("server.idle_timeout_secs", 5)
            .merge(&format!("[delivery]\n{delivery}"))
            .merge_tenant("contoso", tenant);
        for (name, contents) in files {
            setup = setup.file(name, contents);
        }
        let relay = setup.start().await;
        Relay(relay)
    }

    /// Sends one message from `source` with `subject` and `body`; every
    /// recipient must be accepted.
    async fn send(&self, source: &str, from: &str, to: &str, subject: &str, body: &str) {
        let mut c = Client::session(self.addr, source, None).await;
        let r = c.cmd(&format!("MAIL FROM:<{from}>")).await;
        assert!(r.is(250, "2.1.0"), "MAIL FROM:<{from}>: {r:?}");
        let r = c.cmd(&format!("RCPT TO:<{to}>")).await;
        assert!(r.is(250, "2.1.5"), "RCPT TO:<{to}> from {source}: {r:?}");
        let wire = format!("Subject: {subject}\r\nFrom: <{from}>\r\n\r\n{body}\r\n.\r\n");
        let r = c.data(wire.as_bytes()).await;
        assert!(r.is(250, "2.0.0"), "DATA: {r:?}");
        assert_eq!(c.cmd("QUIT").await.code, 221);
    }

    /// Waits until every message has left the spool (delivered, bounced or
    /// dropped), then a little more, and returns what the sink received.
    async fn settle(&self) -> Vec<Received> {
        for _ in 0..150 {
            if self.handle.context.spool.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            self.handle.context.spool.is_empty(),
            "the spool did not empty"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.sink.received.lock().unwrap().clone()
    }

    /// Reloads the configuration (and with it the recipient file).
    async fn reload(&self) -> Result<(), String> {
        let reloader = self.handle.reloader.clone();
        tokio::task::spawn_blocking(move || reloader.reload().map(drop))
            .await
            .unwrap()
    }
}

/// The reply Exchange Online gives a recipient its directory does not know.
fn not_found(address: &str) -> String {
    format!("RESOLVER.ADR.RecipientNotFound; Recipient {address} not found by SMTP address lookup")
}

/// Opens a transaction from `source` and returns the reply to each `RCPT TO`.
async fn rcpt_replies(
    relay: &Relay,
    source: &str,
    from: &str,
    to: &[&str],
) -> Vec<(u16, String, String)> {
    let mut c = Client::session(relay.addr, source, None).await;
    assert_eq!(c.cmd(&format!("MAIL FROM:<{from}>")).await.code, 250);
    let mut out = Vec::new();
    for rcpt in to {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
        out.push((r.code, r.enhanced, r.text));
    }
    assert_eq!(c.cmd("QUIT").await.code, 221);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_list_refuses_unknown_recipients_before_250() {
    let list = "# Contoso's mailboxes, exported nightly\nalice@contoso.com\n\n\"John Smith\"@contoso.com\n";
    let relay = Relay::start(
        "",
        &format!("recipients_file = \"{LIST_FILE}\"\n"),
        &[(LIST_FILE, list)],
    )
    .await;

    // From the Internet: unknown recipients of contoso are refused, listed
    // ones (in any case, quoted or not) and other tenants' are accepted.
    let replies = rcpt_replies(
        &relay,
        UNKNOWN_IP,
        "someone@internet.example",
        &[
            "nobody@contoso.com",
            "Alice@CONTOSO.com",
            "\"john smith\"@contoso.com",
            "postmaster@contoso.com",
            "anyone@fabrikam.com",
        ],
    )
    .await;
    assert_eq!(
        replies[0],
        (550, "5.1.10".into(), not_found("nobody@contoso.com"))
    );
    for (reply, rcpt) in replies[1..]
        .iter()
        .zip(["alice", "john smith", "postmaster", "fabrikam"])
    {
        assert_eq!(
            (reply.0, reply.1.as_str()),
            (250, "2.1.5"),
            "{rcpt}: {reply:?}"
        );
    }

    // The list applies to the tenant's own server too.
    let replies = rcpt_replies(
        &relay,
        CONTOSO_IP,
        "john@contoso.com",
        &["nobody@contoso.com"],
    )
    .await;
    assert_eq!(
        replies[0],
        (550, "5.1.10".into(), not_found("nobody@contoso.com"))
    );

    // A listed recipient's mail is delivered; nothing bounces.
    relay
        .send(
            UNKNOWN_IP,
            "someone@internet.example",
            "alice@contoso.com",
            "hello",
            "Hi Alice.",
        )
        .await;
    let received = relay.settle().await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].recipients, ["alice@contoso.com"]);
    assert_eq!(received[0].sender, "someone@internet.example");

    // A reload re-reads the file: the new recipient is accepted...
    std::fs::write(
        relay.pki.path(LIST_FILE),
        format!("{list}nobody@contoso.com\n"),
    )
    .unwrap();
    relay.reload().await.unwrap();
    let replies = rcpt_replies(
        &relay,
        UNKNOWN_IP,
        "someone@internet.example",
        &["nobody@contoso.com"],
    )
    .await;
    assert_eq!(
        (replies[0].0, replies[0].1.as_str()),
        (250, "2.1.5"),
        "{replies:?}"
    );

    // ...and a broken file is refused, naming its path and line, while the
    // running list keeps serving.
    std::fs::write(
        relay.pki.path(LIST_FILE),
        "alice@contoso.com\nbob@fabrikam.com\n",
    )
    .unwrap();
    let err = relay.reload().await.unwrap_err();
    assert!(
        err.contains(&format!("{LIST_FILE}:2:1: tenant[0].recipients_file: ")),
        "{err}"
    );
    assert!(
        err.contains("fabrikam.com is not an accepted domain of tenant 'contoso'"),
        "{err}"
    );
    let replies = rcpt_replies(
        &relay,
        UNKNOWN_IP,
        "someone@internet.example",
        &["nobody@contoso.com"],
    )
    .await;
    assert_eq!(replies[0].0, 250, "{replies:?}");
    relay.0.handle.stop().await;
}

/// The forged-sender DSN: an unknown client writes, as
/// `victim@elsewhere.example`, to a recipient the next hop refuses, with its
/// text in the Subject and body. The relay accepted the message (contoso
/// keeps no recipient list here), so a bounce is due — to a sender that
/// never wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_senders_dsn_carries_nothing_and_is_limited_per_domain() {
    let relay = Relay::start("dsn_rate_per_domain_per_hour = 2", "", &[]).await;
    for i in 0..3 {
        relay
            .send(
                UNKNOWN_IP,
                "victim@elsewhere.example",
                "reject-me@contoso.com",
                &format!("Cheap pills at attacker.example ({i})"),
                "Visit attacker.example today.",
            )
            .await;
    }
    // Another sender domain has its own allowance.
    relay
        .send(
            UNKNOWN_IP,
            "victim@another.example",
            "reject-me@contoso.com",
            "Cheap pills at attacker.example (another)",
            "Visit attacker.example today.",
        )
        .await;
    // The tenant's own mail (originating by IP, authenticated): every
    // bounce arrives, unlimited, with the original header section.
    for i in 0..3 {
        relay
            .send(
                CONTOSO_IP,
                "john@contoso.com",
                "reject-me@internet.example",
                &format!("Quarterly report ({i})"),
                "The figures are attached.",
            )
            .await;
    }

    let received = relay.settle().await;
    let to = |rcpt: &str| -> Vec<&Received> {
        received.iter().filter(|m| m.recipients == [rcpt]).collect()
    };
    assert!(
        received.iter().all(|m| m.sender.is_empty()),
        "only DSNs arrive (every original was refused): {received:?}"
    );
    assert_eq!(
        to("victim@elsewhere.example").len(),
        2,
        "the limit: 2 per domain and hour"
    );
    assert_eq!(to("victim@another.example").len(), 1);
    assert_eq!(
        to("john@contoso.com").len(),
        3,
        "authenticated senders are not limited"
    );
    assert_eq!(received.len(), 6, "{received:?}");

    for dsn in to("victim@elsewhere.example")
        .into_iter()
        .chain(to("victim@another.example"))
    {
        let text = String::from_utf8_lossy(&dsn.data);
        assert!(text.contains("report-type=delivery-status"), "{text}");
        assert!(
            text.contains(
                "Final-Recipient: rfc822; reject-me@contoso.com\r\nAction: failed\r\nStatus: 5.1.1"
            ),
            "{text}"
        );
        assert!(
            !text.contains("attacker"),
            "nothing of the attacker's text: {text}"
        );
        assert!(!text.contains("Cheap pills"), "{text}");
        assert!(!text.contains("text/rfc822-headers"), "status only: {text}");
    }
    for dsn in to("john@contoso.com") {
        let text = String::from_utf8_lossy(&dsn.data);
        assert!(text.contains("Content-Type: text/rfc822-headers"), "{text}");
        assert!(text.contains("Subject: Quarterly report ("), "{text}");
        assert!(
            text.contains("Final-Recipient: rfc822; reject-me@internet.example"),
            "{text}"
        );
        assert!(
            !text.contains("The figures are attached."),
            "never the body: {text}"
        );
    }
    relay.0.handle.stop().await;
}
