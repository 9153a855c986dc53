//! The relay over the wire: SMTP over loopback TCP, real TLS handshakes with
//! rcgen-made certificates, the compiled default policy, the durable spool and
//! delivery to a recording next hop. Client IPs are distinct 127.0.0.0/8
//! addresses, so IP-based connectors are exercised for real.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use attrelay::relay::RelayHandle;
use support::Pki;
use support::relay::Setup;
use support::smtp::{Client, Received, Sink};
use support::wire::{CONTOSO_IP, LITWARE_IP, PARTNER_IP, Relay, UNKNOWN_IP};

/// A body that exercises dot-stuffing: as sent on the wire, and as it must arrive.
fn body(subject: &str) -> (Vec<u8>, Vec<u8>) {
    let original = format!(
        "Subject: {subject}\r\nFrom: someone@example.test\r\nX-Attributed-Tenant: forged-by-client\r\n\r\nHello.\r\n.leading dot\r\n..two dots\r\n.\r\n\r\nlast line\r\n"
    );
    let mut wire = Vec::new();
    for line in original.split_inclusive("\r\n") {
        if line.starts_with('.') {
            wire.push(b'.');
        }
        wire.extend_from_slice(line.as_bytes());
    }
    wire.extend_from_slice(b".\r\n");
    let delivered = original.replace("X-Attributed-Tenant: forged-by-client\r\n", "");
    (wire, delivered.into_bytes())
}

