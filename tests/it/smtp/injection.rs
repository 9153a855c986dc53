//! Commands smuggled past the relay's parser: pipelined after STARTTLS
//! (RFC 3207's buffer), injected after the TLS handshake, or hidden in
//! message data with bare line endings — none may become a command or a
//! second message.

use crate::support;

use std::time::Duration;

use support::smtp::Client;
use support::wire::{CONTOSO_IP, EXT, Relay, UNKNOWN_IP};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pipelined_after_starttls_are_discarded() {
    let relay = Relay::start("").await;
    let (mut c, _) = Client::connect_from(relay.addr, UNKNOWN_IP.parse().unwrap()).await;
    assert_eq!(c.cmd("EHLO client.example.test").await.code, 250);
    // An attacker in the middle appends a command in clear text after STARTTLS.
    c.send_raw(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
        .await;
    assert_eq!(c.read().await.code, 220);
    let (pem, key) = relay.cert("contoso");
    c.finish_tls(Some((&pem, &key))).await;
    // Inside TLS the session starts afresh: the injected MAIL was never run.
    assert!(
        c.cmd("MAIL FROM:<john@contoso.com>").await.is(503, "5.5.1"),
        "EHLO required again"
    );
    assert_eq!(c.cmd("EHLO client.example.test").await.code, 250);
    assert!(c.cmd("MAIL FROM:<>").await.is(250, "2.1.0"));
    relay.handle.stop().await;
}

/// Every end-of-data variant the public SMTP smuggling scanners send, with
/// and without pipelining: the relay never ends the data early, so no second
/// message ever reaches the next hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_variants_never_produce_a_second_message() {
    let relay = Relay::start("").await;
    let variants: [&[u8]; 7] = [
        b"\n.\n",
        b"\n.\r",
        b"\r.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n\x00.\r\n",
    ];
    let mut accepted = 0;
    for (i, v) in variants.iter().enumerate() {
        for pipelined in [false, true] {
            let mut c = relay.session(CONTOSO_IP, None).await;
            let mut payload =
                format!("Subject: smuggling {i} {pipelined}\r\n\r\nhello").into_bytes();
            payload.extend_from_slice(v);
            payload.extend_from_slice(b"MAIL FROM:<evil@contoso.com>\r\nRCPT TO:<victim@internet.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nforged\r\n.\r\n");
            if pipelined {
                c.send_raw(
                    format!("MAIL FROM:<john@contoso.com>\r\nRCPT TO:<{EXT}>\r\nDATA\r\n")
                        .as_bytes(),
                )
                .await;
                assert_eq!(c.read().await.code, 250);
                assert_eq!(c.read().await.code, 250);
                assert_eq!(c.read().await.code, 354);
                c.send_raw(&payload).await;
            } else {
                assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
                assert_eq!(c.cmd(&format!("RCPT TO:<{EXT}>")).await.code, 250);
                assert_eq!(c.cmd("DATA").await.code, 354);
                c.send_raw(&payload).await;
            }
            // The smuggled part is message data, not commands: one reply only.
            let r = c.read().await;
            if v == b"\r\n\x00.\r\n" {
                assert!(r.is(250, "2.0.0"), "variant {v:?}: {r:?}");
                accepted += 1;
            } else {
                assert!(
                    r.is(550, "5.6.0"),
                    "variant {v:?} pipelined={pipelined}: {r:?}"
                );
            }
            let q = c.cmd("QUIT").await;
            assert_eq!(
                q.code, 221,
                "variant {v:?}: the next reply is QUIT's, nothing was smuggled: {q:?}"
            );
        }
    }
    let received = relay.sink.wait_for(accepted).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received_now = relay.sink.received.lock().unwrap().clone();
    assert_eq!(received_now.len(), accepted, "{received:?}");
    for m in &received_now {
        assert_eq!(m.sender, "john@contoso.com");
        assert_eq!(m.recipients, [EXT]);
        let text = String::from_utf8_lossy(&m.data);
        // The NUL variant arrives as one message with the would-be commands as its body.
        assert!(
            text.contains("hello\r\n\0.\r\nMAIL FROM:<evil@contoso.com>\r\n"),
            "{text}"
        );
    }
    assert!(
        !relay
            .sink
            .rcpt_attempts
            .lock()
            .unwrap()
            .iter()
            .any(|a| a.contains("victim"))
    );
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rset_injected_after_starttls_is_not_executed() {
    let relay = Relay::start("").await;
    let (mut c, _) = Client::connect_from(relay.addr, UNKNOWN_IP.parse().unwrap()).await;
    assert_eq!(c.cmd("EHLO client.example.test").await.code, 250);
    c.send_raw(b"STARTTLS\r\nRSET\r\n").await;
    assert_eq!(c.read().await.code, 220);
    let (pem, key) = relay.cert("contoso");
    c.finish_tls(Some((&pem, &key))).await;
    // Had the RSET run inside TLS, its 250 would be waiting here; the first
    // reply must be NOOP's own, and the session must have been reset (EHLO).
    let r = c.cmd("NOOP").await;
    assert!(r.is(250, "2.0.0"), "{r:?}");
    assert!(
        c.cmd("MAIL FROM:<>").await.is(503, "5.5.1"),
        "HELO state reset by the handshake"
    );
    relay.handle.stop().await;
}
