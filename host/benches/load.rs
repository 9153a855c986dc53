//! Load script: messages per second over SMTP, each system measured in the
//! same run against the same recording next hop, so the results compare as
//! ratios (these machines are noisy; absolute numbers mean little).
//!
//! - `sink`: the load generator straight into the recording next hop — the
//!   ceiling of the client, loopback and next hop themselves;
//! - `attrelay`: our relay (policy component per session, durable spool with
//!   fsync, delivery to the next hop);
//! - `postfix`: a private Postfix instance relaying for 127.0.0.0/8
//!   (`permit_mynetworks`), the reference MTA (needs Postfix and root);
//! - `postfix+policyd`: the same Postfix asking our policy service at every
//!   RCPT TO instead.
//!
//! Each figure is accepted messages per second (the client's view: every
//! message answered 250) and delivered per second (until the next hop has them
//! all). `cargo bench -p attrelay --bench load`; `LOAD_CONNECTIONS` (8) and
//! `LOAD_MESSAGES` per connection (100) change the load.

// The integration tests' support, of which this bench uses the sink and
// the private Postfix only.
#[allow(dead_code)]
#[path = "../../tests/it/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::postfix::Postfix;
use support::smtp::Sink;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Reads one (possibly multi-line) reply; returns its code.
async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> u16 {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return 0;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        }
    }
}

/// One connection sending `messages` messages, one transaction after the
/// other (no pipelining, like most MTAs' clients).
async fn client(server: SocketAddr, messages: usize, body: &'static [u8]) {
    let tcp = TcpStream::connect(server).await.unwrap();
    let _ = tcp.set_nodelay(true);
    let (r, mut w) = tcp.into_split();
    let mut r = BufReader::new(r);
    assert_eq!(reply(&mut r).await, 220);
    w.write_all(b"EHLO load.bench.test\r\n").await.unwrap();
    assert_eq!(reply(&mut r).await, 250);
    for i in 0..messages {
        w.write_all(b"MAIL FROM:<load@bench.test>\r\n")
            .await
            .unwrap();
        assert_eq!(reply(&mut r).await, 250, "MAIL {i}");
        w.write_all(b"RCPT TO:<someone@internet.example>\r\n")
            .await
            .unwrap();
        assert_eq!(reply(&mut r).await, 250, "RCPT {i}");
        w.write_all(b"DATA\r\n").await.unwrap();
        assert_eq!(reply(&mut r).await, 354);
        w.write_all(body).await.unwrap();
        assert_eq!(reply(&mut r).await, 250, "DATA {i}");
    }
    w.write_all(b"QUIT\r\n").await.unwrap();
    let _ = reply(&mut r).await;
}

struct Figures {
    accepted_per_sec: f64,
    delivered_per_sec: f64,
}

/// Sends the load to `server` and waits until `sink` has it all.
async fn run(server: SocketAddr, sink: &Sink, connections: usize, messages: usize) -> Figures {
    let body: &'static [u8] = Box::leak(message().into_boxed_slice());
    let before = sink.received.lock().unwrap().len();
    let total = connections * messages;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(client(server, messages, body)));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = started.elapsed();
    tokio::time::timeout(Duration::from_secs(600), sink.wait_for(before + total))
        .await
        .expect("everything delivered within 10 minutes");
    let delivered = started.elapsed();
    Figures {
        accepted_per_sec: total as f64 / accepted.as_secs_f64(),
        delivered_per_sec: total as f64 / delivered.as_secs_f64(),
    }
}

/// A 4 KiB message, dot-stuffed, ending with CRLF.CRLF.
fn message() -> Vec<u8> {
    let mut m =
        b"From: load@bench.test\r\nTo: someone@internet.example\r\nSubject: load\r\n\r\n".to_vec();
    while m.len() < 4096 {
        m.extend_from_slice(b"The quick brown fox jumps over the lazy dog, 0123456789.\r\n");
    }
    m.extend_from_slice(b".\r\n");
    m
}

/// Our relay with one tenant owning bench.test whose on-premises server is
/// any loopback address, with the policy service for Postfix.
async fn attrelay(dir: &std::path::Path, next_hop: SocketAddr) -> attrelay::relay::RelayHandle {
    let text = format!(
        r#"
[admin]
enabled = false

[server]
hostname = "relay.bench.test"
listen = ["127.0.0.1:0"]
max_sessions = 512

[spool]
path = {:?}

[delivery]
next_hop = "{next_hop}"
concurrency = 16

[policyd]
listen = ["127.0.0.1:0"]

[[tenant]]
id = "bench"
accepted_domains = ["bench.test"]

[[tenant.connector]]
name = "Bench on-premises"
type = "on-premises"
sender_ip_addresses = ["127.0.0.0/8"]
"#,
        dir.join("spool").display().to_string()
    );
    let config = attrelay::config::Config::parse(&dir.join("bench.toml"), &text).unwrap();
    attrelay::relay::start(&config).await.unwrap()
}

fn print(name: &str, f: &Figures, baseline: &Figures) {
    println!(
        "{name:<16} accepted {:>8.0} msg/s ({:>5.2}x sink)   delivered {:>8.0} msg/s ({:>5.2}x sink)",
        f.accepted_per_sec,
        f.accepted_per_sec / baseline.accepted_per_sec,
        f.delivered_per_sec,
        f.delivered_per_sec / baseline.delivered_per_sec,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // and must not run a minutes-long load.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let connections = env("LOAD_CONNECTIONS", 8);
    let messages = env("LOAD_MESSAGES", 100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!(
            "load: {connections} connections x {messages} messages of 4 KiB, one recipient each"
        );
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::start().await;
        let base = run(sink.addr, &sink, connections, messages).await;
        print("sink", &base, &base);

        let relay = attrelay(dir.path(), sink.addr).await;
        let ours = run(relay.addrs[0], &sink, connections, messages).await;
        print("attrelay", &ours, &base);

        let postfix_dir = dir.path().join("postfix");
        std::fs::create_dir_all(&postfix_dir).unwrap();
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if !root || !std::path::Path::new(&support::postfix::postfix_binary()).exists() {
            println!("postfix          not measured: needs Postfix installed and root");
        } else {
            let common = "mynetworks = 127.0.0.0/8\nsmtpd_peername_lookup = no\ndefault_process_limit = 200";
            let pf = Postfix::start(
                &postfix_dir,
                sink.addr,
                &format!("{common}\nsmtpd_relay_restrictions = permit_mynetworks, reject"),
            );
            let theirs = run(pf.addr, &sink, connections, messages).await;
            print("postfix", &theirs, &base);
            drop(pf);
            let postfix_dir = dir.path().join("postfix-policyd");
            std::fs::create_dir_all(&postfix_dir).unwrap();
            let pf = Postfix::start(
                &postfix_dir,
                sink.addr,
                &format!(
                    "{common}\nsmtpd_relay_restrictions = check_policy_service inet:{}, reject",
                    relay.policyd[0]
                ),
            );
            let with_policy = run(pf.addr, &sink, connections, messages).await;
            print("postfix+policyd", &with_policy, &base);
            drop(pf);
            println!(
                "attrelay / postfix: accepted {:.2}x, delivered {:.2}x; policyd costs postfix {:.0}% of its accept rate",
                ours.accepted_per_sec / theirs.accepted_per_sec,
                ours.delivered_per_sec / theirs.delivered_per_sec,
                100.0 * (1.0 - with_policy.accepted_per_sec / theirs.accepted_per_sec)
            );
        }
        relay.stop().await;
    });
}
