//! Delivery by DNS MX end to end: the relay resolves recipient domains with
//! a local authoritative DNS server (`[delivery] dns_servers`), tries MX hosts
//! in preference order and every address of each, falls back to the domain
//! itself without MX, and bounces null-MX and non-existent domains with a DSN
//! — itself delivered by MX to the sender's domain.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::dns::{self, Rec};
use support::relay::Setup;
use support::smtp::{Client, Sink};

const CONTOSO_IP: &str = "127.0.1.10";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_delivery_follows_dns() {
    let sink = Sink::start().await;
    let port = sink.addr.port();
    // The preferred MX host accepts connections and drops them before the
    // greeting: the relay must go on to the next one.
    let flaky = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 6, 1], port)))
        .await
        .unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    let counter = dropped.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = flaky.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(tcp);
        }
    });
    let dns = dns::start(vec![
        ("internet.example", Rec::Mx(20, "mx2.internet.example")),
        ("internet.example", Rec::Mx(10, "mx1.internet.example")),
        ("mx1.internet.example", Rec::A([127, 0, 6, 1].into())),
        ("mx2.internet.example", Rec::A([127, 0, 0, 1].into())),
        // No MX: the domain's own address is the implicit MX.
        ("nomx.example", Rec::A([127, 0, 0, 1].into())),
        ("nullmx.example", Rec::Mx(0, ".")),
        // The sender's domain, where the DSN goes.
        ("contoso.com", Rec::Mx(10, "mail.contoso.com")),
        ("mail.contoso.com", Rec::A([127, 0, 0, 1].into())),
    ])
    .await;

    let (relay, _pki) = Setup::new()
        .set("delivery.next_hop", "mx")
        .set("delivery.dns_servers", vec![dns.addr.to_string()])
        .set("delivery.mx_port", i64::from(port))
        .set("delivery.retry_initial_secs", 1)
        .set("delivery.timeout_secs", 5)
        .start_handle()
        .await;

    let (mut c, _) = Client::connect_from(relay.addrs[0], CONTOSO_IP.parse().unwrap()).await;
    assert_eq!(c.cmd("EHLO client.example.test").await.code, 250);
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    for r in [
        "a@internet.example",
        "b@nomx.example",
        "c@nullmx.example",
        "d@no-such-domain.example",
    ] {
        let reply = c.cmd(&format!("RCPT TO:<{r}>")).await;
        assert_eq!(reply.code, 250, "{r}: {reply:?}");
    }
    assert_eq!(
        c.data(b"Subject: by MX\r\n\r\nfollow the DNS\r\n.\r\n")
            .await
            .code,
        250
    );

    let got = tokio::time::timeout(Duration::from_secs(30), sink.wait_for(3))
        .await
        .expect("two deliveries and a DSN within 30 s");
    let to = |rcpt: &str| {
        got.iter()
            .find(|m| m.recipients == vec![rcpt.to_string()])
            .unwrap_or_else(|| panic!("nothing for {rcpt} in {got:?}"))
    };
    for rcpt in ["a@internet.example", "b@nomx.example"] {
        let m = to(rcpt);
        assert_eq!(m.sender, "john@contoso.com");
        assert!(String::from_utf8_lossy(&m.data).contains("follow the DNS"));
    }
    assert!(
        dropped.load(Ordering::SeqCst) >= 1,
        "the preferred MX host was tried first"
    );
    let dsn = to("john@contoso.com");
    assert_eq!(dsn.sender, "", "a DSN has the null sender");
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("c@nullmx.example") && text.contains("5.1.10"),
        "{text}"
    );
    assert!(
        text.contains("d@no-such-domain.example") && text.contains("5.1.2"),
        "{text}"
    );
    assert!(
        !text.contains("a@internet.example"),
        "only failures are reported: {text}"
    );
    relay.stop().await;
}
