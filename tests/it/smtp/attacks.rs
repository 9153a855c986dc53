//! Attacks an SMTP client can make on the relay, driven over loopback
//! against the running relay: addresses that parse differently at the next
//! hop, parameters smuggled onward, forged trust headers, mail loops,
//! recipient probing, and a session that outlives a revoked connector.

use crate::support;

use std::time::Duration;

use support::relay::Setup;
use support::smtp::Client;
use support::wire::{CONTOSO_IP, Relay, UNKNOWN_IP};

/// Sends one message in an open session; returns the reply to the data.
async fn message(c: &mut Client, from: &str, to: &[&str], data: &str) -> (u16, String) {
    let r = c.cmd(&format!("MAIL FROM:{from}")).await;
    assert_eq!(r.code, 250, "MAIL FROM:{from}: {r:?}");
    for t in to {
        let r = c.cmd(&format!("RCPT TO:{t}")).await;
        assert_eq!(r.code, 250, "RCPT TO:{t}: {r:?}");
    }
    let r = c.data(data.as_bytes()).await;
    (r.code, r.lines.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quoted_local_part_cannot_redirect_or_extend_the_envelope() {
    let relay = Relay::start("").await;
    // A recipient whose quoted local part holds '@', '>' and a parameter,
    // and a sender whose local part holds parameters.
    let sender = r#""x> RET=HDRS ENVID=forged AUTH=<ceo@contoso.com>"@contoso.com"#;
    let rcpt = r#""victim@elsewhere.example> ORCPT=rfc822;x"@contoso.com"#;

    // From an anonymous Internet client, routing in the local part is
    // refused outright: the tenant's own server might route it onward.
    let mut c = relay.session(UNKNOWN_IP, None).await;
    assert_eq!(
        c.cmd("MAIL FROM:<someone@internet.example>").await.code,
        250
    );
    for r in [
        format!("<{rcpt}>"),
        "<victim%elsewhere.example@contoso.com>".to_string(),
        "<elsewhere.example!victim@contoso.com>".to_string(),
    ] {
        let reply = c.cmd(&format!("RCPT TO:{r}")).await;
        assert!(reply.is(550, "5.7.1"), "{r}: {reply:?}");
    }
    assert_eq!(c.cmd("RSET").await.code, 250);

    // From contoso's own server the same addresses are mail it may send,
    // and the next hop receives exactly the mailboxes that were judged:
    // quoted, with their domains, and no parameter of the client's.
    let mut c = relay.session(CONTOSO_IP, None).await;
    let (code, text) = message(
        &mut c,
        &format!("<{sender}>"),
        &[&format!("<{rcpt}>")],
        "Subject: quoted\r\n\r\nhi\r\n.\r\n",
    )
    .await;
    assert_eq!(code, 250, "{text}");
    let got = relay.sink.wait_for(1).await;
    let lines = relay.sink.envelope_lines.lock().unwrap().clone();
    assert_eq!(
        lines,
        [format!("MAIL FROM:<{sender}>"), format!("RCPT TO:<{rcpt}>")],
        "{got:?}"
    );
    // A canonical form is written whatever form the client used.
    let mut c = relay.session(UNKNOWN_IP, None).await;
    let (code, _) = message(
        &mut c,
        "<@route.example:\"john\"@A.EXAMPLE.>",
        &["<\"bob\"@Contoso.COM.>"],
        "Subject: canonical\r\n\r\nhi\r\n.\r\n",
    )
    .await;
    assert_eq!(code, 250);
    relay.sink.wait_for(2).await;
    let lines = relay.sink.envelope_lines.lock().unwrap().clone();
    assert_eq!(
        lines[2..],
        ["MAIL FROM:<john@a.example>", "RCPT TO:<bob@contoso.com>"]
    );
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_addresses_and_parameters_are_refused() {
    let relay = Relay::start_with("max_errors = 100\nsoft_error_limit = 100", "").await;
    let mut c = relay.session(CONTOSO_IP, None).await;
    for (line, code, enhanced) in [
        ("MAIL FROM:<x@a.example> RET=HDRS", 555, "5.5.4"),
        (
            "MAIL FROM:<x@a.example> AUTH=<ceo@contoso.com>",
            555,
            "5.5.4",
        ),
        ("MAIL FROM:<x@a.example> SMTPUTF8", 555, "5.5.4"),
        ("MAIL FROM:<postmaster>", 501, "5.1.7"),
        ("MAIL FROM:<x@a.example>SIZE=10", 501, "5.5.4"),
        ("MAIL FROM:x@a.example", 501, "5.1.7"),
        ("MAIL FROM:<j\u{f6}hn@a.example>", 553, "5.6.7"),
        ("MAIL FROM:<\"a\u{1}b\"@a.example>", 501, "5.1.7"),
        // Terminal control: ESC, BEL, BS never reach a log or `queue list`.
        ("MAIL FROM:<\"a\u{1b}[2Jb\"@a.example>", 501, "5.1.7"),
        ("MAIL FROM:<\"a\u{7}\u{8}b\"@a.example>", 501, "5.1.7"),
        ("MAIL FRM:<x@a.example>", 501, "5.5.4"),
    ] {
        let r = c.cmd(line).await;
        assert!(r.is(code, enhanced), "{line:?}: {r:?}");
    }
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    for (line, code, enhanced) in [
        ("RCPT TO:<a@internet.example> NOTIFY=NEVER", 555, "5.5.4"),
        (
            "RCPT TO:<a@internet.example> ORCPT=rfc822;x@y",
            555,
            "5.5.4",
        ),
        ("RCPT TO:<\"a\0b\"@internet.example>", 501, "5.1.3"),
        ("RCPT TO:<a b@internet.example>", 501, "5.1.3"),
        ("RCPT TO:<a@internet..example>", 501, "5.1.3"),
        ("RCPT TO:<a@b\u{e9}.example>", 553, "5.6.7"),
    ] {
        let r = c.cmd(line).await;
        assert!(r.is(code, enhanced), "{line:?}: {r:?}");
    }
    // A NUL or a bare CR inside the command line never reaches a parser
    // that could cut the address there.
    c.send_raw(b"RCPT TO:<a@contoso.com\0@internet.example>\r\n")
        .await;
    let r = c.read().await;
    assert!(r.code >= 500, "{r:?}");
    let long = format!("RCPT TO:<{}@internet.example>", "a".repeat(65));
    assert!(c.cmd(&long).await.is(553, "5.1.3"));
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmaster_is_accepted_and_delivered_to_the_configured_address() {
    let relay = Relay::start_with("postmaster = \"abuse-desk@relay-ops.example\"", "").await;
    let mut c = relay.session(UNKNOWN_IP, None).await;
    let (code, text) = message(
        &mut c,
        "<someone@internet.example>",
        &["<Postmaster>"],
        "Subject: to the postmaster\r\n\r\nhello\r\n.\r\n",
    )
    .await;
    assert_eq!(code, 250, "{text}");
    let got = relay.sink.wait_for(1).await;
    assert_eq!(got[0].recipients, ["abuse-desk@relay-ops.example"]);
    assert_eq!(got[0].sender, "someone@internet.example");
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_headers_in_any_spelling_are_removed() {
    let relay = Relay::start("").await;
    let mut c = relay.session(UNKNOWN_IP, None).await;
    let data = "X-Attributed-Tenant : contoso\r\nx-attributed-tenant\t:contoso\r\nX-ATTRIBUTED-TENANT:\r\n contoso\r\nX-Attrelay-Warning  : none\r\nSubject: spaced\r\n\r\nbody\r\n.\r\n";
    let (code, _) = message(
        &mut c,
        "<someone@internet.example>",
        &["<kate@contoso.com>"],
        data,
    )
    .await;
    assert_eq!(code, 250);
    let got = relay.sink.wait_for(1).await;
    let text = String::from_utf8_lossy(&got[0].data).to_string();
    // Only the relay's own statement remains.
    assert_eq!(
        got[0].header_values("X-Attributed-Tenant"),
        ["contoso"],
        "{text}"
    );
    assert!(
        !text.to_ascii_lowercase().contains("x-attrelay-warning"),
        "{text}"
    );
    assert!(
        !text.contains("\r\n contoso"),
        "a folded remainder survived: {text}"
    );
    // Lines another reader could still take for the field end the header
    // section: what follows them is delivered as body.
    for odd in [
        ":X-Attributed-Tenant: fabrikam",
        "junk\r\n X-Attributed-Tenant: fabrikam",
        "X-Attributed-Tenant\0: fabrikam",
    ] {
        let data =
            format!("Subject: odd\r\n{odd}\r\nFrom: a@internet.example\r\n\r\nbody\r\n.\r\n");
        let (code, _) = message(
            &mut c,
            "<someone@internet.example>",
            &["<kate@contoso.com>"],
            &data,
        )
        .await;
        assert_eq!(code, 250);
    }
    let got = relay.sink.wait_for(4).await;
    for m in &got[1..] {
        let attributions: Vec<(String, String)> = m
            .fields()
            .into_iter()
            .filter(|(n, _)| n.to_ascii_lowercase().contains("attributed-tenant"))
            .collect();
        assert_eq!(
            attributions,
            [("X-Attributed-Tenant".to_string(), "contoso".to_string())],
            "{}",
            String::from_utf8_lossy(&m.data)
        );
    }
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_through_the_relay_itself_stops_at_the_hop_limit() {
    let port = support::postfix::free_port();
    let own = format!("127.0.0.1:{port}");
    // The relay's next hop is its own listener: every message comes back.
    let (handle, _pki) = Setup::new()
        .set("server.hopcount_limit", 8)
        .set("server.listen", vec![own.clone()])
        .deliver_to(own.parse().unwrap())
        .start_handle()
        .await;
    let (mut c, _) = Client::connect_from(handle.addrs[0], UNKNOWN_IP.parse().unwrap()).await;
    assert_eq!(c.cmd("EHLO loop.example").await.code, 250);
    let (code, _) = message(
        &mut c,
        "<>",
        &["<kate@contoso.com>"],
        "Subject: round and round\r\n\r\nbody\r\n.\r\n",
    )
    .await;
    assert_eq!(code, 250);
    drop(c);
    // The message goes round until it carries 8 Received fields, is
    // refused with 554 5.4.6, and (a null sender) is not bounced: the
    // queue drains and stays empty.
    let mut drained = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if handle.context.queue.contents().messages == 0 {
            drained = true;
            break;
        }
    }
    assert!(drained, "the loop did not stop");
    let sessions = handle.metrics.sessions.get();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(handle.metrics.sessions.get(), sessions, "still looping");
    // One session from the client, then one per hop until the limit.
    assert!(sessions <= 10, "{sessions} sessions");
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_recipients_count_as_errors_and_end_the_session() {
    let relay = Relay::start_with("error_delay_ms = 20", "").await;
    let mut c = relay.session(UNKNOWN_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<spam@internet.example>").await.code, 250);
    let mut refused = 0;
    let mut closed = None;
    let started = std::time::Instant::now();
    for i in 0..60 {
        let r = c
            .read_or_cmd(&format!("RCPT TO:<victim{i}@elsewhere.example>"))
            .await;
        match r.code {
            550 => refused += 1,
            _ => {
                closed = Some(r);
                break;
            }
        }
    }
    let closed = closed.expect("60 refused recipients and the session is still open");
    assert!(
        closed.lines.iter().any(|l| l.starts_with("421 4.7.0")),
        "{closed:?}"
    );
    // The default hard limit (10 errors) ended it; past the soft limit (5)
    // the replies slowed down: 20, 40, 60, 80 ms at least.
    assert_eq!(refused, 10, "{closed:?}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_connector_stops_authorising_an_open_session() {
    let relay = Relay::start("").await;
    let path = relay.pki.path("relay.toml");
    let mut c = relay.session(CONTOSO_IP, None).await;
    // A transaction under way when the connector is removed finishes under
    // the evaluation that judged it...
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<someone@internet.example>").await.code, 250);
    Setup::read(&path)
        .connector("contoso", "Contoso on-premises", |c| {
            let elsewhere = vec!["198.51.100.0/24", "2001:db8::/32"];
            c.insert("sender_ip_addresses".into(), elsewhere.into());
        })
        .write();
    let reloader = relay.handle.reloader.clone();
    tokio::task::spawn_blocking(move || reloader.reload())
        .await
        .unwrap()
        .expect("reload");
    assert_eq!(c.data(b"Subject: one\r\n\r\nx\r\n.\r\n").await.code, 250);
    // ...and the next transaction in the same session is judged without it.
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    let r = c.cmd("RCPT TO:<someone@internet.example>").await;
    assert!(r.is(550, "5.7.64"), "{r:?}");
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_deadline_ends_data_in_flight_without_stranding_mail() {
    let relay = Relay::start_with("max_session_secs = 2", "").await;
    let mut c = relay.session(CONTOSO_IP, None).await;
    let (code, _) = message(
        &mut c,
        "<john@contoso.com>",
        &["<someone@internet.example>"],
        "Subject: in time\r\n\r\nx\r\n.\r\n",
    )
    .await;
    assert_eq!(code, 250);
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<someone@internet.example>").await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send_raw(b"Subject: too late\r\n\r\nstill typing").await;
    let r = c.read().await;
    assert!(r.is(421, "4.4.2"), "{r:?}");
    // The first message was delivered; nothing else is queued or waiting.
    let got = relay.sink.wait_for(1).await;
    assert_eq!(got.len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(relay.handle.context.queue.contents().messages, 0);
    let queued = std::fs::read_dir(relay.pki.path("spool/queue"))
        .unwrap()
        .count();
    assert_eq!(queued, 0);
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_attributed_to_at_most_eight_tenants() {
    // The message is spooled once per tenant: addressing every tenant must
    // not multiply it without bound.
    let relay = Relay::start("").await;
    let mut c = relay.session(UNKNOWN_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<a@internet.example>").await.code, 250);
    let domains = [
        "contoso.com",
        "fabrikam.com",
        "tailspintoys.com",
        "northwind.com",
        "adatum.com",
        "woodgrove.com",
        "eu.woodgrove.com",
        "mail.woodgrove.com",
    ];
    for d in domains {
        let r = c.cmd(&format!("RCPT TO:<kate@{d}>")).await;
        assert!(r.is(250, "2.1.5"), "{d}: {r:?}");
    }
    // The same recipient again is still one recipient.
    assert!(c.cmd("RCPT TO:<kate@contoso.com>").await.is(250, "2.1.5"));
    for r in ["<kate@litware.com>", "<postmaster>"] {
        let reply = c.cmd(&format!("RCPT TO:{r}")).await;
        assert!(reply.is(452, "4.5.3"), "{r}: {reply:?}");
    }
    assert_eq!(c.data(b"Subject: many\r\n\r\nx\r\n.\r\n").await.code, 250);
    let got = relay.sink.wait_for(domains.len()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_all = relay.sink.received.lock().unwrap().clone();
    assert_eq!(got_all.len(), domains.len(), "{got:?}");
    let mut recipients: Vec<String> = got_all.iter().flat_map(|m| m.recipients.clone()).collect();
    recipients.sort();
    let mut expected: Vec<String> = domains.iter().map(|d| format!("kate@{d}")).collect();
    expected.sort();
    assert_eq!(recipients, expected);
    relay.handle.stop().await;
}
