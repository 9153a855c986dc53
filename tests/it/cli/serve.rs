//! `attrelay serve` as an operator runs it: signals to the binary, and the
//! log it writes.

use crate::support::Pki;
use crate::support::binary::serve;
use crate::support::relay::Setup;
use crate::support::smtp::{Client, Sink};
use crate::support::wire::CONTOSO_IP;

/// The demo relay (`attrelay serve` with no `--config`) has no file to
/// re-read, but SIGHUP still reloads it — the embedded configuration,
/// rebuilt, which the log says — and never ends it, as the signal's default
/// action would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_on_the_demo_relay_reloads_and_keeps_it_running() {
    // The demo writes attrelay-data/ in its working folder.
    let dir = tempfile::tempdir().unwrap();
    let mut relay = serve(None, dir.path()).await;
    relay.signal("HUP");
    let said = relay.log_until(|l| l.contains("reloaded")).await.join("\n");
    assert!(
        said.contains("the embedded configuration has no file to re-read"),
        "{said}"
    );
    assert!(relay.running(), "still running");
    let (mut c, greeting) = Client::connect(relay.addr).await;
    assert_eq!(greeting.code, 220, "{greeting:?}");
    assert_eq!(c.cmd("QUIT").await.code, 221);
}

/// What an operator follows in the relay's log: a line when a session
/// opens and one when it closes, and every line of the session in between
/// — its decisions, the `queued` line with the Message-ID — naming the same
/// session; the delivery line names the queue id, the attempt and the
/// delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_and_its_message_can_be_followed_in_the_log() {
    let sink = Sink::start().await;
    let pki = Pki::new();
    let config = Setup::for_pki(&pki)
        .set("delivery.next_hop", sink.addr.to_string())
        .write();
    let relay = serve(Some(&config), &pki.path("")).await;
    let mut c = Client::session(relay.addr, CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<someone@internet.example>").await.code, 250);
    let message = b"Message-ID: <followed.1@contoso.com>\r\nSubject: follow me\r\n\r\nx\r\n.\r\n";
    assert_eq!(c.data(message).await.code, 250);
    assert_eq!(c.cmd("QUIT").await.code, 221);
    sink.wait_for(1).await;
    relay.log_until(|l| l.contains("disconnect")).await;
    let lines = relay.log_until(|l| l.contains("delivery attempt")).await;
    let find = |what: &str| {
        lines
            .iter()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line with {what:?} in {lines:#?}"))
            .clone()
    };
    let connect = find("connect client=");
    let id = connect
        .split("session{id=")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .unwrap_or_else(|| panic!("no session id: {connect}"))
        .to_string();
    assert!(id.starts_with(&format!("{CONTOSO_IP}:")), "{id}");
    for what in ["decision", "queued", "disconnect"] {
        let line = find(what);
        assert!(line.contains(&format!("session{{id={id}}}")), "{line}");
    }
    assert!(
        find("queued").contains("<followed.1@contoso.com>"),
        "{lines:#?}"
    );
    let disconnect = find("disconnect");
    assert!(disconnect.contains("messages=1"), "{disconnect}");
    let delivery = find("delivery attempt");
    assert!(delivery.contains("queue_id="), "{delivery}");
    assert!(
        delivery.contains("attempt=1") && delivery.contains("delay_secs="),
        "{delivery}"
    );
}

/// `serve` binds its listeners before it writes anything: a relay whose
/// port is taken leaves no spool, policy cache or decision log behind, and
/// says which address was busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_port_is_taken_creates_nothing() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let pki = Pki::new();
    let config = Setup::for_pki(&pki)
        .set(
            "server.listen",
            toml::Value::Array(vec![addr.to_string().into()]),
        )
        .set(
            "policy.decision_log",
            pki.path("decisions.jsonl").display().to_string(),
        )
        .write();
    let out = crate::support::attrelay(&["serve", "--config", &config.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let said = crate::support::stderr(&out);
    assert!(said.contains(&format!("cannot listen on {addr}")), "{said}");
    for left in ["spool", "policy-cache", "decisions.jsonl"] {
        assert!(!pki.path(left).exists(), "{left} was created: {said}");
    }
}
