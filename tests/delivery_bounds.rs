//! What a next hop and a DNS answer can do to delivery, against the running
//! relay: a next hop that accepts and never speaks, a domain whose MX hosts
//! stall beside one that answers, forty stalling MX hosts, and a next hop
//! whose STARTTLS an attacker stripped.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use attrelay::config::Config;
use attrelay::relay::RelayHandle;
use support::Pki;
use support::dns::{self, Rec};
use support::smtp::{Client, Sink};
use support::wire::CONTOSO_IP;

/// Listens on `addr`, accepts every connection and never says a word; the
/// count of connections taken.
async fn silent(addr: SocketAddr) -> Arc<AtomicUsize> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let count = taken.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(tcp);
        }
    });
    taken
}

/// A relay on the fixture (contoso's range moved to loopback) with
/// `server` lines and a `[delivery]` section.
async fn relay(pki: &Pki, server: &str, delivery: &str) -> RelayHandle {
    let text = support::fixture_toml(&format!(
        "listen = [\"127.0.0.1:0\"]\n{server}\n\n[spool]\npath = {:?}\n\n[delivery]\nretry_initial_secs = 60\n{delivery}\n",
        pki.path("spool").display().to_string(),
    ))
    .replace("203.0.113.0/24", "127.0.1.0/24");
    let path = pki.path("relay.toml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"));
    attrelay::relay::start(&config).await.unwrap()
}

/// Sends one message from contoso's server to `recipients`.
async fn send(relay: &RelayHandle, recipients: &[&str]) {
    let (mut c, _) = Client::connect_from(relay.addrs[0], CONTOSO_IP.parse().unwrap()).await;
    assert_eq!(c.cmd("EHLO onprem.contoso.com").await.code, 250);
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    for r in recipients {
        assert_eq!(c.cmd(&format!("RCPT TO:<{r}>")).await.code, 250, "{r}");
    }
    assert_eq!(
        c.data(b"Subject: bounded\r\n\r\nx\r\n.\r\n").await.code,
        250
    );
}

/// Waits until the queue's first message has had an attempt; its last error.
async fn first_attempt(relay: &RelayHandle, within: Duration) -> String {
    let started = Instant::now();
    while started.elapsed() < within {
        let queued = attrelay::spool::listing(&relay.context.spool);
        if let Some(e) = queued.first().filter(|e| e.attempts >= 1) {
            return e.last_error.clone().unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no delivery attempt ended within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_next_hop_holds_no_slot_and_shutdown_is_prompt() {
    let hop = SocketAddr::from(([127, 0, 7, 1], support::postfix::free_port()));
    let taken = silent(hop).await;
    let pki = Pki::new();
    let relay = relay(
        &pki,
        "shutdown_grace_secs = 2",
        &format!("next_hop = \"{hop}\"\ntimeout_secs = 1\nconcurrency = 1\n"),
    )
    .await;
    send(&relay, &["someone@internet.example"]).await;
    // The greeting never comes: the attempt ends at the step's timeout.
    let error = first_attempt(&relay, Duration::from_secs(10)).await;
    assert!(error.starts_with("451 4.4.1"), "{error}");
    assert!(taken.load(Ordering::SeqCst) >= 1);
    // Another attempt in flight when the relay stops: shutdown does not
    // wait for it beyond the grace period.
    relay.context.queue.flush();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), relay.stop())
        .await
        .expect("shutdown within the grace period");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_whose_mx_stalls_delays_no_other_domain() {
    let sink = Sink::start().await;
    let port = sink.addr.port();
    silent(SocketAddr::from(([127, 0, 7, 2], port))).await;
    let dns = dns::start(vec![
        // Sorted first: today's order of domains within an attempt.
        ("a-stalled.example", Rec::Mx(10, "mx.a-stalled.example")),
        ("mx.a-stalled.example", Rec::A([127, 0, 7, 2].into())),
        ("b-answers.example", Rec::Mx(10, "mx.b-answers.example")),
        ("mx.b-answers.example", Rec::A([127, 0, 0, 1].into())),
    ])
    .await;
    let pki = Pki::new();
    let relay = relay(
        &pki,
        "shutdown_grace_secs = 1",
        &format!(
            "next_hop = \"mx\"\ndns_servers = [\"{}\"]\nmx_port = {port}\ntimeout_secs = 30\n",
            dns.addr
        ),
    )
    .await;
    send(&relay, &["x@a-stalled.example", "y@b-answers.example"]).await;
    // The answering domain gets its mail at once, not after 30 s.
    let got = tokio::time::timeout(Duration::from_secs(8), sink.wait_for(1))
        .await
        .expect("the other domain is not held up");
    assert_eq!(got[0].recipients, ["y@b-answers.example"]);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_stalling_mx_hosts_cost_two_timeouts() {
    let port = support::postfix::free_port();
    let mut zone = Vec::new();
    let mut taken = Vec::new();
    for i in 1..=40u8 {
        let host: &'static str = Box::leak(format!("mx{i}.many.example").into_boxed_str());
        zone.push(("many.example", Rec::Mx(u16::from(i), host)));
        zone.push((host, Rec::A([127, 0, 8, i].into())));
        taken.push(silent(SocketAddr::from(([127, 0, 8, i], port))).await);
    }
    let dns = dns::start(zone).await;
    let pki = Pki::new();
    let relay = relay(
        &pki,
        "",
        &format!(
            "next_hop = \"mx\"\ndns_servers = [\"{}\"]\nmx_port = {port}\ntimeout_secs = 1\n",
            dns.addr
        ),
    )
    .await;
    let started = Instant::now();
    send(&relay, &["x@many.example"]).await;
    let error = first_attempt(&relay, Duration::from_secs(15)).await;
    // mx_session_limit (2): two hosts took the connection and stalled, then
    // the attempt gave up, instead of 40 timeouts.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let connected: usize = taken.iter().map(|t| t.load(Ordering::SeqCst)).sum();
    assert_eq!(connected, 2, "{error}");
    assert!(error.starts_with("451 4.4."), "{error}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_sends_nothing_to_a_hop_without_starttls() {
    // The sink offers no STARTTLS, as a hop behind an attacker who strips
    // it from the EHLO reply.
    let sink = Sink::start().await;
    let pki = Pki::new();
    let relay = relay(
        &pki,
        "",
        &format!("next_hop = \"{}\"\ntls = \"required\"\n", sink.addr),
    )
    .await;
    send(&relay, &["someone@internet.example"]).await;
    let error = first_attempt(&relay, Duration::from_secs(10)).await;
    assert!(error.starts_with("451 4.7.5"), "{error}");
    assert!(
        sink.envelope_lines.lock().unwrap().is_empty(),
        "no MAIL FROM in clear text"
    );
    assert!(sink.received.lock().unwrap().is_empty());
    relay.stop().await;
}
