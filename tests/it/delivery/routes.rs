//! Routing by recipient domain, as an operator configures it: a tenant's
//! `smart_hosts` receive the mail for its accepted domains (the next host
//! when one cannot be reached), a `[[delivery.route]]` takes another
//! domain, the rest goes to `[delivery] next_hop`; `attrelay check` says
//! where a recipient would go, and a reload reroutes mail without a
//! restart.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::binary::serve;
use crate::support::postfix::free_port;
use crate::support::relay::Setup;
use crate::support::smtp::{Client, Sink};
use crate::support::wire::{CONTOSO_IP, UNKNOWN_IP};
use crate::support::{Pki, attrelay, stdout};

async fn send(relay: SocketAddr, ip: &str, sender: &str, rcpts: &[&str]) {
    let mut c = Client::session(relay, ip, None).await;
    assert_eq!(c.cmd(&format!("MAIL FROM:<{sender}>")).await.code, 250);
    for r in rcpts {
        let reply = c.cmd(&format!("RCPT TO:<{r}>")).await;
        assert_eq!(reply.code, 250, "{r}: {reply:?}");
    }
    assert_eq!(c.data(b"Subject: routed\r\n\r\nx\r\n.\r\n").await.code, 250);
    assert_eq!(c.cmd("QUIT").await.code, 221);
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_mail_reaches_its_smart_host_and_the_rest_its_route_or_next_hop() {
    let (outbound, contoso, fabrikam, moved) = (
        Sink::start().await,
        Sink::start().await,
        Sink::start().await,
        Sink::start().await,
    );
    let down = format!("127.0.0.1:{}", free_port());
    let pki = Pki::new();
    let config = Setup::for_pki(&pki)
        .set("delivery.next_hop", outbound.addr.to_string())
        .merge_tenant(
            "contoso",
            &format!("smart_hosts = [{down:?}, \"{}\"]", contoso.addr),
        )
        .merge(&format!(
            "[[delivery.route]]\ndomains = [\"fabrikam.example\"]\nnext_hop = \"{}\"\n",
            fabrikam.addr
        ))
        .write();
    let cfg = config.display().to_string();

    // Where each recipient would go, before any mail.
    let check = attrelay(&[
        "check",
        "--config",
        &cfg,
        "--ip",
        UNKNOWN_IP,
        "--from",
        "someone@internet.example",
        "--to",
        "kate@contoso.com",
    ]);
    let text = stdout(&check);
    assert!(
        text.contains(&format!(
            "delivery: to {down}, then {} (tenant contoso)",
            contoso.addr
        )),
        "{text}"
    );
    let check = attrelay(&[
        "check",
        "--config",
        &cfg,
        "--ip",
        CONTOSO_IP,
        "--from",
        "john@contoso.com",
        "--to",
        "bob@fabrikam.example",
        "--to",
        "someone@internet.example",
    ]);
    let text = stdout(&check);
    assert!(
        text.contains(&format!(
            "delivery: to {} (delivery.route[0])",
            fabrikam.addr
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "delivery: to smarthost {} ([delivery])",
            outbound.addr
        )),
        "{text}"
    );

    let relay = serve(Some(&config), &pki.path("")).await;
    // Incoming for contoso, from the Internet: to its smart host, past the
    // first one, which is down.
    send(
        relay.addr,
        UNKNOWN_IP,
        "someone@internet.example",
        &["kate@contoso.com"],
    )
    .await;
    // Contoso's outbound mail: one recipient by the operator's route, one
    // by the next hop.
    send(
        relay.addr,
        CONTOSO_IP,
        "john@contoso.com",
        &["bob@fabrikam.example", "someone@internet.example"],
    )
    .await;
    let inbound = within("contoso's smart host got its mail", contoso.wait_for(1)).await;
    assert_eq!(inbound[0].recipients, ["kate@contoso.com"]);
    let routed = within("the route got fabrikam's recipient", fabrikam.wait_for(1)).await;
    assert_eq!(routed[0].recipients, ["bob@fabrikam.example"]);
    let out = within("the next hop got the rest", outbound.wait_for(1)).await;
    assert_eq!(out[0].recipients, ["someone@internet.example"]);
    let lines = relay
        .log_until(|l| l.contains("kate@contoso.com") && l.contains("delivered"))
        .await;
    let line = lines
        .iter()
        .find(|l| l.contains("kate@contoso.com") && l.contains("delivered"))
        .unwrap();
    assert!(
        line.contains(&format!(
            "relay=127.0.0.1[127.0.0.1]:{}",
            contoso.addr.port()
        )),
        "{line}"
    );

    // A reload moves contoso's mail to another host, no restart.
    Setup::read(&config)
        .merge_tenant("contoso", &format!("smart_hosts = [\"{}\"]", moved.addr))
        .write();
    relay.signal("HUP");
    relay.log_until(|l| l.contains("reloaded")).await;
    // The directory lint speaks at start and again at the reload (the
    // fixture's woodgrove tenants share certificate names by design).
    assert!(
        relay
            .log()
            .matches("the most specific name takes the certificate")
            .count()
            >= 4,
        "{}",
        relay.log()
    );
    send(
        relay.addr,
        UNKNOWN_IP,
        "someone@internet.example",
        &["kate@contoso.com"],
    )
    .await;
    let rerouted = within("the new smart host got the mail", moved.wait_for(1)).await;
    assert_eq!(rerouted[0].recipients, ["kate@contoso.com"]);
    assert_eq!(contoso.received.lock().unwrap().len(), 1);
}
