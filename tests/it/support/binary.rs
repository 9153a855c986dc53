//! `attrelay serve` run as an operator runs it: the built binary, its
//! stdout read until it says where it listens, its log (stderr) kept for the
//! test to read.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

/// A running `attrelay serve`, killed when dropped.
pub struct Served {
    pub child: Child,
    /// Where its SMTP server listens.
    pub addr: SocketAddr,
    /// Its log, line by line.
    pub log: Lines<BufReader<ChildStderr>>,
}

/// Starts `attrelay serve` (with `--config config` when given) in `dir` at
/// `RUST_LOG=attrelay=info`, and waits until it listens.
pub async fn serve(config: Option<&Path>, dir: &Path) -> Served {
    let mut command = Command::new(env!("CARGO_BIN_EXE_attrelay"));
    command.arg("serve");
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let mut child = command
        .current_dir(dir)
        .env("RUST_LOG", "attrelay=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let line = out.next_line().await.unwrap().expect("attrelay exited");
            if let Some(rest) = line.strip_prefix("attrelay: listening on ") {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
    })
    .await
    .expect("attrelay listening within 60 s");
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    let log = BufReader::new(child.stderr.take().unwrap()).lines();
    Served { child, addr, log }
}

impl Served {
    /// The log's lines until one `done` accepts (30 s at most); all of them.
    pub async fn log_until(&mut self, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
        let log = &mut self.log;
        tokio::time::timeout(Duration::from_secs(30), async {
            let mut lines = Vec::new();
            while let Ok(Some(line)) = log.next_line().await {
                let finished = done(&line);
                lines.push(line);
                if finished {
                    return lines;
                }
            }
            panic!("attrelay's log ended: {lines:#?}");
        })
        .await
        .expect("the awaited log line within 30 s")
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}
