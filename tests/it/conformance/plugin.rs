//! haraka-plugin-attrelay's own promises, through a real Haraka: mail
//! relayed on with the relay's header fields (the client's forged copies
//! removed), and every failure — a trap, a call past its time budget, an
//! allocation past the memory cap, `exit`, a component that cannot be
//! loaded — answered `451 4.3.5`, with the next transaction judged again.

use std::collections::BTreeMap;

use crate::support::smtp::{Client, Sink};

use super::haraka::{Haraka, kit_attrelay_ini, kit_tenants_json};
use super::node::faulty_dist;
use super::smtp::loopback_clients;

/// Contoso's on-premises server (IP-identified), in clear text.
const CONTOSO: &str = "203.0.113.10";

async fn contoso_session(haraka: &Haraka) -> Client {
    let addr = format!("127.0.0.1:{}", haraka.port).parse().unwrap();
    Client::session(addr, CONTOSO, None).await
}

fn start(dist: &std::path::Path, main_extra: &str, sink: &Sink) -> Haraka {
    let tenants = kit_tenants_json();
    let ini = format!("{main_extra}\n{}", kit_attrelay_ini(&BTreeMap::new()));
    // Haraka's stock rcpt_to.in_host_list, listed before us, accepts any
    // recipient of its host_list: the plugin must judge first regardless.
    let plugins = "tls\nrcpt_to.in_host_list\nattrelay\nqueue/smtp_forward\n";
    let files = [
        ("tenants.json", tenants.as_str()),
        ("plugins", plugins),
        ("host_list", "contoso.com\nrelecloud.com\n"),
    ];
    Haraka::start_with(dist, &ini, &files, sink.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_mail_is_relayed_with_the_relays_fields_and_no_forged_ones() {
    loopback_clients();
    let sink = Sink::start().await;
    let haraka = tokio::task::block_in_place(|| start(super::node::dist(), "", &sink));
    // Internet mail for two tenants: contoso's recipient first.
    let addr = format!("127.0.0.1:{}", haraka.port).parse().unwrap();
    let mut c = Client::session(addr, "192.0.2.77", None).await;
    c.expect("MAIL FROM:<someone@internet.example>", "250 2.1.0")
        .await;
    c.expect("RCPT TO:<kate@contoso.com>", "250 2.1.5").await;
    // A recipient relecloud's list does not hold, though in Haraka's host_list.
    c.expect("RCPT TO:<mallory@relecloud.com>", "550 5.1.10")
        .await;
    // A second tenant's recipient in the same message: sent again later.
    c.expect("RCPT TO:<bob@tailspintoys.com>", "452 4.5.3")
        .await;
    let reply = c
        .data(b"X-Attributed-Tenant: fabrikam\r\nX-Attrelay-Warning: forged\r\nX-Attributed-Tenant : spaced\r\nx-attrelay-other\t: tabbed\r\nSubject: hello\r\n\r\nbody\r\nX-Attributed-Tenant: in the body\r\n.\r\n")
        .await;
    assert_eq!(reply.code, 250, "{reply:?}");
    let received = sink.wait_for(1).await;
    assert_eq!(received[0].recipients, ["kate@contoso.com"]);
    assert_eq!(
        received[0].header_values("X-Attributed-Tenant"),
        ["contoso"]
    );
    assert!(received[0].header_values("X-Attrelay-Warning").is_empty());
    assert_eq!(received[0].header_values("Subject"), ["hello"]);
    // Neither a spaced nor a tabbed copy survives, in any reader's eyes.
    let head = String::from_utf8_lossy(&received[0].data).to_string();
    let head = head.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert_eq!(head.matches("x-attributed-tenant").count(), 1, "{head}");
    assert!(!head.contains("x-attrelay-"), "{head}");
    assert!(
        String::from_utf8_lossy(&received[0].data).contains("X-Attributed-Tenant: in the body")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_of_the_component_is_451_and_the_next_transaction_is_judged() {
    loopback_clients();
    let sink = Sink::start().await;
    let haraka = tokio::task::block_in_place(|| {
        start(
            faulty_dist(),
            "timeout_ms=500\nmemory_mib=32\nworkers=1",
            &sink,
        )
    });
    for fault in ["fault-panic", "fault-loop", "fault-memory", "fault-exit"] {
        let mut c = contoso_session(&haraka).await;
        c.expect("MAIL FROM:<john@contoso.com>", "250 2.1.0").await;
        let started = std::time::Instant::now();
        c.expect(&format!("RCPT TO:<{fault}@contoso.com>"), "451 4.3.5")
            .await;
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{fault}: {:?}",
            started.elapsed()
        );
        // The instance is gone with the session it held: fail closed until
        // the next MAIL FROM, which opens a session on a fresh instance.
        c.expect("RCPT TO:<kate@contoso.com>", "451 4.3.5").await;
        c.expect("RSET", "250").await;
        c.expect("MAIL FROM:<john@contoso.com>", "250 2.1.0").await;
        c.expect("RCPT TO:<kate@contoso.com>", "250 2.1.5").await;
        c.expect("QUIT", "221").await;
    }
    let log = haraka.log();
    assert!(
        log.contains("budget"),
        "the loop was stopped by the time budget:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_cannot_be_loaded_fails_closed() {
    loopback_clients();
    let sink = Sink::start().await;
    let missing = std::path::Path::new("/nonexistent/attrelay-dist");
    let haraka = tokio::task::block_in_place(|| start(missing, "", &sink));
    let mut c = contoso_session(&haraka).await;
    c.expect("MAIL FROM:<john@contoso.com>", "451 4.3.5").await;
    c.expect("MAIL FROM:<>", "451 4.3.5").await;
}
