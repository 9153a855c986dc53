//! `[server] user`: started as root, the relay binds its listeners, makes
//! its spool its user's, and runs as that user — and still delivers. As
//! any other user it cannot switch, and says so. Started as root without
//! the setting, it says that it runs as root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::support::binary::serve;
use crate::support::relay::Setup;
use crate::support::smtp::{Client, Sink};
use crate::support::wire::CONTOSO_IP;
use crate::support::{Pki, attrelay, stderr};

/// `nobody` on Debian.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        == 0
}

/// The effective uid and gid of process `pid`, from `/proc`.
fn ids(pid: u32) -> (Vec<u32>, Vec<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {status}"))
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect()
    };
    (field("Uid:"), field("Gid:"))
}

async fn status(admin: std::net::SocketAddr) -> serde_json::Value {
    let (_, body) = crate::support::http::request(admin, "GET", "/status", None).await;
    serde_json::from_str(&body).unwrap()
}

/// Everything under `dir`, `dir` included.
fn tree(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            all.extend(tree(&entry.path()));
        } else {
            all.push(entry.path());
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_as_root_with_a_user_it_runs_as_that_user_and_still_delivers() {
    let sink = Sink::start().await;
    let pki = Pki::new();
    // As /etc/attrelay would be: readable by the relay's user.
    std::fs::set_permissions(pki.path(""), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = Setup::for_pki(&pki)
        .set("delivery.next_hop", sink.addr.to_string())
        .set("server.user", "nobody")
        .write();
    if !is_root() {
        // Only root can switch users: the relay refuses to start, and says
        // why, rather than run as the wrong user.
        let out = attrelay(&["serve", "--config", &config.display().to_string()]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("only root can switch to another user"),
            "{}",
            stderr(&out)
        );
        return;
    }
    let relay = serve(Some(&config), &pki.path("")).await;
    let pid = relay.child.id().unwrap();
    let (uid, gid) = ids(pid);
    assert_eq!(
        uid, [NOBODY; 4],
        "real, effective, saved and filesystem uid"
    );
    assert!(gid.iter().all(|g| *g != 0), "no root group: {gid:?}");
    let said = status(relay.admin().await).await;
    assert_eq!(
        (said["user"].as_str(), said["root"].as_bool()),
        (Some("nobody"), Some(false)),
        "{said}"
    );

    let mut c = Client::session(relay.addr, CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<someone@internet.example>").await.code, 250);
    assert_eq!(
        c.data(b"Subject: as nobody\r\n\r\nx\r\n.\r\n").await.code,
        250
    );
    assert_eq!(c.cmd("QUIT").await.code, 221);
    let got = tokio::time::timeout(std::time::Duration::from_secs(20), sink.wait_for(1))
        .await
        .expect("delivered by the relay running as nobody");
    assert_eq!(got[0].recipients, ["someone@internet.example"]);

    // Everything it writes is its user's, and private.
    for path in tree(&pki.path("spool"))
        .into_iter()
        .chain(tree(&pki.path("policy-cache")))
    {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.uid(), NOBODY, "{}", path.display());
        if meta.is_dir() {
            assert_eq!(meta.mode() & 0o077, 0, "{} is private", path.display());
        }
    }
    assert!(relay.log().contains("running as nobody"), "{}", relay.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_user_it_says_whether_it_runs_as_root() {
    let pki = Pki::new();
    let config = Setup::for_pki(&pki).write();
    let relay = serve(Some(&config), &pki.path("")).await;
    let said = status(relay.admin().await).await;
    assert_eq!(said["root"].as_bool(), Some(is_root()), "{said}");
    assert_eq!(
        relay.log().contains("running as root: set [server] user"),
        is_root(),
        "{}",
        relay.log()
    );
}
