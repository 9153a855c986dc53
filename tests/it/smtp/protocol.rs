//! The SMTP dialogue's rules and limits over the wire: replies with proper
//! codes to protocol errors, message size, recipients, idle time, session
//! and per-IP limits, early talkers, the session and command deadlines, and
//! a graceful shutdown.

use crate::support;

use std::time::Duration;

use support::smtp::Client;
use support::wire::{CONTOSO_IP, EXT, Relay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_get_proper_replies() {
    let relay = Relay::start("").await;
    let (mut c, _) = Client::connect_from(relay.addr, CONTOSO_IP.parse().unwrap()).await;
    assert!(
        c.cmd("MAIL FROM:<a@contoso.com>").await.is(503, "5.5.1"),
        "MAIL before EHLO"
    );
    assert!(c.cmd("BOGUS").await.is(500, "5.5.1"));
    assert!(
        c.cmd(&format!("NOOP {}", "x".repeat(5000)))
            .await
            .is(500, "5.5.2"),
        "over-long line"
    );
    let ehlo = c.cmd("EHLO client.example.test").await;
    for cap in [
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    ] {
        assert!(
            ehlo.lines.iter().any(|l| l.ends_with(cap)),
            "{cap} missing: {ehlo:?}"
        );
    }
    assert!(
        c.cmd("RCPT TO:<x@y.example>").await.is(503, "5.5.1"),
        "RCPT before MAIL"
    );
    assert!(c.cmd("DATA").await.is(503, "5.5.1"), "DATA before MAIL");
    assert!(
        c.cmd("MAIL FROM:<a@contoso.com> SIZE=999999999")
            .await
            .is(552, "5.3.4")
    );
    assert!(c.cmd("MAIL FROM:<not an address>").await.code >= 500);
    assert_eq!(c.cmd("VRFY kate").await.code, 252);
    assert_eq!(c.cmd("HELP").await.code, 214);
    assert!(c.cmd("NOOP").await.is(250, "2.0.0"));
    assert!(c.cmd("MAIL FROM:<john@contoso.com>").await.is(250, "2.1.0"));
    assert!(
        c.cmd("MAIL FROM:<john@contoso.com>").await.is(503, "5.5.1"),
        "nested MAIL"
    );
    assert!(c.cmd("RSET").await.is(250, "2.0.0"));
    assert!(c.cmd("QUIT").await.is(221, "2.0.0"));

    // Too many errors end the session with 421.
    let (mut c, _) = Client::connect(relay.addr).await;
    let mut last = c.cmd("BOGUS").await;
    for _ in 0..20 {
        if last.code == 421 || last.code == 0 {
            break;
        }
        last = c.read_or_cmd("BOGUS").await;
    }
    assert!(
        last.lines.iter().any(|l| l.starts_with("421 4.7.0")),
        "{last:?}"
    );
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_size_recipients_idle_and_pipelining() {
    let relay = Relay::start("").await;
    // Too many recipients: the 101st gets 452.
    let mut c = relay.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    for i in 0..100 {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<r{i}@internet.example>"))
                .await
                .code,
            250
        );
    }
    assert!(
        c.cmd("RCPT TO:<r100@internet.example>")
            .await
            .is(452, "4.5.3")
    );
    assert!(c.cmd("RSET").await.is(250, "2.0.0"));

    // A message over SIZE: 552 after the data, nothing queued.
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{EXT}>")).await.code, 250);
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    let line = format!("{}\r\n", "x".repeat(998));
    while big.len() < 26 * 1024 * 1024 {
        big.extend_from_slice(line.as_bytes());
    }
    big.extend_from_slice(b".\r\n");
    assert!(c.data(&big).await.is(552, "5.3.4"));
    // The session goes on.
    assert!(c.cmd("NOOP").await.is(250, "2.0.0"));

    // Pipelining: every command in one write, every reply in order.
    let mut p = relay.session(CONTOSO_IP, None).await;
    p.send_raw(format!("MAIL FROM:<john@contoso.com>\r\nRCPT TO:<{EXT}>\r\nRCPT TO:<other@internet.example>\r\nDATA\r\n").as_bytes()).await;
    assert_eq!(p.read().await.code, 250);
    assert_eq!(p.read().await.code, 250);
    assert_eq!(p.read().await.code, 250);
    assert_eq!(p.read().await.code, 354);
    p.send_raw(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        .await;
    assert_eq!(p.read().await.code, 250);
    assert_eq!(p.read().await.code, 221);

    // Idle clients are dropped with 421 (idle_timeout_secs = 5 in this config).
    let (mut idle, _) = Client::connect(relay.addr).await;
    let r = idle.read().await;
    assert!(r.is(421, "4.4.2"), "{r:?}");
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limit_and_graceful_shutdown() {
    let relay = Relay::start("").await;
    // Shutdown: a session in flight gets 421 4.3.2 to its next command.
    let mut c = relay.session(CONTOSO_IP, None).await;
    relay.handle.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = c.read_or_cmd("NOOP").await;
    assert!(r.is(421, "4.3.2"), "{r:?}");
    // And nothing listens any more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tokio::net::TcpStream::connect(relay.addr).await.is_err());
    relay.handle.stop().await;

    // The session limit: one more connection gets 421 4.3.2 at once.
    let relay = Relay::start_with("max_sessions = 2", "").await;
    let _a = relay.session(CONTOSO_IP, None).await;
    let _b = relay.session(CONTOSO_IP, None).await;
    let (_, greeting) = Client::connect(relay.addr).await;
    assert!(greeting.is(421, "4.3.2"), "{greeting:?}");
    drop(_a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, greeting) = Client::connect(relay.addr).await;
    assert_eq!(greeting.code, 220, "a slot was freed");
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_talkers_per_ip_limits_and_session_deadline() {
    let relay = Relay::start_with(
        "pregreet_delay_ms = 300\nmax_sessions_per_ip = 2\nmax_session_secs = 2",
        "",
    )
    .await;
    // A client that pipelines before the greeting is refused with 554.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        tcp.write_all(b"EHLO spambot.example\r\nMAIL FROM:<a@b.example>\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 512];
        let n = tcp.read(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("554 5.5.0 "), "{text}");
        assert!(
            !text.contains("220"),
            "no greeting for an early talker: {text}"
        );
    }
    // Two sessions per client IP; a third from the same IP gets 421 4.7.0, another IP is served.
    let (_a, ga) = Client::connect_from(relay.addr, "127.0.5.1".parse().unwrap()).await;
    let (_b, gb) = Client::connect_from(relay.addr, "127.0.5.1".parse().unwrap()).await;
    assert_eq!((ga.code, gb.code), (220, 220));
    let (_, gc) = Client::connect_from(relay.addr, "127.0.5.1".parse().unwrap()).await;
    assert!(gc.is(421, "4.7.0"), "{gc:?}");
    let (_d, gd) = Client::connect_from(relay.addr, "127.0.5.2".parse().unwrap()).await;
    assert_eq!(gd.code, 220);
    // A session that never ends by itself is ended at max_session_secs.
    let (mut slow, _) = Client::connect_from(relay.addr, "127.0.5.3".parse().unwrap()).await;
    let started = std::time::Instant::now();
    let last = loop {
        let r = slow.read_or_cmd("NOOP").await;
        if r.code != 250 {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(last.is(421, "4.4.2"), "{last:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    relay.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_trickled_a_byte_at_a_time_meets_the_command_deadline() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let relay = Relay::start_with("idle_timeout_secs = 2", "").await;
    let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let (r, mut w) = tcp.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("220 "), "{line}");
    w.write_all(b"EHLO client.example.test\r\n").await.unwrap();
    loop {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        if line.starts_with("250 ") {
            break;
        }
    }
    // One byte every 300 ms: each read comes well within the idle timeout,
    // but the command as a whole does not.
    let started = std::time::Instant::now();
    let trickle = tokio::spawn(async move {
        for b in b"MAIL FROM:<john@contoso.com>\r\n" {
            if w.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    line.clear();
    tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    trickle.abort();
    assert!(line.starts_with("421 4.4.2 "), "{line}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "the command deadline is the idle timeout: {took:?}"
    );
    relay.handle.stop().await;
}
