//! `attrelay queue` as an operator uses it on a relay whose next hop
//! defers: list with filters, show, hold, release, flush, delete and
//! bounce, through the running relay (its admin endpoint, with its token)
//! and on the spool of a stopped relay; the admin endpoint's `/queue/ID`
//! and `/status` follow each action at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::support::binary::{Served, serve};
use crate::support::postfix::free_port;
use crate::support::relay::Setup;
use crate::support::smtp::{Client, Sink};
use crate::support::wire::CONTOSO_IP;
use crate::support::{Pki, stderr, stdout};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// Runs `attrelay queue ARGS --config CONFIG` off the runtime's threads.
async fn queue(config: &Path, args: &[&str]) -> Output {
    let mut all: Vec<String> = vec!["queue".into()];
    all.extend(args.iter().map(|s| s.to_string()));
    all.extend(["--config".into(), config.display().to_string()]);
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        crate::support::attrelay(&args)
    })
    .await
    .unwrap()
}

/// `GET`/`POST`/`DELETE` on the admin endpoint with the token.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    crate::support::http::request(addr, method, path, Some(TOKEN)).await
}

/// A relay delivering to `next_hop`, its admin endpoint on a fixed free
/// port with a token (so that `attrelay queue` can reach it from the
/// configuration alone).
fn setup(pki: &Pki, next_hop: SocketAddr) -> (PathBuf, SocketAddr) {
    std::fs::write(pki.path("admin.token"), format!("{TOKEN}\n")).unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = Setup::for_pki(pki)
        .set("delivery.next_hop", next_hop.to_string())
        .set("admin.listen", admin.to_string())
        .set(
            "admin.token_file",
            pki.path("admin.token").display().to_string(),
        )
        .write();
    (config, admin)
}

