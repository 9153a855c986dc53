//! The SMTP dialogue stage by stage, in memory: the relay's own session runs
//! over a pipe (no socket), with the client at any address we like, and
//! each step is one line: the command and the reply it must get.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;

use attrelay::smtp::ServerContext;
use support::relay::Setup;
use support::smtp::Client;
use support::wire::Relay;

/// Contoso's on-premises server (the seed fixture's range, unchanged: in
/// memory the address is whatever the session is told).
const CONTOSO: &str = "203.0.113.10:40000";
const STRANGER: &str = "192.0.2.77:40000";

/// A relay whose sessions the tests open in memory; its listeners are
/// never used. The fixture's ranges are moved to loopback by `Relay`, so
/// contoso's range is put back for the in-memory client addresses.
async fn relay() -> Relay {
    Setup::new()
        .set("server.max_recipients", 3)
        .set("server.idle_timeout_secs", 5)
        .connector("contoso", "Contoso on-premises", |c| {
            let ranges = vec!["203.0.113.0/24", "2001:db8::/32"];
            c.insert("sender_ip_addresses".into(), ranges.into());
        })
        .start()
        .await
}

async fn open(ctx: &Arc<ServerContext>, peer: &str) -> Client {
    let peer: SocketAddr = peer.parse().unwrap();
    let (c, greeting) = Client::in_memory(ctx.clone(), peer).await;
    assert!(
        greeting.lines[0].starts_with("220 relay.example.test ESMTP"),
        "{greeting:?}"
    );
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ehlo() {
    let r = relay().await;
    let ctx = &r.handle.context;
    let mut c = open(ctx, CONTOSO).await;
    c.expect("MAIL FROM:<john@contoso.com>", "503 5.5.1").await;
    c.expect("EHLO", "501 5.5.4").await;
    let ehlo = c.expect("EHLO client.example", "250 HELP").await;
    assert_eq!(
        ehlo.lines[0],
        "250-relay.example.test Hello client.example [203.0.113.10]"
    );
    for cap in [
        "250-PIPELINING",
        "250-SIZE ",
        "250-8BITMIME",
        "250-ENHANCEDSTATUSCODES",
        "250-STARTTLS",
    ] {
        assert!(
            ehlo.lines.iter().any(|l| l.starts_with(cap)),
            "{cap}: {ehlo:?}"
        );
    }
    c.expect(
        "HELO old.example",
        "250 relay.example.test Hello old.example",
    )
    .await;
    c.expect("QUIT", "221 2.0.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls() {
    let r = relay().await;
    let mut c = open(&r.handle.context, CONTOSO).await;
    c.expect("STARTTLS", "503 5.5.1").await;
    c.expect("EHLO client.example", "250").await;
    c.expect("STARTTLS", "220 2.0.0").await;
    c.finish_tls(None).await;
    // The session starts over: EHLO again, and no STARTTLS offered.
    c.expect("MAIL FROM:<john@contoso.com>", "503 5.5.1").await;
    let ehlo = c.expect("EHLO client.example", "250 HELP").await;
    assert!(
        !ehlo.lines.iter().any(|l| l.contains("STARTTLS")),
        "{ehlo:?}"
    );
    c.expect("STARTTLS", "503 5.5.1").await;
    c.expect("MAIL FROM:<john@contoso.com>", "250 2.1.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail() {
    let r = relay().await;
    let mut c = open(&r.handle.context, CONTOSO).await;
    c.expect("EHLO client.example", "250").await;
    c.expect(
        "MAIL FROM:<john@contoso.com> SIZE=999999999999",
        "552 5.3.4",
    )
    .await;
    c.expect("MAIL FROM:<john@contoso.com> AUTH=<>", "555 5.5.4")
        .await;
    c.expect("MAIL FROM:<john@@contoso.com>", "501 5.1.7").await;
    c.expect("MAIL FROM:<postmaster>", "501 5.1.7").await;
    c.expect("MAIL TO:<john@contoso.com>", "501 5.5.4").await;
    c.expect("MAIL FROM:<john@contoso.com>", "250 2.1.0").await;
    c.expect("MAIL FROM:<john@contoso.com>", "503 5.5.1").await;
    c.expect("RSET", "250 2.0.0").await;
    c.expect("MAIL FROM:<>", "250 2.1.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rcpt() {
    let r = relay().await;
    let ctx = &r.handle.context;
    let mut c = open(ctx, CONTOSO).await;
    c.expect("EHLO client.example", "250").await;
    c.expect("RCPT TO:<kate@tailspintoys.com>", "503 5.5.1")
        .await;
    c.expect("MAIL FROM:<john@contoso.com>", "250 2.1.0").await;
    c.expect("RCPT TO:<kate@tailspintoys.com>", "250 2.1.5")
        .await;
    c.expect("RCPT TO:<\"victim@evil.example\"@contoso.com>", "250 2.1.5")
        .await;
    c.expect("RCPT TO:<postmaster>", "250 2.1.5").await;
    c.expect("RCPT TO:<fourth@tailspintoys.com>", "452 4.5.3")
        .await;
    // A stranger may send to the tenants, never through them.
    let mut s = open(ctx, STRANGER).await;
    s.expect("EHLO stranger.example", "250").await;
    s.expect("MAIL FROM:<john@contoso.com>", "250 2.1.0").await;
    s.expect("RCPT TO:<someone@internet.example>", "550 5.7.64")
        .await;
    s.expect("RCPT TO:<joe@contoso.com>", "250 2.1.5").await;
    s.expect("RCPT TO:<joe%evil.example@contoso.com>", "550 5.7.1")
        .await;
    s.expect("RCPT TO:<joe@contoso.com\u{1b}[2J>", "501 5.1.3")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data() {
    let r = relay().await;
    let mut c = open(&r.handle.context, CONTOSO).await;
    c.expect("EHLO client.example", "250").await;
    c.expect("DATA", "503 5.5.1").await;
    c.expect("MAIL FROM:<john@contoso.com>", "250 2.1.0").await;
    c.expect("DATA", "554 5.5.1").await;
    c.expect("RCPT TO:<kate@tailspintoys.com>", "250 2.1.5")
        .await;
    c.expect("DATA", "354").await;
    c.expect(
        "X-Attributed-Tenant: fabrikam\r\nSubject: in memory\r\n\r\nhello\r\n.",
        "250 2.0.0 Ok: queued as",
    )
    .await;
    let got = r.sink.wait_for(1).await;
    assert_eq!(got[0].header_values("X-Attributed-Tenant"), ["contoso"]);
    // A loop: more Received fields than the hop limit.
    c.expect("MAIL FROM:<john@contoso.com>", "250 2.1.0").await;
    c.expect("RCPT TO:<kate@tailspintoys.com>", "250 2.1.5")
        .await;
    c.expect("DATA", "354").await;
    let hops = "Received: from a by b\r\n".repeat(51);
    c.expect(&format!("{hops}\r\nlooping\r\n."), "554 5.4.6")
        .await;
}
