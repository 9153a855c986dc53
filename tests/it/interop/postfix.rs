//! Interop with a real Postfix, in both of its roles here. A private Postfix
//! instance (its own configuration, queue and ports in a temporary directory)
//!
//! - as a gateway, delegates its relay decision to our policy service with
//!   `check_policy_service`, verifies client certificates itself, and relays
//!   what it accepts to a recording next hop; SMTP clients talk to it from
//!   distinct loopback addresses, so what reaches our policy is exactly what
//!   Postfix sends in production;
//! - as a tenant's on-premises server, relays through our SMTP server with
//!   STARTTLS and its client certificate, as a hybrid deployment does.
//!
//! Needs Postfix (`.ci/run` installs Debian's package) and root, as starting
//! a Postfix master does; without them the test fails and says so.

use crate::support;

use std::time::Duration;

use support::Pki;
use support::postfix::{ONE_AT_A_TIME, Postfix};
use support::relay::Setup;
use support::smtp::{Client, Reply, Sink};

/// main.cf lines for Postfix's SMTP server: STARTTLS with a certificate,
/// asking clients for theirs and verifying them against the test CA.
fn server_tls(pki: &Pki) -> String {
    format!(
        "smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\nsmtpd_tls_ask_ccert = yes\nsmtpd_tls_CAfile = {}",
        pki.path("selfsigned.pem").display(),
        pki.path("selfsigned.key").display(),
        pki.path("ca.pem").display()
    )
}

const CONTOSO_IP: &str = "127.0.1.10";
const UNKNOWN_IP: &str = "127.0.2.77";
const EXT: &str = "someone@internet.example";

/// An SMTP session with Postfix from `source`, with STARTTLS and a client
/// certificate when `cert` is given.
async fn session(pf: &Postfix, pki: &Pki, source: &str, cert: Option<&str>) -> Client {
    let cert = cert.map(|name| pki.cert(name));
    let cert = cert.as_ref().map(|(p, k)| (p.as_path(), k.as_path()));
    Client::session(pf.addr, source, cert).await
}

