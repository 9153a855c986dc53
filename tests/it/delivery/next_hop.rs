//! Onward delivery over the wire: a temporary failure retried, a permanent
//! one bounced with a DSN (none for the null sender), a message past the
//! maximum queue age bounced, delivery into a directory, and STARTTLS to
//! the next hop with our client certificate.

use crate::support;

use std::time::Duration;

use support::smtp::Sink;
use support::wire::{CONTOSO_IP, EXT, Relay, UNKNOWN_IP, body, header};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_451_and_dsn_after_550() {
    let relay = Relay::start("").await;
    let mut c = relay.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    for r in [
        "defer-once@internet.example",
        "reject@internet.example",
        "ok@internet.example",
    ] {
        assert_eq!(c.cmd(&format!("RCPT TO:<{r}>")).await.code, 250);
    }
    let (wire, _) = body("retry and bounce");
    assert_eq!(c.data(&wire).await.code, 250);
    // First attempt: ok delivered; then the retry delivers defer-once; and
    // the DSN for reject goes to john@contoso.com through the same next hop.
    let received = relay.sink.wait_for(3).await;
    let attempts = relay.sink.rcpt_attempts.lock().unwrap().clone();
    assert_eq!(
        attempts
            .iter()
            .filter(|a| *a == "defer-once@internet.example")
            .count(),
        2,
        "{attempts:?}"
    );
    assert!(
        received
            .iter()
            .any(|m| m.recipients == ["ok@internet.example"])
    );
    assert!(
        received
            .iter()
            .any(|m| m.recipients == ["defer-once@internet.example"])
    );
    let dsn = received
        .iter()
        .find(|m| m.recipients == ["john@contoso.com"])
        .expect("a DSN to the sender");
    assert_eq!(dsn.sender, "", "a DSN has the null sender");
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(text.contains("report-type=delivery-status"), "{text}");
    assert!(
        text.contains(
            "Final-Recipient: rfc822; reject@internet.example\r\nAction: failed\r\nStatus: 5.1.1"
        ),
        "{text}"
    );
    assert!(
        text.contains("Diagnostic-Code: smtp; 550 5.1.1 User unknown"),
        "{text}"
    );
    assert!(
        !text.contains("Final-Recipient: rfc822; ok@internet.example"),
        "{text}"
    );
    // The reverse-path may be anyone's (another tenant's): a DSN carries no
    // tenant's attribution to it.
    assert!(
        header(&text, "X-Attributed-Tenant").is_empty(),
        "the DSN carries no attribution: {text}"
    );
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_dsn_for_a_null_sender() {
    let relay = Relay::start("").await;
    let mut c = relay.session(UNKNOWN_IP, Some("contoso")).await;
    assert_eq!(c.cmd("MAIL FROM:<>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<reject@internet.example>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<ok@internet.example>").await.code, 250);
    let (wire, _) = body("ndr");
    assert_eq!(c.data(&wire).await.code, 250);
    relay.sink.wait_for(1).await;
    // Wait for the spool to empty: the failed recipient is final, and no DSN is made.
    for _ in 0..100 {
        if relay.handle.context.spool.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(relay.handle.context.spool.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        relay.sink.received.lock().unwrap().len(),
        1,
        "no DSN for <>"
    );
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_the_maximum_queue_age_bounces() {
    let sink = Sink::start().await;
    let relay = Relay::start(&format!(
        "[delivery]\nnext_hop = \"{}\"\nretry_initial_secs = 1\nretry_max_secs = 1\nmax_queue_age_secs = 2\n",
        sink.addr
    ))
    .await;
    let mut c = relay.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<defer@internet.example>").await.code, 250);
    let (wire, _) = body("never accepted");
    assert_eq!(c.data(&wire).await.code, 250);
    let received = sink.wait_for(1).await;
    let dsn = &received[0];
    assert_eq!(
        (dsn.sender.as_str(), dsn.recipients.as_slice()),
        ("", &["john@contoso.com".to_string()][..])
    );
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(text.contains("Status: 4.4.7"), "{text}");
    assert!(text.contains("Message expired after"), "{text}");
    assert!(
        text.contains("last error: 451 4.3.0 Try again later"),
        "{text}"
    );
    let attempts = sink
        .rcpt_attempts
        .lock()
        .unwrap()
        .iter()
        .filter(|a| *a == "defer@internet.example")
        .count();
    assert!(attempts >= 2, "retried before expiring: {attempts}");
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_delivery_writes_one_file_per_message() {
    let pki_dir = tempfile::tempdir().unwrap();
    let outbox = pki_dir.path().join("outbox");
    let relay = Relay::start(&format!(
        "[delivery]\ndirectory = {:?}\n",
        outbox.display().to_string()
    ))
    .await;
    let mut c = relay.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{EXT}>")).await.code, 250);
    let (wire, delivered) = body("to a directory");
    let r = c.data(&wire).await;
    let id = r.text.trim_start_matches("Ok: queued as ").to_string();
    let eml = outbox.join(format!("{id}.eml"));
    for _ in 0..100 {
        if eml.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bytes = std::fs::read(&eml).unwrap();
    assert!(bytes.ends_with(&delivered));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outbox.join(format!("{id}.json"))).unwrap()).unwrap();
    assert_eq!(meta["sender"], "john@contoso.com");
    assert_eq!(meta["recipients"][0], EXT);
    assert_eq!(meta["tenant"], "contoso");
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_hop_starttls_with_our_client_certificate() {
    // Relay B is the next hop of relay A: it offers STARTTLS, asks for a
    // certificate, and attributes by it. A presents contoso's certificate, so
    // an NDR (which only a certificate-based connector can relay) passes B too.
    let b = Relay::start("").await;
    let pem = b.pki.path("contoso.pem").display().to_string();
    let key = b.pki.path("contoso.key").display().to_string();
    let a = Relay::start(&format!(
        "[delivery]\nnext_hop = \"{}\"\ntls_cert = {pem:?}\ntls_key = {key:?}\nretry_initial_secs = 1\n",
        b.addr
    ))
    .await;
    let mut c = a.session(UNKNOWN_IP, Some("contoso")).await;
    assert_eq!(c.cmd("MAIL FROM:<>").await.code, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{EXT}>")).await.code, 250);
    let (wire, delivered) = body("through two relays");
    assert_eq!(c.data(&wire).await.code, 250);
    let m = &b.sink.wait_for(1).await[0];
    let text = String::from_utf8_lossy(&m.data);
    // B's trace shows A's TLS session with a verified client certificate.
    assert!(text.starts_with("Received: from relay.example.test ([127.0.0.1])\r\n\tby relay.example.test (attrelay) with ESMTPS"), "{text}");
    assert!(
        text.contains("client certificate \"CN=mail.contoso.com\" verified)"),
        "{text}"
    );
    assert!(m.data.ends_with(&delivered), "{text}");
    assert!(a.sink.received.lock().unwrap().is_empty());
    a.handle.stop().await;
    b.handle.stop().await;
}

/// One recipient delivered, one refused for good (`550`), one deferred at
/// every attempt (`451`): the sender hears of the `550` at the end of the
/// first attempt, while the deferred recipient still waits, and only once
/// however many attempts follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_reported_while_another_recipient_is_still_deferred() {
    let relay = Relay::start("").await;
    let mut c = relay.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    for to in ["ok", "reject", "defer"] {
        let r = c.cmd(&format!("RCPT TO:<{to}@internet.example>")).await;
        assert_eq!(r.code, 250, "{to}: {r:?}");
    }
    assert_eq!(c.data(&body("three fates").0).await.code, 250);
    let got = relay
        .sink
        .wait_for_recipients(&["john@contoso.com".to_string()])
        .await;
    let dsns: Vec<String> = got
        .iter()
        .filter(|m| m.sender.is_empty())
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .collect();
    assert_eq!(dsns.len(), 1, "{dsns:?}");
    assert!(
        dsns[0].contains("Final-Recipient: rfc822; reject@internet.example\r\nAction: failed"),
        "{}",
        dsns[0]
    );
    assert!(!dsns[0].contains("defer@internet.example"), "{}", dsns[0]);
    let queued = relay.handle.context.spool.entries();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].pending, ["defer@internet.example"]);
    // Two more attempts (retries every 1 to 2 s): no second report.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let received = relay.sink.received.lock().unwrap().clone();
    let again = received.iter().filter(|m| m.sender.is_empty()).count();
    assert_eq!(again, 1, "one DSN for the 550, whatever the retries");
    relay.handle.stop().await;
}

/// A recipient still deferred after `delay_warning_secs`: the sender gets
/// one "delayed" report (RFC 3464 `Action: delayed`, a `4.x.x` status), and
/// one only, while the relay keeps trying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_still_deferred_after_the_delay_warning_time_is_reported_once() {
    let relay = Relay::start("[delivery]\ndelay_warning_secs = 1\n").await;
    let mut c = relay.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    for to in ["ok", "defer"] {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{to}@internet.example>"))
                .await
                .code,
            250
        );
    }
    assert_eq!(c.data(&body("slow").0).await.code, 250);
    let got = relay
        .sink
        .wait_for_recipients(&["john@contoso.com".to_string()])
        .await;
    let warning = got
        .iter()
        .find(|m| m.sender.is_empty())
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .expect("a delay warning");
    assert!(
        warning.contains("Subject: Delayed Mail (still being retried)"),
        "{warning}"
    );
    assert!(
        warning.contains(
            "Final-Recipient: rfc822; defer@internet.example\r\nAction: delayed\r\nStatus: 4.3.0"
        ),
        "{warning}"
    );
    assert!(
        !warning.contains("rfc822; ok@internet.example"),
        "{warning}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let received = relay.sink.received.lock().unwrap().clone();
    let warnings = received.iter().filter(|m| m.sender.is_empty()).count();
    assert_eq!(warnings, 1, "one warning per message");
    assert_eq!(
        relay.handle.context.spool.entries()[0].pending,
        ["defer@internet.example"]
    );
    relay.handle.stop().await;
}
