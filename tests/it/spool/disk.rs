//! A full disk is temporary (docs/SECURITY.md, "Disk full"). On a small
//! tmpfs, a message the spool cannot hold is refused with `452 4.3.1` — by
//! the free-space reserve before anything is written, or by `ENOSPC` part
//! way through the write — nothing of it stays behind, and the next small
//! message is accepted and delivered. Directory delivery into a full disk is
//! deferred, leaves no partial file, and succeeds once there is room.
//!
//! Mounting a tmpfs needs root, as CI runs these tests; without it they fail
//! with the reason, never skip.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use attrelay::relay::RelayHandle;
use support::Pki;
use support::relay::Setup;
use support::smtp::{Client, Reply, Sink};

/// Inside Contoso's on-premises range once the fixture is moved to loopback.
const CONTOSO_IP: &str = "127.0.1.10";

/// A tmpfs mounted on a directory for the life of the guard.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        let options = format!("size={size}");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options.as_str(), "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount(8): {e}; these tests need root"));
        assert!(
            out.status.success(),
            "mount -t tmpfs -o size={size} tmpfs {} failed ({}): {}; these tests need root (CI runs them as root)",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so that it detaches even while the relay still holds a file.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Starts a relay with `spool` and `delivery` as the bodies of `[spool]` and
/// `[delivery]`. Retries come every 2 seconds: never within the same
/// second, so that a test sees the outbox between two attempts. The policy
/// cache lives beside the configuration, off the small disks.
async fn start(pki: &Pki, spool: &str, delivery: &str) -> RelayHandle {
    Setup::for_pki(pki)
        .set("server.idle_timeout_secs", 30)
        .set("policy.cache", "policy-cache")
        .set("delivery.retry_initial_secs", 2)
        .set("delivery.retry_max_secs", 2)
        .merge(&format!("[spool]\n{spool}\n\n[delivery]\n{delivery}\n"))
        .launch()
        .await
}

/// `path = "…"` for a TOML table.
fn path_line(p: &Path) -> String {
    format!("path = {:?}", p.display().to_string())
}

/// A message of at least `len` bytes as sent after DATA: lines of 76
/// characters (nothing to dot-stuff), then the end-of-data line.
fn message(subject: &str, len: usize) -> Vec<u8> {
    let mut m = format!("Subject: {subject}\r\n\r\n").into_bytes();
    let line = format!("{}\r\n", "x".repeat(76));
    while m.len() < len {
        m.extend_from_slice(line.as_bytes());
    }
    m.extend_from_slice(b".\r\n");
    m
}

/// MAIL (the line given), a RCPT that Contoso may relay, and DATA with
/// `wire`: the reply to MAIL if it refused, else the one to the message.
async fn transaction(c: &mut Client, mail: &str, wire: &[u8]) -> Reply {
    let r = c.cmd(mail).await;
    if r.code != 250 {
        return r;
    }
    let r = c.cmd("RCPT TO:<someone@internet.example>").await;
    assert_eq!(r.code, 250, "{r:?}");
    c.data(wire).await
}

/// A relay whose spool is on a 4 MiB tmpfs with `min_free_bytes`,
/// delivering to a sink, and a session of contoso's server with it (the
/// mount is undone when the first value is dropped).
async fn on_a_4m_disk(
    pki: &Pki,
    min_free_bytes: u64,
) -> (Tmpfs, PathBuf, Sink, RelayHandle, Client) {
    let disk = Tmpfs::mount(pki.path("disk"), "4m");
    let spool = disk.path().join("spool");
    let sink = Sink::start().await;
    let relay = start(
        pki,
        &format!("{}\nmin_free_bytes = {min_free_bytes}", path_line(&spool)),
        &format!("next_hop = \"{}\"", sink.addr),
    )
    .await;
    let c = session(relay.addrs[0]).await;
    (disk, spool, sink, relay, c)
}

async fn session(addr: SocketAddr) -> Client {
    Client::session(addr, CONTOSO_IP, None).await
}

/// The names in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Nothing of a refused message in the spool: no partial file in `tmp/`, no
/// message file, no envelope.
fn assert_spool_empty(spool: &Path) {
    for sub in ["tmp", "msg", "queue"] {
        assert_eq!(
            files(&spool.join(sub)),
            Vec::<String>::new(),
            "spool/{sub} after a refused message"
        );
    }
}

/// Waits until the spool is empty: every message delivered.
async fn wait_delivered(relay: &RelayHandle) {
    for _ in 0..100 {
        if relay.context.spool.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the spool still holds a message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reserve_refuses_mail_the_disk_cannot_hold_with_452_and_takes_the_next() {
    let pki = Pki::new();
    let (_disk, spool, sink, relay, mut c) = on_a_4m_disk(&pki, 1 << 20).await;

    // Declared bigger than the 4 MiB disk less the 1 MiB reserve: refused
    // before a byte of it is sent.
    let r = c.cmd("MAIL FROM:<john@contoso.com> SIZE=3500000").await;
    assert!(r.is(452, "4.3.1"), "MAIL with SIZE: {r:?}");
    // Not declared: refused at the end of DATA, before anything is written.
    let r = transaction(
        &mut c,
        "MAIL FROM:<john@contoso.com>",
        &message("too big", 3_500_000),
    )
    .await;
    assert!(r.is(452, "4.3.1"), "end of DATA: {r:?}");
    assert_spool_empty(&spool);

    // A full disk is temporary: the next, small message is taken and delivered.
    small_message_goes_through(c, "MAIL FROM:<john@contoso.com> SIZE=1000", &sink, relay).await;
}

/// After a refusal for want of space, the next small message is accepted,
/// is the only one delivered, and leaves the spool; then the relay stops.
async fn small_message_goes_through(mut c: Client, mail: &str, sink: &Sink, relay: RelayHandle) {
    let r = transaction(&mut c, mail, &message("small", 500)).await;
    assert_eq!(r.code, 250, "{r:?}");
    let received = sink.wait_for(1).await;
    assert_eq!(received.len(), 1, "only the small message: {received:?}");
    let text = String::from_utf8_lossy(&received[0].data);
    assert!(text.contains("Subject: small\r\n"), "{text}");
    wait_delivered(&relay).await;
    c.cmd("QUIT").await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_part_way_through_a_write_is_452_and_leaves_nothing_behind() {
    let pki = Pki::new();
    // No reserve: the disk fills up while the message is being written.
    let (_disk, spool, sink, relay, mut c) = on_a_4m_disk(&pki, 0).await;

    let r = transaction(
        &mut c,
        "MAIL FROM:<john@contoso.com>",
        &message("bigger than the disk", 6_000_000),
    )
    .await;
    assert!(r.is(452, "4.3.1"), "end of DATA: {r:?}");
    assert_spool_empty(&spool);
    // The partial file is gone, so its space is free again (a leftover in
    // spool/tmp used to refuse every later message until a restart).
    let free = relay.context.spool.available().unwrap();
    assert!(free > 3 << 20, "{free} bytes free after the refusal");

    small_message_goes_through(c, "MAIL FROM:<john@contoso.com>", &sink, relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_delivery_to_a_full_disk_is_deferred_without_partial_files() {
    let pki = Pki::new();
    let outbox = Tmpfs::mount(pki.path("outbox"), "1m");
    // 64 KiB left: too little for the message.
    let filler = outbox.path().join("filler");
    std::fs::write(&filler, vec![0u8; (1 << 20) - (64 << 10)]).unwrap();
    let spool = pki.path("spool");
    let relay = start(
        &pki,
        &path_line(&spool),
        &format!("directory = {:?}", outbox.path().display().to_string()),
    )
    .await;
    let mut c = session(relay.addrs[0]).await;
    let r = transaction(
        &mut c,
        "MAIL FROM:<john@contoso.com>",
        &message("to the outbox", 200_000),
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT").await;

    // The first attempt fails for want of space: deferred, and nothing of
    // it in the outbox.
    let mut queued = Vec::new();
    for _ in 0..100 {
        queued = relay.context.spool.entries();
        if queued.first().is_some_and(|e| e.attempts >= 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        queued.first().is_some_and(|e| e.attempts >= 1),
        "no failed attempt recorded: {queued:?}"
    );
    let id = queued[0].id.clone();
    let last_error = queued[0].last_error.clone().unwrap_or_default();
    assert!(last_error.starts_with("451 4.3.0"), "{last_error}");
    assert_eq!(files(outbox.path()), ["filler"]);

    // Room again: the retry writes both files, and the spool lets go of it.
    std::fs::remove_file(&filler).unwrap();
    wait_delivered(&relay).await;
    assert_eq!(
        files(outbox.path()),
        [format!("{id}.eml"), format!("{id}.json")]
    );
    let eml = std::fs::read(outbox.path().join(format!("{id}.eml"))).unwrap();
    assert!(
        String::from_utf8_lossy(&eml).contains("Subject: to the outbox\r\n"),
        "the delivered message"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outbox.path().join(format!("{id}.json"))).unwrap())
            .unwrap();
    assert_eq!(
        json["recipients"],
        serde_json::json!(["someone@internet.example"])
    );
    relay.stop().await;
}