/// Sends one message from `sender` to `rcpt` from contoso's address.
async fn send(relay: &Served, sender: &str, rcpt: &str, subject: &str) {
    let mut c = Client::session(relay.addr, CONTOSO_IP, None).await;
    assert_eq!(c.cmd(&format!("MAIL FROM:<{sender}>")).await.code, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")).await.code, 250);
    let message =
        format!("Subject: {subject}\r\nMessage-ID: <{subject}@contoso.com>\r\n\r\nbody\r\n.\r\n");
    assert_eq!(c.data(message.as_bytes()).await.code, 250);
    assert_eq!(c.cmd("QUIT").await.code, 221);
}

/// The queue as `queue list --json ARGS` gives it, once `n` messages have
/// had an attempt.
async fn listed(config: &Path, args: &[&str]) -> Vec<attrelay::spool::QueueEntry> {
    let mut all = vec!["list", "--json"];
    all.extend(args);
    let out = queue(config, &all).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

async fn deferred_queue(config: &Path, n: usize) -> Vec<attrelay::spool::QueueEntry> {
    for _ in 0..200 {
        let q = listed(config, &[]).await;
        if q.len() == n && q.iter().all(|e| e.attempts >= 1) {
            return q;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{n} deferred messages expected: {:?}",
        listed(config, &[]).await
    );
}

fn id_for<'a>(q: &'a [attrelay::spool::QueueEntry], rcpt: &str) -> &'a str {
    q.iter()
        .find(|e| e.pending.iter().any(|p| p == rcpt))
        .unwrap_or_else(|| panic!("{rcpt} in {q:?}"))
        .id
        .as_str()
}

fn status_field(status: &str, key: &str) -> i64 {
    let v: serde_json::Value = serde_json::from_str(status).unwrap();
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_manages_a_deferred_queue_through_the_running_relay() {
    let sink = Sink::start().await;
    let pki = Pki::new();
    let (config, admin) = setup(&pki, sink.addr);
    let relay = serve(Some(&config), &pki.path("")).await;
    send(
        &relay,
        "john@contoso.com",
        "defer-a@internet.example",
        "held",
    )
    .await;
    send(
        &relay,
        "mary@contoso.com",
        "defer-b@internet.example",
        "deleted",
    )
    .await;
    send(
        &relay,
        "john@contoso.com",
        "defer-c@internet.example",
        "bounced",
    )
    .await;
    send(
        &relay,
        "john@contoso.com",
        "defer-d@internet.example",
        "matched",
    )
    .await;
    let q = deferred_queue(&config, 4).await;
    let (a, b, c) = (
        id_for(&q, "defer-a@internet.example").to_string(),
        id_for(&q, "defer-b@internet.example").to_string(),
        id_for(&q, "defer-c@internet.example").to_string(),
    );

    // Filters: whole addresses or domains, never substrings.
    let by_mary = listed(&config, &["--sender", "MARY@contoso.com"]).await;
    assert_eq!(by_mary.len(), 1);
    assert_eq!(by_mary[0].id.as_str(), b);
    assert_eq!(
        listed(&config, &["--sender", "ary@contoso.com"])
            .await
            .len(),
        0
    );
    assert_eq!(
        listed(
            &config,
            &["--rcpt", "@internet.example", "--tenant", "contoso"]
        )
        .await
        .len(),
        4
    );
    assert_eq!(listed(&config, &["--older-than", "1h"]).await.len(), 0);

    // Show: the envelope, the recipient's state with the next hop's reply,
    // the header section.
    let shown = queue(&config, &["show", &a]).await;
    let text = stdout(&shown);
    assert_eq!(shown.status.code(), Some(0), "{}", stderr(&shown));
    assert!(text.contains("sender       john@contoso.com"), "{text}");
    assert!(
        text.contains("recipient    defer-a@internet.example pending 451"),
        "{text}"
    );
    assert!(text.contains("Subject: held"), "{text}");
    let missing = queue(&config, &["show", "NOSUCHID"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("no queued message has the id"),
        "{}",
        stderr(&missing)
    );

    // Hold: not attempted, listed as held, counted in /status and metrics.
    let held = queue(&config, &["hold", &a]).await;
    assert_eq!(held.status.code(), Some(0), "{}", stderr(&held));
    assert!(
        stdout(&held).contains(&format!("{a}  hold held")),
        "{}",
        stdout(&held)
    );
    let (_, status) = http(admin, "GET", "/status").await;
    assert_eq!(status_field(&status, "queue_held"), 1, "{status}");
    let (_, metrics) = http(admin, "GET", "/metrics").await;
    assert!(metrics.contains("attrelay_queue_held 1"), "{metrics}");
    let held_list = listed(&config, &["--held"]).await;
    assert_eq!(held_list.len(), 1);
    assert_eq!(held_list[0].id.as_str(), a);
    let again = queue(&config, &["hold", &a]).await;
    assert!(
        stdout(&again).contains("unchanged: held already"),
        "{}",
        stdout(&again)
    );

    // Delete: gone from the spool and from /status at once; the admin
    // endpoint's own form answers 404 afterwards.
    let deleted = queue(&config, &["delete", &b]).await;
    assert_eq!(deleted.status.code(), Some(0), "{}", stderr(&deleted));
    assert!(
        stdout(&deleted).contains("delete deleted"),
        "{}",
        stdout(&deleted)
    );
    let (_, status) = http(admin, "GET", "/status").await;
    assert_eq!(status_field(&status, "queue"), 3, "{status}");
    assert!(!pki.path(&format!("spool/queue/{b}.json")).exists());
    let (code, _) = http(admin, "DELETE", &format!("/queue/{b}")).await;
    assert_eq!(code, 404);

    // A flush makes every message due but the held one; the deleted one
    // is never attempted again.
    let attempts = |rcpt: &str| {
        sink.rcpt_attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.contains(rcpt))
            .count()
    };
    let before = (
        attempts("defer-a"),
        attempts("defer-b"),
        attempts("defer-d"),
    );
    let flushed = queue(&config, &["flush"]).await;
    assert_eq!(flushed.status.code(), Some(0), "{}", stderr(&flushed));
    for _ in 0..200 {
        if attempts("defer-d") > before.2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(attempts("defer-d") > before.2, "the flush made it due");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        (attempts("defer-a"), attempts("defer-b")),
        (before.0, before.1),
        "held and deleted: not attempted"
    );

    // Bounce: a DSN to the sender now, with the operator's reason on one
    // line whatever was typed.
    let bounced = queue(
        &config,
        &["bounce", &c, "--reason", "compromised account\r\nBcc: x@y"],
    )
    .await;
    assert_eq!(
        bounced.status.code(),
        Some(0),
        "{}{}",
        stdout(&bounced),
        stderr(&bounced)
    );
    let dsn = sink
        .wait_for(1)
        .await
        .into_iter()
        .find(|m| m.recipients == ["john@contoso.com"])
        .expect("a DSN to the sender");
    let dsn_text = String::from_utf8_lossy(&dsn.data);
    assert!(
        dsn_text.contains("Returned to the sender by the operator"),
        "{dsn_text}"
    );
    assert!(
        dsn_text.contains("compromised account Bcc: x@y"),
        "{dsn_text}"
    );
    assert!(
        dsn_text.contains("Final-Recipient: rfc822; defer-c@internet.example"),
        "{dsn_text}"
    );
    assert!(!dsn_text.contains("\r\nBcc:"), "{dsn_text}");

    // Delete by filter; release the held message, which is then due.
    let matched = queue(
        &config,
        &[
            "delete",
            "--all-matching",
            "--rcpt",
            "defer-d@internet.example",
        ],
    )
    .await;
    assert_eq!(matched.status.code(), Some(0), "{}", stderr(&matched));
    assert_eq!(stdout(&matched).lines().count(), 1, "{}", stdout(&matched));
    let unfiltered = queue(&config, &["delete", "--all-matching"]).await;
    assert_eq!(
        unfiltered.status.code(),
        Some(2),
        "every message needs a filter"
    );
    let released = queue(&config, &["release", &a]).await;
    assert!(
        stdout(&released).contains("release released"),
        "{}",
        stdout(&released)
    );
    for _ in 0..200 {
        if attempts("defer-a") > before.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        attempts("defer-a") > before.0,
        "released: attempted at once"
    );
    let remaining = deferred_queue(&config, 1).await;
    assert_eq!(remaining[0].id.as_str(), a);
    assert!(!remaining[0].held);

    // Without the token the endpoint refuses.
    let (code, _) =
        crate::support::http::request(admin, "DELETE", &format!("/queue/{a}"), None).await;
    assert_eq!(code, 401);
}

/// With the relay stopped, `attrelay queue` owns the spool itself: a
/// message held then stays held when the relay starts (not attempted,
/// even by a flush) until released through the running relay, and is then
/// delivered. A missing spool is an error, not an empty queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_on_a_stopped_relays_spool_hold_across_a_restart() {
    let pki = Pki::new();
    // Nothing listens on the next hop yet: the message is deferred.
    let down: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (config, _) = setup(&pki, down);
    let mut relay = serve(Some(&config), &pki.path("")).await;
    send(
        &relay,
        "john@contoso.com",
        "someone@internet.example",
        "waiting",
    )
    .await;
    let id = deferred_queue(&config, 1).await[0].id.to_string();
    relay.signal("TERM");
    relay.child.wait().await.unwrap();

    let held = queue(&config, &["hold", &id]).await;
    assert_eq!(held.status.code(), Some(0), "{}", stderr(&held));
    assert!(stdout(&held).contains("hold held"), "{}", stdout(&held));

    let sink = Sink::start().await;
    let config = Setup::read(&config)
        .set("delivery.next_hop", sink.addr.to_string())
        .write();
    let relay = serve(Some(&config), &pki.path("")).await;
    let flushed = queue(&config, &["flush", &id]).await;
    assert!(
        stdout(&flushed).contains("flush unchanged: held"),
        "{}",
        stdout(&flushed)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        sink.received.lock().unwrap().is_empty(),
        "held: not delivered"
    );
    let listed = listed(&config, &["--held"]).await;
    assert_eq!(listed.len(), 1);

    let released = queue(&config, &["release", &id]).await;
    assert_eq!(released.status.code(), Some(0), "{}", stderr(&released));
    let delivered = tokio::time::timeout(Duration::from_secs(10), sink.wait_for(1))
        .await
        .expect("delivered once released");
    assert_eq!(delivered[0].recipients, ["someone@internet.example"]);
    drop(relay);

    let nowhere = Setup::read(&config)
        .set(
            "spool.path",
            pki.path("no-spool-here").display().to_string(),
        )
        .write();
    let out = queue(&nowhere, &["list"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no spool there"), "{}", stderr(&out));
    assert!(
        !pki.path("no-spool-here").exists(),
        "looking creates nothing"
    );
}

/// Without `[admin] token_file`, any local user can reach a loopback
/// endpoint: it still makes messages due (flush), but deleting, holding or
/// bouncing someone's mail is refused, and `attrelay queue` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_endpoint_refuses_to_delete_or_bounce() {
    let sink = Sink::start().await;
    let pki = Pki::new();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = Setup::for_pki(&pki)
        .set("delivery.next_hop", sink.addr.to_string())
        .set("admin.listen", admin.to_string())
        .write();
    let relay = serve(Some(&config), &pki.path("")).await;
    send(
        &relay,
        "john@contoso.com",
        "defer-x@internet.example",
        "kept",
    )
    .await;
    let id = deferred_queue(&config, 1).await[0].id.to_string();
    for action in [
        vec!["delete", id.as_str()],
        vec!["bounce", id.as_str()],
        vec!["hold", id.as_str()],
    ] {
        let out = queue(&config, &action).await;
        assert_eq!(out.status.code(), Some(2), "{action:?}");
        assert!(
            stderr(&out).contains("403 Forbidden")
                && stderr(&out).contains("needs [admin] token_file"),
            "{}",
            stderr(&out)
        );
    }
    let flushed = queue(&config, &["flush", &id]).await;
    assert_eq!(flushed.status.code(), Some(0), "{}", stderr(&flushed));
    assert_eq!(
        deferred_queue(&config, 1).await[0].id.as_str(),
        id,
        "still queued"
    );
}
