//! `attrelay serve` as an operator runs it: signals to the binary.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::smtp::Client;

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
