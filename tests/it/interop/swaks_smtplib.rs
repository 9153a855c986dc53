//! Interoperability with SMTP clients we did not write: swaks and Python's
//! smtplib, both doing STARTTLS with a client certificate. `.ci/run`
//! installs swaks; a missing client fails the test rather than skipping it.

use crate::support;

use std::process::Command;

use support::Pki;
use support::relay::Setup;
use support::smtp::Sink;

/// A relay where only the certificate can attribute mail from 127.0.2.77.
async fn relay(pki: &Pki, sink: &Sink) -> attrelay::relay::RelayHandle {
    Setup::for_pki(pki)
        .set("delivery.next_hop", sink.addr.to_string())
        .launch()
        .await
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (is it installed? .ci/run installs it)")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_relays_an_ndr_with_a_client_certificate() {
    let pki = Pki::new();
    let sink = Sink::start().await;
    let handle = relay(&pki, &sink).await;
    let server = handle.addrs[0].to_string();
    let swaks = |cert: Option<&str>| {
        let mut c = Command::new("swaks");
        c.args([
            "--server",
            &server,
            "--local-interface",
            "127.0.2.77",
            "--ehlo",
            "onprem.contoso.com",
        ])
        .args(["--from", "<>", "--to", "someone@internet.example", "--tls"])
        .args([
            "--header",
            "Subject: bounce via swaks",
            "--body",
            "A non-delivery report.\n.dotted line\n",
        ]);
        if let Some(name) = cert {
            c.arg("--tls-cert").arg(pki.path(&format!("{name}.pem")));
            c.arg("--tls-key").arg(pki.path(&format!("{name}.key")));
        }
        tokio::task::spawn_blocking(move || run(&mut c))
    };
    // swaks sends only the leaf, so it uses a certificate issued by the trusted root itself.
    let (code, out) = swaks(Some("contoso-direct")).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("MAIL FROM:<>"), "{out}");
    assert!(out.contains("250 2.1.5"), "{out}");
    let received = sink.wait_for(1).await;
    let text = String::from_utf8_lossy(&received[0].data);
    assert!(text.contains("X-Attributed-Tenant: contoso\r\n"), "{text}");
    assert!(
        text.contains("client certificate \"CN=mail.contoso.com\" verified"),
        "{text}"
    );
    assert!(
        text.contains("\r\n.dotted line\r\n"),
        "dot-stuffing round trip: {text}"
    );
    assert_eq!(received[0].sender, "");

    // A leaf from the intermediate, sent without the intermediate, does not
    // verify (the reference: the client must send its intermediates); nor
    // does no certificate at all. The same NDR is refused both ways.
    for cert in [Some("contoso"), None] {
        let (code, out) = swaks(cert).await.unwrap();
        assert_ne!(code, 0, "{out}");
        assert!(
            out.contains("550 5.7.64 TenantAttribution; Relay Access Denied"),
            "{cert:?}: {out}"
        );
    }
    assert_eq!(sink.received.lock().unwrap().len(), 1);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_starttls_with_a_client_certificate() {
    let pki = Pki::new();
    let sink = Sink::start().await;
    let handle = relay(&pki, &sink).await;
    let addr = handle.addrs[0];
    let script = r#"
import smtplib, ssl, sys
host, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.load_cert_chain(cert, key)
s = smtplib.SMTP(host, port, source_address=("127.0.2.77", 0), timeout=30)
s.ehlo("onprem.contoso.com")
s.starttls(context=ctx)
s.ehlo("onprem.contoso.com")
refused = s.sendmail("kate@fabrikam-other.example", ["someone@internet.example"],
                     "Subject: via smtplib\r\n\r\nForwarded by a rule.\r\n")
print("refused:", refused)
s.quit()
# Without a certificate: the same forwarded mail is refused per recipient.
s = smtplib.SMTP(host, port, source_address=("127.0.2.77", 0), timeout=30)
s.ehlo("onprem.contoso.com")
try:
    s.sendmail("kate@fabrikam-other.example", ["someone@internet.example"], "Subject: x\r\n\r\nx\r\n")
    print("unexpectedly accepted")
except smtplib.SMTPRecipientsRefused as e:
    code, msg = e.recipients["someone@internet.example"]
    print("refused without certificate:", code, msg.decode())
s.quit()
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string());
    cmd.arg(pki.path("contoso.pem"))
        .arg(pki.path("contoso.key"));
    let (code, out) = tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("refused: {}"), "{out}");
    assert!(
        out.contains(
            "refused without certificate: 550 5.7.64 TenantAttribution; Relay Access Denied"
        ),
        "{out}"
    );
    let received = sink.wait_for(1).await;
    assert_eq!(received[0].sender, "kate@fabrikam-other.example");
    let text = String::from_utf8_lossy(&received[0].data);
    assert!(text.contains("X-Attributed-Tenant: contoso\r\n"), "{text}");
    assert!(
        text.ends_with("Subject: via smtplib\r\n\r\nForwarded by a rule.\r\n"),
        "{text}"
    );
    handle.stop().await;
}
