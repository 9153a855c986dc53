//! The admin endpoint is not an open door: requests for another `Host` (DNS
//! rebinding) are refused, the token guards `/reload` and the queue, and
//! slow, lingering or surplus connections are cut. Raw HTTP/1.1 over
//! loopback against a relay running in-process.

use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use attrelay::admin::AdminLimits;
use attrelay::relay::RelayHandle;
use support::Pki;
use support::relay::Setup;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const TOKEN: &str = "f3b1c0de5eed4a1d9c2e7b6a5f4e3d2c";
/// Slack for timing assertions on a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(3);

/// A relay with its admin endpoint on `127.0.0.1:0`.
struct Live {
    handle: RelayHandle,
    _pki: Pki,
}

impl Live {
    /// `token`: written to `admin.token` and named by `[admin] token_file`.
    /// `limits`: replaces the endpoint's defaults.
    async fn start(token: Option<&str>, limits: Option<AdminLimits>) -> Live {
        let mut setup = Setup::seed().set("delivery.directory", "outbox");
        if let Some(token) = token {
            write_private(&setup.path("admin.token"), &format!("{token}\n"));
            setup = setup.set("admin.token_file", "admin.token");
        }
        let mut config = setup.config();
        if let Some(limits) = limits {
            config.admin.as_mut().expect("admin enabled").limits = limits;
        }
        let handle = attrelay::relay::start(&config).await.unwrap();
        Live {
            handle,
            _pki: setup.into_pki(),
        }
    }

    fn admin(&self) -> SocketAddr {
        self.handle.admin.expect("admin endpoint enabled")
    }

    /// `127.0.0.1:PORT`, a Host the endpoint serves.
    fn host(&self) -> String {
        self.admin().to_string()
    }

    async fn generation(&self) -> u64 {
        let (code, text) = request(self.admin(), "GET", "/status", &self.host(), None).await;
        assert_eq!(code, 200, "{text}");
        serde_json::from_str::<serde_json::Value>(body(&text)).unwrap()["generation"]
            .as_u64()
            .unwrap()
    }
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Sends `head` (request line and header lines, each ending in CRLF) with
/// `Connection: close` and returns the status and the whole response.
async fn exchange(addr: SocketAddr, head: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut buf))
        .await
        .expect("the endpoint answers")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    authorization: Option<&str>,
) -> (u16, String) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n");
    if let Some(a) = authorization {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    exchange(addr, &head).await
}

fn body(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
}

/// Reads one response from a keep-alive connection: `None` once the
/// server has closed it.
async fn read_response(r: &mut BufReader<TcpStream>) -> Option<u16> {
    let mut status = String::new();
    if r.read_line(&mut status).await.ok()? == 0 {
        return None;
    }
    let mut length = 0;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).await.ok()?;
    status.get(9..12)?.parse().ok()
}