fn refused_by_attribution(r: &Reply) -> bool {
    r.is(550, "5.7.64")
        && r.lines
            .iter()
            .any(|l| l.contains("TenantAttribution; Relay Access Denied"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_delegates_relay_decisions_to_our_policy() {
    let _one = ONE_AT_A_TIME.lock().await;
    let pki = Pki::new();
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The relay runs only its policy service for Postfix here (its SMTP
    // listener is unused); contoso's on-premises range is moved to loopback.
    let relay = Setup::for_pki(&pki)
        .set("delivery.directory", "out")
        .set("policyd.listen", vec!["127.0.0.1:0"])
        .launch()
        .await;
    let pf = Postfix::start(
        dir.path(),
        sink.addr,
        &format!(
            "{}\nsmtpd_relay_restrictions = check_policy_service inet:{}, reject\nsmtpd_policy_service_timeout = 10s",
            server_tls(&pki),
            relay.policyd[0]
        ),
    );

    // Contoso's on-premises server by IP: Postfix relays the message.
    let mut c = session(&pf, &pki, CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    let r = c.cmd(&format!("RCPT TO:<{EXT}>")).await;
    assert_eq!(r.code, 250, "{r:?}\n{}", pf.log());
    let r = c
        .data(b"Subject: through Postfix\r\n\r\nattributed by attrelay's policy\r\n.\r\n")
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT").await;

    // An unknown address: refused with our code and text.
    let mut c = session(&pf, &pki, UNKNOWN_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    let r = c.cmd(&format!("RCPT TO:<{EXT}>")).await;
    assert!(refused_by_attribution(&r), "{r:?}\n{}", pf.log());
    println!(
        "Postfix to a client our policy refuses: {}",
        r.lines.join(" / ")
    );
    c.cmd("QUIT").await;

    // An NDR from the unknown address over TLS with contoso's certificate,
    // verified by Postfix against our CA: attributed by the certificate.
    let mut c = session(&pf, &pki, UNKNOWN_IP, Some("contoso")).await;
    assert_eq!(c.cmd("MAIL FROM:<>").await.code, 250);
    let r = c.cmd(&format!("RCPT TO:<{EXT}>")).await;
    assert_eq!(r.code, 250, "{r:?}\n{}", pf.log());
    let r = c
        .data(b"Subject: Undeliverable\r\n\r\nan NDR relayed by certificate\r\n.\r\n")
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT").await;

    // The same name in a self-signed certificate: Postfix does not verify
    // it, so it authenticates nothing and the NDR is refused.
    let mut c = session(&pf, &pki, UNKNOWN_IP, Some("selfsigned")).await;
    assert_eq!(c.cmd("MAIL FROM:<>").await.code, 250);
    let r = c.cmd(&format!("RCPT TO:<{EXT}>")).await;
    assert!(refused_by_attribution(&r), "{r:?}\n{}", pf.log());
    c.cmd("QUIT").await;

    // Postfix relayed exactly the two accepted messages to the next hop.
    let got = tokio::time::timeout(Duration::from_secs(60), sink.wait_for(2))
        .await
        .unwrap_or_else(|_| panic!("Postfix did not relay both messages:\n{}", pf.log()));
    let senders: Vec<&str> = got.iter().map(|m| m.sender.as_str()).collect();
    assert!(senders.contains(&"john@contoso.com"), "{senders:?}");
    assert!(
        senders.contains(&""),
        "the NDR keeps its null sender: {senders:?}"
    );
    assert!(got.iter().all(|m| m.recipients == vec![EXT.to_string()]));

    // Our side saw Postfix's requests: two recipients per verdict kind.
    let text = relay.metrics.render();
    assert!(
        relay.metrics.policyd_requests.get() >= 4,
        "requests answered: {}\n{text}",
        relay.metrics.policyd_requests.get()
    );
    assert_eq!(
        relay.metrics.policyd_errors.get(),
        0,
        "Postfix's requests all parse"
    );

    // With the policy service gone, Postfix fails closed: a temporary 451.
    relay.stop().await;
    let mut c = session(&pf, &pki, CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    let r = c.cmd(&format!("RCPT TO:<{EXT}>")).await;
    assert!(r.is(451, "4.3.5"), "{r:?}\n{}", pf.log());
    c.cmd("QUIT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_postfix_relays_through_us_with_its_client_certificate() {
    let _one = ONE_AT_A_TIME.lock().await;
    let pki = Pki::new();
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Our relay, trusting the test CA for client certificates; Postfix sends
    // from an address no connector knows, so only its certificate can
    // attribute it.
    let relay = Setup::for_pki(&pki)
        .set("delivery.next_hop", sink.addr.to_string())
        .set("delivery.retry_initial_secs", 1)
        .launch()
        .await;
    let pf = Postfix::start(
        dir.path(),
        relay.addrs[0],
        &format!(
            "{}\nmynetworks = 127.0.0.0/8\nsmtpd_relay_restrictions = permit_mynetworks, reject\nsmtp_bind_address = {UNKNOWN_IP}\nsmtp_tls_security_level = encrypt\nsmtp_tls_cert_file = {}\nsmtp_tls_key_file = {}\nsmtp_tls_loglevel = 1",
            server_tls(&pki),
            pki.path("contoso.pem").display(),
            pki.path("contoso.key").display(),
        ),
    );

    // A non-delivery report from the tenant's Postfix: the null sender is
    // relayed only through a certificate-based connector.
    let mut c = session(&pf, &pki, "127.0.0.1", None).await;
    assert_eq!(c.cmd("MAIL FROM:<>").await.code, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{EXT}>")).await.code, 250);
    let r = c
        .data(b"Subject: Undeliverable: hello\r\n\r\nyour message could not be delivered\r\n.\r\n")
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT").await;

    let got = tokio::time::timeout(Duration::from_secs(60), sink.wait_for(1))
        .await
        .unwrap_or_else(|_| panic!("the NDR did not come through attrelay:\n{}", pf.log()));
    let m = &got[0];
    assert_eq!(m.sender, "");
    assert_eq!(m.recipients, vec![EXT.to_string()]);
    let text = String::from_utf8_lossy(&m.data);
    assert!(
        text.contains("\r\nX-Attributed-Tenant: contoso\r\n"),
        "attributed to contoso by its certificate:\n{text}"
    );
    // Our trace header records Postfix's TLS session and verified certificate.
    let received = text.lines().next().unwrap_or_default().to_string();
    assert!(
        received.starts_with(&format!("Received: from postfix.test ([{UNKNOWN_IP}])")),
        "{text}"
    );
    assert!(text.contains("with ESMTPS"), "{text}");
    assert!(
        text.contains("mail.contoso.com") && text.contains("\" verified)"),
        "{text}"
    );
    assert!(
        pf.log().contains(&format!(
            "relay=127.0.0.1[127.0.0.1]:{}",
            relay.addrs[0].port()
        )),
        "Postfix logged the delivery through attrelay:\n{}",
        pf.log()
    );
    relay.stop().await;
}
