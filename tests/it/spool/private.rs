//! The spool holds other people's mail: directories `0700`, files `0600`,
//! the decision log `0600` (or the group mode an operator chose), and a
//! spool left open to other users reported with the `chmod` that closes it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::support::Pki;
use crate::support::binary::serve;
use crate::support::relay::Setup;
use crate::support::smtp::Client;
use crate::support::wire::{CONTOSO_IP, EXT, body};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file in `dir`, which must hold some.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!found.is_empty(), "{} is empty", dir.display());
    found
}

/// A message queued (its next hop down), the decision log written: every
/// directory and file of the spool its owner's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_mail_and_the_decision_log_are_readable_by_the_relay_user_only() {
    let hop = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = hop.local_addr().unwrap();
    drop(hop);
    let setup = Setup::new()
        .set("delivery.next_hop", down.to_string())
        .set("delivery.retry_initial_secs", 3600)
        .set("policy.decision_log", "decisions.jsonl");
    let relay = setup.launch().await;
    let mut c = Client::session(relay.addrs[0], CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{EXT}>")).await.code, 250);
    assert_eq!(c.data(&body("private").0).await.code, 250);
    let spool = setup.path("spool");
    for dir in ["", "msg", "queue", "tmp", "free"] {
        assert_eq!(mode(&spool.join(dir)), 0o700, "spool/{dir}");
    }
    for file in files(&spool.join("msg"))
        .iter()
        .chain(&files(&spool.join("queue")))
    {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    let log = setup.path("decisions.jsonl");
    for _ in 0..50 {
        if std::fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mode(&log), 0o600);
    relay.stop().await;
}

/// `decision_log_mode = "0640"` gives a group the log to read; a mode that
/// would let every user read it is refused with the key's line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_log_mode_opens_it_to_a_group_and_no_further() {
    let setup = Setup::new()
        .set("delivery.directory", "outbox")
        .set("policy.decision_log", "decisions.jsonl")
        .set("policy.decision_log_mode", "0640");
    let relay = setup.launch().await;
    assert_eq!(mode(&setup.path("decisions.jsonl")), 0o640);
    relay.stop().await;
    let refused = Setup::new()
        .set("policy.decision_log", "decisions.jsonl")
        .set("policy.decision_log_mode", "0644");
    let path = refused.write();
    let err = attrelay::config::Config::load(&path).unwrap_err();
    assert_eq!(err.key, "policy.decision_log_mode");
    assert!(err.message.contains("\"0640\""), "{err}");
}

/// The binary, on a spool an older relay (or `mkdir` under umask 022) left
/// at `0755`: it serves, and says which directory is open and the `chmod`
/// that closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_open_to_other_users_is_reported_at_start() {
    let pki = Pki::new();
    let spool = pki.path("spool");
    std::fs::create_dir(&spool).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = Setup::for_pki(&pki)
        .set("delivery.directory", "outbox")
        .write();
    let mut relay = serve(Some(&config), &pki.path("")).await;
    let want = format!("chmod 700 {}", spool.display());
    let said = relay.log_until(|l| l.contains(&want)).await.join("\n");
    assert!(said.contains("open to other local users"), "{said}");
    assert!(relay.running(), "it serves anyway");
}
