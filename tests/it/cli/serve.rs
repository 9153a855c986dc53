//! `attrelay serve` as an operator runs it: signals to the binary, and the
//! log it writes.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::Pki;
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_attrelay"))
        .arg("serve")
        .current_dir(dir.path())
        .env("RUST_LOG", "attrelay=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = out.next_line().await.unwrap().expect("attrelay exited");
        if let Some(rest) = line.strip_prefix("attrelay: listening on ") {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    let pid = child.id().unwrap().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status();
    assert!(hup.unwrap().success());
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let said = tokio::time::timeout(Duration::from_secs(30), async {
        let mut said = String::new();
        while let Ok(Some(line)) = err.next_line().await {
            said.push_str(&line);
            said.push('\n');
            if line.contains("reloaded") {
                return said;
            }
        }
        panic!("attrelay ended after SIGHUP: {said}");
    })
    .await
    .expect("a reload within 30 s of SIGHUP");
    assert!(
        said.contains("the embedded configuration has no file to re-read"),
        "{said}"
    );
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let (mut c, greeting) = Client::connect(addr).await;
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_attrelay"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "attrelay=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = out.next_line().await.unwrap().expect("attrelay exited");
        if let Some(rest) = line.strip_prefix("attrelay: listening on ") {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    let mut c = Client::session(addr, CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<someone@internet.example>").await.code, 250);
    let message = b"Message-ID: <followed.1@contoso.com>\r\nSubject: follow me\r\n\r\nx\r\n.\r\n";
    assert_eq!(c.data(message).await.code, 250);
    assert_eq!(c.cmd("QUIT").await.code, 221);
    sink.wait_for(1).await;
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let lines = tokio::time::timeout(Duration::from_secs(30), async {
        let mut lines = Vec::new();
        let (mut closed, mut delivered) = (false, false);
        while let Ok(Some(line)) = err.next_line().await {
            closed |= line.contains("disconnect");
            delivered |= line.contains("delivery attempt");
            lines.push(line);
            if closed && delivered {
                return lines;
            }
        }
        panic!("the log ended early: {lines:#?}");
    })
    .await
    .expect("the session's lines and the delivery's within 30 s");
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