struct Case {
    name: &'static str,
    source: &'static str,
    cert: Option<&'static str>,
    from: &'static str,
    rcpts: Vec<(&'static str, u16, &'static str, Option<&'static str>)>,
}

fn case(
    name: &'static str,
    source: &'static str,
    cert: Option<&'static str>,
    from: &'static str,
    rcpts: Vec<(&'static str, u16, &'static str, Option<&'static str>)>,
) -> Case {
    Case {
        name,
        source,
        cert,
        from,
        rcpts,
    }
}

const EXT: &str = "someone@internet.example";

fn seed_cases() -> Vec<Case> {
    let ok = |t| (EXT, 250, "2.1.5", Some(t));
    let denied = (EXT, 550, "5.7.64", None);
    vec![
        case(
            "NDR through the certificate-based connector",
            UNKNOWN_IP,
            Some("contoso"),
            "",
            vec![ok("contoso")],
        ),
        case(
            "sending as an unowned domain with the certificate",
            UNKNOWN_IP,
            Some("contoso"),
            "john@fabrikam-other.example",
            vec![ok("contoso")],
        ),
        case(
            "forwarding with the certificate",
            CONTOSO_IP,
            Some("contoso"),
            "john@fabrikam.com",
            vec![("kate@tailspintoys.example", 250, "2.1.5", Some("contoso"))],
        ),
        case(
            "NDR by IP only is ATTR36",
            CONTOSO_IP,
            None,
            "",
            vec![(EXT, 550, "5.7.64", None)],
        ),
        case(
            "unowned sender domain by IP only is ATTR36",
            CONTOSO_IP,
            None,
            "john@fabrikam-other.example",
            vec![(EXT, 550, "5.7.64", None)],
        ),
        case(
            "originating by IP",
            CONTOSO_IP,
            None,
            "john@contoso.com",
            vec![ok("contoso")],
        ),
        case(
            "certificate renewed under another name",
            UNKNOWN_IP,
            Some("renewed"),
            "john@contoso.com",
            vec![denied],
        ),
        case(
            "on-premises IP changed",
            UNKNOWN_IP,
            None,
            "john@contoso.com",
            vec![denied],
        ),
        case(
            "host-name connector, accepted sender",
            UNKNOWN_IP,
            Some("fabrikam-host"),
            "john@fabrikam.com",
            vec![ok("fabrikam")],
        ),
        case(
            "host-name connector, NDR",
            UNKNOWN_IP,
            Some("fabrikam-host"),
            "",
            vec![denied],
        ),
        case(
            "wildcard certificate",
            UNKNOWN_IP,
            Some("wildcard"),
            "",
            vec![ok("contoso")],
        ),
        case(
            "multi-SAN certificate",
            UNKNOWN_IP,
            Some("multisan"),
            "",
            vec![ok("contoso")],
        ),
        case(
            "self-signed certificate",
            UNKNOWN_IP,
            Some("selfsigned"),
            "",
            vec![denied],
        ),
        case(
            "expired certificate",
            UNKNOWN_IP,
            Some("expired"),
            "",
            vec![denied],
        ),
        case(
            "certificate sent without its intermediate",
            UNKNOWN_IP,
            Some("contoso-leaf-only"),
            "",
            vec![denied],
        ),
        case(
            "certificate from an untrusted CA",
            UNKNOWN_IP,
            Some("foreign"),
            "",
            vec![denied],
        ),
        case(
            "tie between tenants, NDR",
            UNKNOWN_IP,
            Some("tie"),
            "",
            vec![denied],
        ),
        case(
            "tie between tenants, sender decides",
            UNKNOWN_IP,
            Some("tie"),
            "john@adatum.com",
            vec![ok("adatum")],
        ),
        case(
            "incoming mail",
            UNKNOWN_IP,
            None,
            "someone@internet.example",
            vec![("kate@contoso.com", 250, "2.1.5", Some("contoso")), denied],
        ),
        case(
            "partner connector refuses",
            UNKNOWN_IP,
            None,
            "john@partner.example",
            vec![("kate@tailspintoys.com", 550, "5.7.51", None)],
        ),
        case(
            "partner connector admits",
            PARTNER_IP,
            None,
            "john@partner.example",
            vec![("kate@tailspintoys.com", 250, "2.1.5", Some("tailspintoys"))],
        ),
        case(
            "mixed recipients",
            CONTOSO_IP,
            None,
            "john@fabrikam-other.example",
            vec![
                ("kate@contoso.com", 250, "2.1.5", Some("contoso")),
                ("bob@tailspintoys.com", 250, "2.1.5", Some("tailspintoys")),
                (EXT, 550, "5.7.64", None),
            ],
        ),
        case(
            "disabled connector",
            LITWARE_IP,
            None,
            "john@litware.com",
            vec![denied],
        ),
    ]
}

/// A message the next hop must receive: subject, (recipient, tenant) pairs, body as delivered.
type Expected = (String, Vec<(String, Option<&'static str>)>, Vec<u8>);

fn header<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    let head = message.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .filter_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_seed_scenario_over_smtp() {
    let relay = Relay::start("").await;
    let mut expected_messages: Vec<Expected> = Vec::new();
    for (i, c) in seed_cases().iter().enumerate() {
        let mut client = relay.session(c.source, c.cert).await;
        let mail = client.cmd(&format!("MAIL FROM:<{}>", c.from)).await;
        assert!(mail.is(250, "2.1.0"), "{}: MAIL {mail:?}", c.name);
        let mut accepted = Vec::new();
        for (rcpt, code, enhanced, tenant) in &c.rcpts {
            let r = client.cmd(&format!("RCPT TO:<{rcpt}>")).await;
            assert!(
                r.is(*code, enhanced),
                "{}: RCPT {rcpt}: expected {code} {enhanced}, got {:?}",
                c.name,
                r.lines
            );
            if *code == 250 {
                accepted.push((rcpt.to_string(), *tenant));
            }
        }
        if !accepted.is_empty() {
            let subject = format!("case {i}: {}", c.name);
            let (wire, delivered) = body(&subject);
            let r = client.data(&wire).await;
            assert!(r.is(250, "2.0.0"), "{}: DATA {r:?}", c.name);
            assert!(r.text.starts_with("Ok: queued as "), "{r:?}");
            expected_messages.push((subject, accepted, delivered));
        } else {
            let r = client.cmd("DATA").await;
            assert!(
                r.is(554, "5.5.1"),
                "{}: DATA without recipients {r:?}",
                c.name
            );
        }
        assert_eq!(client.cmd("QUIT").await.code, 221);
    }

    // What arrives at the next hop: one message per attributed tenant.
    let total: usize = expected_messages
        .iter()
        .map(|(_, rcpts, _)| {
            rcpts
                .iter()
                .map(|(_, t)| *t)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        })
        .sum();
    let received = relay.sink.wait_for(total).await;
    assert_eq!(received.len(), total);
    for (subject, rcpts, delivered) in &expected_messages {
        for (rcpt, tenant) in rcpts {
            let m: &Received = received
                .iter()
                .find(|m| {
                    m.recipients.contains(rcpt)
                        && String::from_utf8_lossy(&m.data)
                            .contains(&format!("Subject: {subject}\r\n"))
                })
                .unwrap_or_else(|| panic!("{subject}: nothing for {rcpt} at the next hop"));
            let text = String::from_utf8_lossy(&m.data).to_string();
            assert_eq!(
                header(&text, "X-Attributed-Tenant"),
                vec![tenant.unwrap()],
                "{subject}: {text}"
            );
            assert!(
                text.starts_with("Received: from client.example.test"),
                "{subject}: {text}"
            );
            assert!(
                m.data.ends_with(delivered),
                "{subject}: body not byte for byte:\n{text}"
            );
        }
    }
    // The TLS facts are in the trace.
    let tls = received
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data).to_string())
        .find(|t| t.contains("case 0:"))
        .unwrap();
    assert!(tls.contains("with ESMTPS"), "{tls}");
    assert!(tls.contains("(version=TLSv1.3 cipher=TLS_"), "{tls}");
    assert!(
        tls.contains("client certificate \"CN=mail.contoso.com\" verified)"),
        "{tls}"
    );
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_defers_and_warn_mode_stamps_a_header() {
    let relay = Relay::start("[policy.settings]\nenforcement = \"2099-01-01T00:00:00Z\"\n").await;
    let mut c = relay.session(CONTOSO_IP, None).await;
    assert!(c.cmd("MAIL FROM:<>").await.is(250, "2.1.0"));
    let r = c.cmd(&format!("RCPT TO:<{EXT}>")).await;
    assert!(r.is(451, "4.4.4"), "{r:?}");
    assert_eq!(
        r.text,
        "Relay Access Denied, unrecognized sender domain. ATTR36"
    );
    relay.handle.stop().await;

    let relay = Relay::start("[policy.settings]\nenforcement = \"2099-01-01T00:00:00Z\"\nbefore_enforcement = \"warn\"\n").await;
    let mut c = relay.session(CONTOSO_IP, None).await;
    assert!(c.cmd("MAIL FROM:<>").await.is(250, "2.1.0"));
    assert!(c.cmd(&format!("RCPT TO:<{EXT}>")).await.is(250, "2.1.5"));
    let (wire, _) = body("warned");
    assert_eq!(c.data(&wire).await.code, 250);
    let m = &relay.sink.wait_for(1).await[0];
    let text = String::from_utf8_lossy(&m.data);
    assert_eq!(header(&text, "X-Attributed-Tenant"), vec!["contoso"]);
    let warning = header(&text, "X-Attrelay-Warning");
    assert_eq!(warning.len(), 1, "{text}");
    assert!(
        warning[0].starts_with("ATTR36 unrecognized sender domain <> for tenant contoso"),
        "{text}"
    );
    relay.handle.stop().await;
}

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
async fn protocol_errors_get_proper_replies() {
    let relay = Relay::start("").await;
    let (mut c, _) = Client::connect_from(relay.addr, CONTOSO_IP.parse().unwrap()).await;
    assert!(
        c.cmd("MAIL FROM:<a@contoso.com>").await.is(503, "5.5.1"),
        "MAIL before EHLO"
    );
    assert!(c.cmd("BOGUS").await.is(500, "5.5.1"));
    assert!(
        c.cmd(&format!("NOOP {}", "x".repeat(5000)))
            .await
            .is(500, "5.5.2"),
        "over-long line"
    );
    let ehlo = c.cmd("EHLO client.example.test").await;
    for cap in [
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    ] {
        assert!(
            ehlo.lines.iter().any(|l| l.ends_with(cap)),
            "{cap} missing: {ehlo:?}"
        );
    }
    assert!(
        c.cmd("RCPT TO:<x@y.example>").await.is(503, "5.5.1"),
        "RCPT before MAIL"
    );
    assert!(c.cmd("DATA").await.is(503, "5.5.1"), "DATA before MAIL");
    assert!(
        c.cmd("MAIL FROM:<a@contoso.com> SIZE=999999999")
            .await
            .is(552, "5.3.4")
    );
    assert!(c.cmd("MAIL FROM:<not an address>").await.code >= 500);
    assert_eq!(c.cmd("VRFY kate").await.code, 252);
    assert_eq!(c.cmd("HELP").await.code, 214);
    assert!(c.cmd("NOOP").await.is(250, "2.0.0"));
    assert!(c.cmd("MAIL FROM:<john@contoso.com>").await.is(250, "2.1.0"));
    assert!(
        c.cmd("MAIL FROM:<john@contoso.com>").await.is(503, "5.5.1"),
        "nested MAIL"
    );
    assert!(c.cmd("RSET").await.is(250, "2.0.0"));
    assert!(c.cmd("QUIT").await.is(221, "2.0.0"));

    // Too many errors end the session with 421.
    let (mut c, _) = Client::connect(relay.addr).await;
    let mut last = c.cmd("BOGUS").await;
    for _ in 0..20 {
        if last.code == 421 || last.code == 0 {
            break;
        }
        last = c.read_or_cmd("BOGUS").await;
    }
    assert!(
        last.lines.iter().any(|l| l.starts_with("421 4.7.0")),
        "{last:?}"
    );
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_size_recipients_idle_and_pipelining() {
    let relay = Relay::start("").await;
    // Too many recipients: the 101st gets 452.
    let mut c = relay.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    for i in 0..100 {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<r{i}@internet.example>"))
                .await
                .code,
            250
        );
    }
    assert!(
        c.cmd("RCPT TO:<r100@internet.example>")
            .await
            .is(452, "4.5.3")
    );
    assert!(c.cmd("RSET").await.is(250, "2.0.0"));

    // A message over SIZE: 552 after the data, nothing queued.
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{EXT}>")).await.code, 250);
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    let line = format!("{}\r\n", "x".repeat(998));
    while big.len() < 26 * 1024 * 1024 {
        big.extend_from_slice(line.as_bytes());
    }
    big.extend_from_slice(b".\r\n");
    assert!(c.data(&big).await.is(552, "5.3.4"));
    // The session goes on.
    assert!(c.cmd("NOOP").await.is(250, "2.0.0"));

    // Pipelining: every command in one write, every reply in order.
    let mut p = relay.session(CONTOSO_IP, None).await;
    p.send_raw(format!("MAIL FROM:<john@contoso.com>\r\nRCPT TO:<{EXT}>\r\nRCPT TO:<other@internet.example>\r\nDATA\r\n").as_bytes()).await;
    assert_eq!(p.read().await.code, 250);
    assert_eq!(p.read().await.code, 250);
    assert_eq!(p.read().await.code, 250);
    assert_eq!(p.read().await.code, 354);
    p.send_raw(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        .await;
    assert_eq!(p.read().await.code, 250);
    assert_eq!(p.read().await.code, 221);

    // Idle clients are dropped with 421 (idle_timeout_secs = 5 in this config).
    let (mut idle, _) = Client::connect(relay.addr).await;
    let r = idle.read().await;
    assert!(r.is(421, "4.4.2"), "{r:?}");
    relay.handle.stop().await;
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limit_and_graceful_shutdown() {
    let relay = Relay::start("").await;
    // Shutdown: a session in flight gets 421 4.3.2 to its next command.
    let mut c = relay.session(CONTOSO_IP, None).await;
    relay.handle.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = c.read_or_cmd("NOOP").await;
    assert!(r.is(421, "4.3.2"), "{r:?}");
    // And nothing listens any more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tokio::net::TcpStream::connect(relay.addr).await.is_err());
    relay.handle.stop().await;

    // The session limit: one more connection gets 421 4.3.2 at once.
    let relay = Relay::start_with("max_sessions = 2", "").await;
    let _a = relay.session(CONTOSO_IP, None).await;
    let _b = relay.session(CONTOSO_IP, None).await;
    let (_, greeting) = Client::connect(relay.addr).await;
    assert!(greeting.is(421, "4.3.2"), "{greeting:?}");
    drop(_a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, greeting) = Client::connect(relay.addr).await;
    assert_eq!(greeting.code, 220, "a slot was freed");
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_policy_defers_never_accepts() {
    let rogue = support::build_component("rogue-policy");
    let relay = Relay::start(&format!(
        "[policy]\ncomponent = {:?}\ntimeout_ms = 100\n[policy.settings]\nbehavior = \"loop\"\nstage = \"rcpt-to\"\nonly = \"trigger\"\n",
        rogue.display().to_string()
    ))
    .await;
    let mut c = relay.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    // A policy that loops on some live input (it passed the load-time checks).
    let r = c.cmd("RCPT TO:<trigger@internet.example>").await;
    assert!(r.is(451, "4.3.5"), "{r:?}");
    // The session's instance is discarded: later recipients fail closed too.
    assert!(c.cmd("RCPT TO:<kate@contoso.com>").await.is(451, "4.3.5"));
    assert!(
        c.cmd("DATA").await.is(554, "5.5.1"),
        "nothing accepted, nothing to send"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_talkers_per_ip_limits_and_session_deadline() {
    let relay = Relay::start_with(
        "pregreet_delay_ms = 300\nmax_sessions_per_ip = 2\nmax_session_secs = 2",
        "",
    )
    .await;
    // A client that pipelines before the greeting is refused with 554.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        tcp.write_all(b"EHLO spambot.example\r\nMAIL FROM:<a@b.example>\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 512];
        let n = tcp.read(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("554 5.5.0 "), "{text}");
        assert!(
            !text.contains("220"),
            "no greeting for an early talker: {text}"
        );
    }
    // Two sessions per client IP; a third from the same IP gets 421 4.7.0, another IP is served.
    let (_a, ga) = Client::connect_from(relay.addr, "127.0.5.1".parse().unwrap()).await;
    let (_b, gb) = Client::connect_from(relay.addr, "127.0.5.1".parse().unwrap()).await;
    assert_eq!((ga.code, gb.code), (220, 220));
    let (_, gc) = Client::connect_from(relay.addr, "127.0.5.1".parse().unwrap()).await;
    assert!(gc.is(421, "4.7.0"), "{gc:?}");
    let (_d, gd) = Client::connect_from(relay.addr, "127.0.5.2".parse().unwrap()).await;
    assert_eq!(gd.code, 220);
    // A session that never ends by itself is ended at max_session_secs.
    let (mut slow, _) = Client::connect_from(relay.addr, "127.0.5.3".parse().unwrap()).await;
    let started = std::time::Instant::now();
    let last = loop {
        let r = slow.read_or_cmd("NOOP").await;
        if r.code != 250 {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(last.is(421, "4.4.2"), "{last:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_trickled_a_byte_at_a_time_meets_the_command_deadline() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let relay = Relay::start_with("idle_timeout_secs = 2", "").await;
    let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let (r, mut w) = tcp.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("220 "), "{line}");
    w.write_all(b"EHLO client.example.test\r\n").await.unwrap();
    loop {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        if line.starts_with("250 ") {
            break;
        }
    }
    // One byte every 300 ms: each read comes well within the idle timeout,
    // but the command as a whole does not.
    let started = std::time::Instant::now();
    let trickle = tokio::spawn(async move {
        for b in b"MAIL FROM:<john@contoso.com>\r\n" {
            if w.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    line.clear();
    tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    trickle.abort();
    assert!(line.starts_with("421 4.4.2 "), "{line}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "the command deadline is the idle timeout: {took:?}"
    );
    relay.handle.stop().await;
}

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
