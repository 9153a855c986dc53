//! The PROXY protocol on the SMTP listener: behind a balancer the relay
//! judges, logs and stamps the client's address its header states; a
//! header from anyone else, or a malformed one, closes the connection
//! before the banner.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::relay::Setup;
use crate::support::smtp::Client;

/// The wire fixture with 127.0.0.1 as its one balancer.
async fn behind_a_balancer() -> crate::support::wire::Relay {
    Setup::new()
        .merge("[server]\nproxy_protocol = true\nproxy_from = [\"127.0.0.1/32\"]\n")
        .start()
        .await
}

async fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    socket.connect(server).await.unwrap()
}

/// What the server says before it closes, within 5 s (empty: nothing).
async fn said(mut tcp: TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancers_header_names_the_client_that_is_judged() {
    let relay = behind_a_balancer().await;
    // 127.0.1.10 is contoso's on-premises server in the wire fixture; the
    // balancer (127.0.0.1) is no one's. Version 1, then version 2.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0, 12, 127, 0, 1, 10, 127, 0, 0, 1, 0xc8, 0x22, 0, 25,
    ]);
    for header in [b"PROXY TCP4 127.0.1.10 127.0.0.1 51234 25\r\n".to_vec(), v2] {
        let mut tcp = connect_from("127.0.0.1", relay.addr).await;
        tcp.write_all(&header).await.unwrap();
        let mut c = Client::from_stream(tcp).await;
        c.expect("EHLO mail.contoso.com", "250").await;
        c.expect("MAIL FROM:<john@contoso.com>", "250 2.1.0").await;
        c.expect("RCPT TO:<someone@internet.example>", "250 2.1.5")
            .await;
        let reply = c
            .data(b"Subject: via the balancer\r\n\r\nhi\r\n.\r\n")
            .await;
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    let received = relay.sink.wait_for(2).await;
    let text = String::from_utf8_lossy(&received[0].data).to_string();
    assert!(
        text.contains("([127.0.1.10])"),
        "Received: names the client:\n{text}"
    );
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_from_anyone_but_a_balancer_or_a_bad_one_gets_no_banner() {
    let relay = behind_a_balancer().await;
    // Not a balancer: a client that could state its address would choose
    // its tenant.
    let mut tcp = connect_from("127.0.0.2", relay.addr).await;
    tcp.write_all(b"PROXY TCP4 127.0.1.10 127.0.0.1 51234 25\r\n")
        .await
        .unwrap();
    assert_eq!(said(tcp).await, "", "no banner for a stranger");
    // A balancer that sends no header, or a malformed one.
    for bad in [
        &b"EHLO x\r\n"[..],
        b"PROXY TCP4 127.0.1.300 127.0.0.1 1 25\r\n",
    ] {
        let mut tcp = connect_from("127.0.0.1", relay.addr).await;
        tcp.write_all(bad).await.unwrap();
        assert_eq!(said(tcp).await, "", "{:?}", String::from_utf8_lossy(bad));
    }
    let metrics =
        crate::support::http::request(relay.handle.admin.unwrap(), "GET", "/metrics", None).await;
    assert!(
        metrics.1.contains("attrelay_proxy_refused_total 3"),
        "{}",
        metrics.1
    );
    relay.handle.stop().await;
}

#[test]
fn proxy_keys_are_checked_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    for (text, key) in [
        ("[server]\nproxy_protocol = true\n", "server.proxy_protocol"),
        (
            "[server]\nproxy_from = [\"10.0.0.1\"]\n",
            "server.proxy_from",
        ),
        (
            "[server]\nproxy_protocol = true\nproxy_from = [\"10.0.0.0/33\"]\n",
            "server.proxy_from[0]",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let e = attrelay::config::Config::load(&path)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!(": {key}: ")), "{e}");
    }
}
