//! `attrelay bench`, the load generator, against the running relay: plain
//! and STARTTLS with a client certificate and its chain; every message
//! counted by the relay's next hop, and an unexpected reply fails the run.

use crate::support;

use support::attrelay;
use support::wire::{CONTOSO_IP, Relay, UNKNOWN_IP};

fn bench(relay: &Relay, extra: &[&str]) -> std::process::Output {
    let server = relay.addr.to_string();
    let mut args = vec![
        "bench",
        "--server",
        &server,
        "--concurrency",
        "4",
        "--sessions",
        "20",
        "--messages",
        "5",
        "--size",
        "2048",
        "--from",
        "john@contoso.com",
        "--to",
        "kate@tailspintoys.example",
    ];
    args.extend_from_slice(extra);
    attrelay(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_starttls_with_a_client_certificate() {
    let relay = Relay::start("").await;
    let out = bench(&relay, &["--source", CONTOSO_IP]);
    let text = support::succeeded(&out);
    assert!(text.starts_with("100 messages in "), "{text}");
    assert!(text.contains(", 0 errors"), "{text}");
    for stage in ["connect", "ehlo", "mail", "rcpt", "data", "message", "quit"] {
        assert!(text.contains(&format!("\n{stage} ")), "{stage}: {text}");
    }
    relay.sink.wait_for(100).await;

    let (cert, key) = relay.pki.cert("contoso");
    let out = bench(
        &relay,
        &[
            "--source",
            UNKNOWN_IP,
            "--starttls",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&support::succeeded(&out)).unwrap();
    assert_eq!(report["messages"], 100, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let stages: Vec<&str> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert!(stages.contains(&"starttls"), "{report}");
    relay.sink.wait_for(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unexpected_reply_fails_the_run() {
    // A stranger relaying: every RCPT gets 550, and the run says so.
    let relay = Relay::start("").await;
    let out = bench(&relay, &["--source", UNKNOWN_IP]);
    assert_eq!(out.status.code(), Some(1), "{}", support::stdout(&out));
    let text = support::stdout(&out);
    assert!(text.contains("error: rcpt: 550 5.7.64"), "{text}");
    assert!(text.starts_with("0 messages in "), "{text}");
}