/// Waits until the server closes `s` (EOF or reset); returns how long that
/// took, or `None` if it is still open after `within`.
async fn closed_within(s: &mut (impl AsyncRead + Unpin), within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut sink))
        .await
        .ok()
        .map(|_| start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_another_host_are_refused() {
    let live = Live::start(None, None).await;
    let (admin, port) = (live.admin(), live.admin().port());
    // A page on attacker.example whose name now resolves to 127.0.0.1.
    for host in [
        "attacker.example".to_string(),
        format!("attacker.example:{port}"),
        format!("127.0.0.1.attacker.example:{port}"),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
    ] {
        let (code, text) = request(admin, "POST", "/reload", &host, None).await;
        assert_eq!(code, 421, "POST /reload with Host {host}: {text}");
        let (code, _) = request(admin, "GET", "/queue", &host, None).await;
        assert_eq!(code, 421, "GET /queue with Host {host}");
    }
    // No Host at all, and an absolute URI naming another host.
    let (code, _) = exchange(admin, "POST /reload HTTP/1.0\r\n").await;
    assert_eq!(code, 421, "a request without Host");
    let (code, _) = exchange(
        admin,
        &format!("POST http://attacker.example/reload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"),
    )
    .await;
    assert_eq!(code, 421, "an absolute URI naming another host");
    // A page on any site making the browser on the relay's host POST to
    // 127.0.0.1 (a form, or fetch in no-cors mode): the Host is right, but
    // the browser says where the request comes from.
    for marker in [
        "Origin: https://attacker.example\r\n",
        "Origin: null\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
        "Sec-Fetch-Site: same-site\r\n",
    ] {
        let (code, text) = exchange(
            admin,
            &format!("POST /reload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{marker}"),
        )
        .await;
        assert_eq!(code, 403, "{marker}: {text}");
    }
    assert_eq!(live.generation().await, 0, "no refused reload happened");

    // The same request addressed to the endpoint works (no token configured:
    // loopback is enough).
    let (code, text) = request(admin, "POST", "/reload", &format!("localhost:{port}"), None).await;
    assert_eq!(code, 200, "{text}");
    assert_eq!(live.generation().await, 1);
    live.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_host_names_are_served() {
    let live = Live::start(None, None).await;
    let (admin, port) = (live.admin(), live.admin().port());
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        format!("[::1]:{port}"),
    ] {
        let (code, text) = request(admin, "GET", "/status", &host, None).await;
        assert_eq!(code, 200, "GET /status with Host {host}: {text}");
        assert!(body(&text).contains("\"generation\""), "{text}");
    }
    live.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_reload_and_the_queue() {
    let live = Live::start(Some(TOKEN), None).await;
    let (admin, host) = (live.admin(), live.host());
    let right = format!("Bearer {TOKEN}");
    let wrong = format!("Bearer {}", TOKEN.replace('f', "e"));
    let basic = format!("Basic {TOKEN}");
    let longer = format!("Bearer {TOKEN}x");
    let lower_case = format!("bearer {TOKEN}");
    let guarded = [
        ("POST", "/reload"),
        ("GET", "/queue"),
        ("POST", "/queue/flush"),
    ];
    for (method, path) in guarded {
        for auth in [
            None,
            Some(wrong.as_str()),
            Some("Bearer"),
            Some(basic.as_str()),
            Some(longer.as_str()),
        ] {
            let (code, text) = request(admin, method, path, &host, auth).await;
            assert_eq!(code, 401, "{method} {path} with {auth:?}: {text}");
            assert!(
                text.to_ascii_lowercase()
                    .contains("\r\nwww-authenticate: bearer"),
                "{text}"
            );
        }
    }
    assert_eq!(
        live.generation().await,
        0,
        "no unauthorised reload happened"
    );

    for (method, path) in guarded {
        let (code, text) = request(admin, method, path, &host, Some(right.as_str())).await;
        assert_eq!(code, 200, "{method} {path} with the token: {text}");
    }
    // The scheme is case-insensitive.
    let (code, _) = request(admin, "GET", "/queue", &host, Some(lower_case.as_str())).await;
    assert_eq!(code, 200);
    assert_eq!(live.generation().await, 1, "the authorised reload happened");

    // Prometheus and health checks need no token.
    for path in ["/metrics", "/status"] {
        let (code, text) = request(admin, "GET", path, &host, None).await;
        assert_eq!(code, 200, "GET {path}: {text}");
    }
    // The token does not lift the Host check.
    let (code, _) = request(
        admin,
        "POST",
        "/reload",
        "attacker.example",
        Some(right.as_str()),
    )
    .await;
    assert_eq!(code, 421);
    assert_eq!(live.generation().await, 1);
    live.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_header_is_cut_at_the_header_timeout() {
    let header_timeout = Duration::from_secs(1);
    let limits = AdminLimits {
        header_timeout,
        ..AdminLimits::default()
    };
    let live = Live::start(None, Some(limits)).await;

    // Half a header, then nothing.
    let start = Instant::now();
    let mut s = TcpStream::connect(live.admin()).await.unwrap();
    s.write_all(b"GET /status HTTP/1.1\r\nHo").await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(header_timeout + SLACK, s.read_to_end(&mut got)).await;
    let elapsed = start.elapsed();
    assert!(read.is_ok(), "still open after {elapsed:?}");
    assert!(got.is_empty(), "no answer to half a request");
    assert!(
        elapsed >= header_timeout - Duration::from_millis(200),
        "closed after {elapsed:?}, before the header timeout: something else closed it"
    );

    // A header trickled a byte at a time: the timeout is for the whole header,
    // not between bytes.
    let s = TcpStream::connect(live.admin()).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let trickle = tokio::spawn(async move {
        if w.write_all(b"GET /status HTTP/1.1\r\nX-Slow: ")
            .await
            .is_err()
        {
            return;
        }
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if w.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let took = closed_within(&mut r, header_timeout + SLACK).await;
    assert!(took.is_some(), "a trickled header held the connection");
    trickle.abort();
    live.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lingering_connections_are_cut_at_the_deadline() {
    let limits = AdminLimits {
        header_timeout: Duration::from_secs(1),
        connection_deadline: Duration::from_secs(2),
        in_flight_grace: Duration::from_secs(1),
        ..AdminLimits::default()
    };
    let cap = limits.connection_deadline + limits.in_flight_grace + SLACK;
    let live = Live::start(None, Some(limits)).await;
    let host = live.host();

    // Keep-alive: a request every 300 ms, each well within the header timeout.
    let start = Instant::now();
    let mut conn = BufReader::new(TcpStream::connect(live.admin()).await.unwrap());
    let mut answered = 0;
    while start.elapsed() < cap {
        let req = format!("GET /status HTTP/1.1\r\nHost: {host}\r\n\r\n");
        if conn.get_mut().write_all(req.as_bytes()).await.is_err() {
            break;
        }
        match read_response(&mut conn).await {
            Some(code) => {
                assert_eq!(code, 200);
                answered += 1;
            }
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let elapsed = start.elapsed();
    assert!(answered >= 2, "keep-alive was served ({answered} answers)");
    assert!(
        elapsed < cap,
        "a keep-alive client held the connection for {elapsed:?}"
    );
    assert!(
        elapsed >= limits.connection_deadline - Duration::from_millis(200),
        "closed after {elapsed:?}, before the deadline"
    );

    // A body that never arrives: the answer does not wait for it (bodies are
    // never read) and the connection does not outlive the deadline.
    let start = Instant::now();
    let s = TcpStream::connect(live.admin()).await.unwrap();
    let (r, mut w) = s.into_split();
    w.write_all(
        format!("GET /status HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000000\r\n\r\nx")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut r = BufReader::new(r);
    let mut status = String::new();
    r.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
    // More body, slowly (only after the answer was read: bytes the server
    // leaves unread when it closes make it send a reset, which could
    // destroy the answer before this side read it).
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if w.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let took = closed_within(&mut r, cap).await;
    assert!(
        took.is_some(),
        "a client trickling a body held the connection for {:?}",
        start.elapsed()
    );
    trickle.abort();
    live.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_at_once() {
    let limits = AdminLimits {
        max_connections: 2,
        header_timeout: Duration::from_secs(60),
        ..AdminLimits::default()
    };
    let live = Live::start(None, Some(limits)).await;
    let admin = live.admin();
    let held = [
        TcpStream::connect(admin).await.unwrap(),
        TcpStream::connect(admin).await.unwrap(),
    ];
    let mut extra = TcpStream::connect(admin).await.unwrap();
    let took = closed_within(&mut extra, Duration::from_secs(10)).await;
    assert!(
        took.is_some(),
        "a connection over the limit was kept (the header timeout is 60 s)"
    );

    // The held connections are still served, and once they end their slots
    // are free again.
    let [mut first, second] = held;
    first
        .write_all(
            format!(
                "GET /status HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                live.host()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    first.read_to_end(&mut answer).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(admin).await.unwrap();
        let req = format!(
            "GET /status HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            live.host()
        );
        let mut answer = Vec::new();
        let served = s.write_all(req.as_bytes()).await.is_ok()
            && s.read_to_end(&mut answer).await.is_ok()
            && answer.starts_with(b"HTTP/1.1 200");
        if served {
            break;
        }
        assert!(Instant::now() < deadline, "the slots were never released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    live.handle.stop().await;
}
