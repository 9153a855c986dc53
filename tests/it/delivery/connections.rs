//! Connections to the next hop: reused across deliveries, pipelined when
//! offered, left with no transaction open after a refusal, replaced at once
//! when the hop closed them, carrying a large message byte for byte and an
//! eight-bit body announced where the hop allows it.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use attrelay::relay::RelayHandle;
use support::Pki;
use support::relay::Setup;
use support::smtp::{Client, Sink};
use support::wire::{CONTOSO_IP, body};

/// A relay delivering to `sink` with a 60 s retry: anything delivered within
/// seconds was delivered at the first attempt.
async fn relay_without_quick_retries(sink: &Sink) -> (RelayHandle, Pki) {
    Setup::new()
        .set("delivery.next_hop", sink.addr.to_string())
        .set("delivery.retry_initial_secs", 60)
        .start_handle()
        .await
}

async fn send(relay: SocketAddr, n: usize) {
    let (mut c, _) = Client::connect_from(relay, CONTOSO_IP.parse().unwrap()).await;
    assert_eq!(c.cmd("EHLO client.example.test").await.code, 250);
    for i in 0..n {
        assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
        assert_eq!(
            c.cmd(&format!("RCPT TO:<r{i}@internet.example>"))
                .await
                .code,
            250
        );
        let (wire, _) = body(&format!("message {i}"));
        assert_eq!(c.data(&wire).await.code, 250);
        // One at a time, so each delivery can find the previous connection idle.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_reuse_the_connection_to_the_next_hop() {
    let sink = Sink::start().await;
    let (handle, _pki) = relay_without_quick_retries(&sink).await;
    send(handle.addrs[0], 10).await;
    let got = sink.wait_for(10).await;
    assert_eq!(got.len(), 10);
    let connections = sink.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        connections <= 2,
        "10 messages over {connections} connections"
    );
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_hop_offering_pipelining_gets_each_transaction_in_two_round_trips() {
    let sink = Sink::start().await;
    sink.pipelining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (handle, _pki) = relay_without_quick_retries(&sink).await;
    let (mut c, _) = Client::connect_from(handle.addrs[0], CONTOSO_IP.parse().unwrap()).await;
    assert_eq!(c.cmd("EHLO client.example.test").await.code, 250);
    for i in 0..3 {
        assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
        for r in [
            format!("r{i}@internet.example"),
            format!("reject{i}@internet.example"),
        ] {
            assert_eq!(c.cmd(&format!("RCPT TO:<{r}>")).await.code, 250);
        }
        let (wire, _) = body(&format!("message {i}"));
        assert_eq!(c.data(&wire).await.code, 250);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each message reaches the hop for the recipient it takes; the one it
    // refuses in the same pipelined batch gets its own outcome (a DSN to
    // the sender, delivered through the same hop).
    let got = sink.wait_for(6).await;
    let mut delivered: Vec<String> = got
        .iter()
        .flat_map(|m| m.recipients.clone())
        .filter(|r| r.starts_with('r'))
        .collect();
    delivered.sort();
    assert_eq!(
        delivered,
        [
            "r0@internet.example",
            "r1@internet.example",
            "r2@internet.example"
        ]
    );
    let dsns = got.iter().filter(|m| m.sender.is_empty()).count();
    assert_eq!(dsns, 3, "one DSN per refused recipient");
    assert!(
        sink.pipelined.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "MAIL, RCPT and DATA arrived together"
    );
    handle.stop().await;
}

/// A next hop that refuses DATA keeps its transaction open (RFC 5321): the
/// cached connection must be reset before it carries the next message, or
/// that message meets `503 nested MAIL` and would bounce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_data_leaves_no_transaction_open_for_the_next_message() {
    for pipelining in [false, true] {
        let sink = Sink::start().await;
        sink.pipelining
            .store(pipelining, std::sync::atomic::Ordering::SeqCst);
        let (handle, _pki) = relay_without_quick_retries(&sink).await;
        let (mut c, _) = Client::connect_from(handle.addrs[0], CONTOSO_IP.parse().unwrap()).await;
        assert_eq!(c.cmd("EHLO client.example.test").await.code, 250);
        for (i, rcpt) in [
            "nodata@internet.example",
            "reject@internet.example",
            "ok@internet.example",
        ]
        .iter()
        .enumerate()
        {
            assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
            assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")).await.code, 250);
            let (wire, _) = body(&format!("message {i}"));
            assert_eq!(c.data(&wire).await.code, 250);
            // One at a time: each delivery finds the previous connection.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Delivered: the good message, and a DSN for each refused one.
        let got = sink.wait_for(3).await;
        let ok = got
            .iter()
            .filter(|m| m.recipients == ["ok@internet.example"])
            .count();
        assert_eq!(ok, 1, "pipelining {pipelining}: {got:?}");
        let dsns: Vec<String> = got
            .iter()
            .filter(|m| m.sender.is_empty())
            .map(|m| String::from_utf8_lossy(&m.data).into_owned())
            .collect();
        assert_eq!(dsns.len(), 2, "pipelining {pipelining}");
        assert!(
            dsns.iter().all(|d| !d.contains("ok@internet.example")),
            "the good message never bounced"
        );
        handle.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_connection_the_next_hop_closed_is_replaced_at_once() {
    let sink = Sink::start().await;
    sink.hang_up_after_message
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (handle, _pki) = relay_without_quick_retries(&sink).await;
    // Each delivery leaves a connection the sink has silently closed; the
    // next one must notice and open a fresh one, not wait for a retry.
    send(handle.addrs[0], 3).await;
    let got = tokio::time::timeout(Duration::from_secs(10), sink.wait_for(3))
        .await
        .expect("all three delivered at their first attempt");
    assert_eq!(got.len(), 3);
    assert_eq!(
        sink.connections.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "one fresh connection per message"
    );
    handle.stop().await;
}

/// A message larger than the spool's read chunk goes to the next hop in
/// pieces: dot-stuffing must hold across every piece's edge, and what
/// arrives is the body byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_reaches_the_next_hop_byte_for_byte() {
    let sink = Sink::start().await;
    sink.pipelining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (handle, _pki) = relay_without_quick_retries(&sink).await;
    // Lines of every length from 1 to 97 bytes (CRLF included), half of
    // them starting with a dot, so that line starts (and dots) fall on
    // every offset of a 64 KiB chunk's edge; about 1.2 MiB in all.
    let mut original = b"Subject: large\r\nFrom: someone@example.test\r\n\r\n".to_vec();
    let mut i = 0usize;
    while original.len() < 1_200_000 {
        let len = 1 + i % 97;
        let mut line = vec![b'a' + (i % 26) as u8; len.saturating_sub(2)];
        if i.is_multiple_of(2) && !line.is_empty() {
            line[0] = b'.';
        }
        original.extend_from_slice(&line);
        original.extend_from_slice(b"\r\n");
        i += 1;
    }
    let mut wire = Vec::new();
    for line in original.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    wire.extend_from_slice(b".\r\n");
    let (mut c, _) = Client::connect_from(handle.addrs[0], CONTOSO_IP.parse().unwrap()).await;
    assert_eq!(c.cmd("EHLO client.example.test").await.code, 250);
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<r@internet.example>").await.code, 250);
    assert_eq!(c.data(&wire).await.code, 250);
    let got = sink.wait_for(1).await;
    assert!(
        got[0].data.ends_with(&original),
        "the body arrived changed ({} bytes for {})",
        got[0].data.len(),
        original.len()
    );
    assert!(
        got[0]
            .data
            .starts_with(b"Received: from client.example.test")
    );
    handle.stop().await;
}

/// A body with bytes past US-ASCII goes to a hop that offers 8BITMIME with
/// `BODY=8BITMIME` (RFC 6152), decided from what was stored, not from the
/// client's parameter; a US-ASCII body goes without, whatever the client
/// declared; a hop without 8BITMIME gets the body as it is, without the
/// parameter. With and without pipelining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eight_bit_body_is_announced_to_a_hop_that_offers_8bitmime() {
    for pipelining in [false, true] {
        let sink = Sink::start().await;
        sink.pipelining
            .store(pipelining, std::sync::atomic::Ordering::SeqCst);
        // Each message on a fresh connection, which reads the hop's offers
        // anew.
        sink.hang_up_after_message
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let (handle, _pki) = relay_without_quick_retries(&sink).await;
        let relay = handle.addrs[0];
        let utf8 = "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\n\r\nGrüße aus Köln\r\n";
        let ascii = "Subject: plain\r\n\r\nhello\r\n";
        let mut n = 0;
        for (mail, body) in [
            ("MAIL FROM:<john@contoso.com> BODY=8BITMIME", utf8),
            ("MAIL FROM:<john@contoso.com>", utf8),
            ("MAIL FROM:<john@contoso.com> BODY=8BITMIME", ascii),
        ] {
            let (mut c, _) = Client::connect_from(relay, CONTOSO_IP.parse().unwrap()).await;
            assert_eq!(c.cmd("EHLO client.example.test").await.code, 250);
            assert_eq!(c.cmd(mail).await.code, 250);
            assert_eq!(c.cmd("RCPT TO:<r@internet.example>").await.code, 250);
            let wire = format!("{body}.\r\n");
            assert_eq!(c.data(wire.as_bytes()).await.code, 250);
            n += 1;
            let got = sink.wait_for(n).await;
            assert!(got[n - 1].data.ends_with(body.as_bytes()));
        }
        sink.seven_bit_only
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let (mut c, _) = Client::connect_from(relay, CONTOSO_IP.parse().unwrap()).await;
        assert_eq!(c.cmd("EHLO client.example.test").await.code, 250);
        assert_eq!(
            c.cmd("MAIL FROM:<john@contoso.com> BODY=8BITMIME")
                .await
                .code,
            250
        );
        assert_eq!(c.cmd("RCPT TO:<r@internet.example>").await.code, 250);
        assert_eq!(c.data(format!("{utf8}.\r\n").as_bytes()).await.code, 250);
        let got = sink.wait_for(4).await;
        assert!(got[3].data.ends_with(utf8.as_bytes()));
        let mails: Vec<String> = sink
            .envelope_lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("MAIL"))
            .cloned()
            .collect();
        assert_eq!(
            mails,
            [
                "MAIL FROM:<john@contoso.com> BODY=8BITMIME",
                "MAIL FROM:<john@contoso.com> BODY=8BITMIME",
                "MAIL FROM:<john@contoso.com>",
                "MAIL FROM:<john@contoso.com>",
            ],
            "pipelining: {pipelining}"
        );
        handle.stop().await;
    }
}
