//! Attribution over the wire: every seed scenario of the reference as an
//! SMTP session from a loopback address (IP connectors matched for real)
//! with real TLS and rcgen-made client certificates, the compiled default
//! policy, and delivery to a recording next hop; the grace period and warn
//! mode; a failing policy that defers, never accepts.

use crate::support;

use support::smtp::Received;
use support::wire::{CONTOSO_IP, EXT, LITWARE_IP, PARTNER_IP, Relay, UNKNOWN_IP, body, header};

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
            "tie between tenants, the sender does not pick one",
            UNKNOWN_IP,
            Some("tie"),
            "john@adatum.com",
            vec![denied],
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
