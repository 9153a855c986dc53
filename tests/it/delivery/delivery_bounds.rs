//! What a next hop and a DNS answer can do to delivery, against the running
//! relay: a next hop that accepts and never speaks, a domain whose MX hosts
//! stall beside one that answers, forty stalling MX hosts, a next hop whose
//! STARTTLS an attacker stripped; mail to hundreds of domains under a low
//! open-file limit; next hops whose replies come late, twice, or not at all
//! after the end of data; and a queued message whose body is gone.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use attrelay::relay::RelayHandle;
use support::Pki;
use support::binary::Launch;
use support::dns::{self, Rec};
use support::relay::Setup;
use support::smtp::{Client, Sink};
use support::wire::CONTOSO_IP;

/// Listens on `addr`, accepts every connection and never says a word; the
/// count of connections taken.
async fn silent(addr: SocketAddr) -> Arc<AtomicUsize> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let count = taken.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(tcp);
        }
    });
    taken
}

/// The wire fixture with `server` lines in `[server]` and a `[delivery]`
/// section (retrying after 60 s unless it says otherwise).
fn setup(server: &str, delivery: &str) -> Setup {
    let setup = Setup::new().merge(&format!("[server]\n{server}\n\n[delivery]\n{delivery}\n"));
    if setup.has("delivery.retry_initial_secs") {
        setup
    } else {
        setup.set("delivery.retry_initial_secs", 60)
    }
}

/// A relay started in-process on [`setup`], and the PKI holding its files.
async fn relay(server: &str, delivery: &str) -> (RelayHandle, Pki) {
    setup(server, delivery).start_handle().await
}

/// Sends one message from contoso's server to `recipients`.
async fn send(relay: &RelayHandle, recipients: &[&str]) {
    send_from(relay, "john@contoso.com", recipients, "bounded").await;
}

/// Waits until the queue's first message has had an attempt; its last error.
async fn first_attempt(relay: &RelayHandle, within: Duration) -> String {
    let started = Instant::now();
    while started.elapsed() < within {
        let queued = relay.context.spool.entries();
        if let Some(e) = queued.first().filter(|e| e.attempts >= 1) {
            return e.last_error.clone().unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no delivery attempt ended within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_next_hop_holds_no_slot_and_shutdown_is_prompt() {
    let hop = SocketAddr::from(([127, 0, 7, 1], support::postfix::free_port()));
    let taken = silent(hop).await;
    let (relay, _pki) = relay(
        "shutdown_grace_secs = 2",
        &format!("next_hop = \"{hop}\"\ntimeout_secs = 1\nconcurrency = 1\n"),
    )
    .await;
    send(&relay, &["someone@internet.example"]).await;
    // The greeting never comes: the attempt ends at the step's timeout.
    let error = first_attempt(&relay, Duration::from_secs(10)).await;
    assert!(error.starts_with("451 4.4.1"), "{error}");
    assert!(taken.load(Ordering::SeqCst) >= 1);
    // Another attempt in flight when the relay stops: shutdown does not
    // wait for it beyond the grace period.
    relay.context.queue.flush();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), relay.stop())
        .await
        .expect("shutdown within the grace period");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_whose_mx_stalls_delays_no_other_domain() {
    let sink = Sink::start().await;
    let port = sink.addr.port();
    silent(SocketAddr::from(([127, 0, 7, 2], port))).await;
    let dns = dns::start(vec![
        // Sorted first: today's order of domains within an attempt.
        ("a-stalled.example", Rec::Mx(10, "mx.a-stalled.example")),
        ("mx.a-stalled.example", Rec::A([127, 0, 7, 2].into())),
        ("b-answers.example", Rec::Mx(10, "mx.b-answers.example")),
        ("mx.b-answers.example", Rec::A([127, 0, 0, 1].into())),
    ])
    .await;
    let (relay, _pki) = relay(
        "shutdown_grace_secs = 1",
        &format!(
            "next_hop = \"mx\"\ndns_servers = [\"{}\"]\nmx_port = {port}\ntimeout_secs = 30\n",
            dns.addr
        ),
    )
    .await;
    send(&relay, &["x@a-stalled.example", "y@b-answers.example"]).await;
    // The answering domain gets its mail at once, not after 30 s.
    let got = tokio::time::timeout(Duration::from_secs(8), sink.wait_for(1))
        .await
        .expect("the other domain is not held up");
    assert_eq!(got[0].recipients, ["y@b-answers.example"]);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_stalling_mx_hosts_cost_two_timeouts() {
    let port = support::postfix::free_port();
    let mut zone = Vec::new();
    let mut taken = Vec::new();
    for i in 1..=40u8 {
        let host: &'static str = Box::leak(format!("mx{i}.many.example").into_boxed_str());
        zone.push(("many.example", Rec::Mx(u16::from(i), host)));
        zone.push((host, Rec::A([127, 0, 8, i].into())));
        taken.push(silent(SocketAddr::from(([127, 0, 8, i], port))).await);
    }
    let dns = dns::start(zone).await;
    let (relay, _pki) = relay(
        "",
        &format!(
            "next_hop = \"mx\"\ndns_servers = [\"{}\"]\nmx_port = {port}\ntimeout_secs = 1\n",
            dns.addr
        ),
    )
    .await;
    let started = Instant::now();
    send(&relay, &["x@many.example"]).await;
    let error = first_attempt(&relay, Duration::from_secs(15)).await;
    // mx_session_limit (2): two hosts took the connection and stalled, then
    // the attempt gave up, instead of 40 timeouts.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let connected: usize = taken.iter().map(|t| t.load(Ordering::SeqCst)).sum();
    assert_eq!(connected, 2, "{error}");
    assert!(error.starts_with("451 4.4."), "{error}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_sends_nothing_to_a_hop_without_starttls() {
    // The sink offers no STARTTLS, as a hop behind an attacker who strips
    // it from the EHLO reply.
    let sink = Sink::start().await;
    let (relay, _pki) = relay(
        "",
        &format!("next_hop = \"{}\"\ntls = \"required\"\n", sink.addr),
    )
    .await;
    send(&relay, &["someone@internet.example"]).await;
    let error = first_attempt(&relay, Duration::from_secs(10)).await;
    assert!(error.starts_with("451 4.7.5"), "{error}");
    assert!(
        sink.envelope_lines.lock().unwrap().is_empty(),
        "no MAIL FROM in clear text"
    );
    assert!(sink.received.lock().unwrap().is_empty());
    relay.stop().await;
}

/// One connection to a scripted next hop: lines in, replies out, and what
/// was said on it.
struct HopConn {
    io: tokio::io::BufReader<tokio::net::TcpStream>,
}

impl HopConn {
    /// The next command line, `None` once the relay closed the connection.
    async fn line(&mut self) -> Option<String> {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        match self.io.read_line(&mut line).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end().to_ascii_uppercase()),
        }
    }

    async fn say(&mut self, text: &str) {
        use tokio::io::AsyncWriteExt;
        let _ = self.io.get_mut().write_all(text.as_bytes()).await;
    }

    /// The message after 354, up to and without the end of data.
    async fn message(&mut self) -> Option<Vec<u8>> {
        use tokio::io::AsyncBufReadExt;
        let mut data = Vec::new();
        loop {
            let mut l = Vec::new();
            if self.io.read_until(b'\n', &mut l).await.ok()? == 0 {
                return None;
            }
            if l == b".\r\n" {
                return Some(data);
            }
            data.extend_from_slice(&l);
        }
    }

    /// Answers like a well-behaved hop until the relay leaves; each
    /// message's recipients go to `delivered`.
    async fn behave(&mut self, pipelining: bool, delivered: &std::sync::Mutex<Vec<String>>) {
        self.behave_but(pipelining, delivered, None).await;
    }

    /// [`Self::behave`], but `second_answer`, when given, follows the
    /// answer to each message in a later segment.
    async fn behave_but(
        &mut self,
        pipelining: bool,
        delivered: &std::sync::Mutex<Vec<String>>,
        second_answer: Option<&str>,
    ) {
        let mut rcpts = Vec::new();
        while let Some(line) = self.line().await {
            if line.starts_with("EHLO") {
                let extra = if pipelining { "250-PIPELINING\r\n" } else { "" };
                self.say(&format!("250-hop.test\r\n{extra}250 8BITMIME\r\n"))
                    .await;
            } else if line.starts_with("MAIL") || line.starts_with("RSET") {
                rcpts.clear();
                self.say("250 2.1.0 ok\r\n").await;
            } else if let Some(r) = line.strip_prefix("RCPT TO:<") {
                rcpts.push(r.trim_end_matches('>').to_ascii_lowercase());
                self.say("250 2.1.5 ok\r\n").await;
            } else if line.starts_with("DATA") {
                self.say("354 go ahead\r\n").await;
                if self.message().await.is_none() {
                    return;
                }
                delivered.lock().unwrap().append(&mut rcpts);
                self.say("250 2.0.0 queued\r\n").await;
                if let Some(late) = second_answer {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    self.say(late).await;
                }
            } else if line.starts_with("QUIT") {
                self.say("221 2.0.0 bye\r\n").await;
                return;
            } else {
                self.say("502 5.5.1 not here\r\n").await;
            }
        }
    }
}

/// A next hop on `addr` that greets each connection and hands it, with its
/// number (from 0), to `script`.
async fn scripted<F, Fut>(addr: SocketAddr, script: F) -> SocketAddr
where
    F: Fn(usize, HopConn) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            let mut conn = HopConn {
                io: tokio::io::BufReader::new(tcp),
            };
            conn.say("220 hop.test ESMTP\r\n").await;
            tokio::spawn(script(n, conn));
            n += 1;
        }
    });
    addr
}

type Shared<T> = Arc<std::sync::Mutex<T>>;

/// Sends one message from contoso's server to `recipients`, from `sender`.
async fn send_from(relay: &RelayHandle, sender: &str, recipients: &[&str], body: &str) {
    let (mut c, _) = Client::connect_from(relay.addrs[0], CONTOSO_IP.parse().unwrap()).await;
    assert_eq!(c.cmd("EHLO onprem.contoso.com").await.code, 250);
    assert_eq!(c.cmd(&format!("MAIL FROM:<{sender}>")).await.code, 250);
    for r in recipients {
        assert_eq!(c.cmd(&format!("RCPT TO:<{r}>")).await.code, 250, "{r}");
    }
    let data = format!("Subject: {body}\r\n\r\n{body}\r\n.\r\n");
    assert_eq!(c.data(data.as_bytes()).await.code, 250);
}

/// Waits until `delivered` holds every one of `wanted`.
async fn delivered_all(delivered: &Shared<Vec<String>>, wanted: &[&str], within: Duration) {
    let started = Instant::now();
    while started.elapsed() < within {
        let got = delivered.lock().unwrap().clone();
        if wanted.iter().all(|w| got.iter().any(|g| g == w)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "not all of {wanted:?} delivered within {within:?}: {:?}",
        delivered.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_rcpt_reply_never_decides_another_recipient() {
    // The first connection answers the first RCPT after the relay's step
    // timeout, with a refusal that belongs to it alone; later connections
    // behave.
    let delivered: Shared<Vec<String>> = Arc::default();
    let closed_first: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let (d, closed) = (delivered.clone(), closed_first.clone());
    let hop = scripted(SocketAddr::from(([127, 0, 0, 1], 0)), move |n, mut c| {
        let (d, closed) = (d.clone(), closed.clone());
        async move {
            if n > 0 {
                return c.behave(false, &d).await;
            }
            let mut rcpts = 0;
            while let Some(line) = c.line().await {
                if line.starts_with("EHLO") {
                    c.say("250 hop.test\r\n").await;
                } else if line.starts_with("MAIL") {
                    c.say("250 2.1.0 ok\r\n").await;
                } else if line.starts_with("RCPT") {
                    rcpts += 1;
                    if rcpts == 1 {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        c.say("550 5.1.1 <first@internet.example>: no such user\r\n")
                            .await;
                    } else {
                        c.say("250 2.1.5 ok\r\n").await;
                    }
                } else {
                    c.say("250 2.0.0 ok\r\n").await;
                }
            }
            closed.store(true, Ordering::SeqCst);
        }
    })
    .await;
    let (relay, _pki) = relay(
        "",
        &format!(
            "next_hop = \"{hop}\"\ntimeout_secs = 1\nretry_initial_secs = 1\nretry_max_secs = 1\n"
        ),
    )
    .await;
    send(
        &relay,
        &["first@internet.example", "second@internet.example"],
    )
    .await;
    // Both are delivered on a later connection: the late 550 decided no
    // one, and no DSN went out.
    delivered_all(
        &delivered,
        &["first@internet.example", "second@internet.example"],
        Duration::from_secs(20),
    )
    .await;
    assert!(
        closed_first.load(Ordering::SeqCst),
        "the connection whose reply timed out was closed, not reused"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = delivered.lock().unwrap().clone();
    assert!(
        !got.iter().any(|r| r == "john@contoso.com"),
        "no DSN: {got:?}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_reply_never_decides_another_message() {
    for pipelining in [false, true] {
        // The first connection answers the end of data twice: 250, then a
        // 554 in a later segment, which must not answer the next MAIL.
        let delivered: Shared<Vec<String>> = Arc::default();
        let connections: Arc<AtomicUsize> = Arc::default();
        let (d, count) = (delivered.clone(), connections.clone());
        let hop = scripted(SocketAddr::from(([127, 0, 0, 1], 0)), move |n, mut c| {
            let d = d.clone();
            count.fetch_add(1, Ordering::SeqCst);
            async move {
                let late = (n == 0).then_some("554 5.7.1 this message is refused after all\r\n");
                c.behave_but(pipelining, &d, late).await;
            }
        })
        .await;
        let (relay, _pki) = relay(
            "",
            &format!("next_hop = \"{hop}\"\nretry_initial_secs = 1\nretry_max_secs = 1\n"),
        )
        .await;
        send(&relay, &["one@internet.example"]).await;
        delivered_all(
            &delivered,
            &["one@internet.example"],
            Duration::from_secs(10),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        send_from(
            &relay,
            "jane@contoso.com",
            &["two@internet.example"],
            "second",
        )
        .await;
        delivered_all(
            &delivered,
            &["two@internet.example"],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "pipelining {pipelining}: the connection that spoke unasked was not reused"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            relay.context.spool.entries().is_empty(),
            "pipelining {pipelining}: nothing failed or left queued"
        );
        let got = delivered.lock().unwrap().clone();
        assert!(
            !got.iter().any(|r| r.ends_with("@contoso.com")),
            "no DSN: {got:?}"
        );
        relay.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_end_of_data_is_not_offered_to_a_second_mx() {
    let sink = Sink::start().await;
    let port = sink.addr.port();
    // The preferred MX host takes the whole message, final dot included,
    // and hangs up without a reply: it may have queued it.
    let took: Arc<AtomicUsize> = Arc::default();
    let counter = took.clone();
    scripted(SocketAddr::from(([127, 0, 6, 9], port)), move |_, mut c| {
        let counter = counter.clone();
        async move {
            while let Some(line) = c.line().await {
                if line.starts_with("DATA") {
                    c.say("354 go ahead\r\n").await;
                    if c.message().await.is_some() {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    return;
                }
                c.say("250 ok\r\n").await;
            }
        }
    })
    .await;
    let dns = dns::start(vec![
        ("internet.example", Rec::Mx(10, "mx1.internet.example")),
        ("internet.example", Rec::Mx(20, "mx2.internet.example")),
        ("mx1.internet.example", Rec::A([127, 0, 6, 9].into())),
        ("mx2.internet.example", Rec::A([127, 0, 0, 1].into())),
    ])
    .await;
    let (relay, _pki) = relay(
        "",
        &format!(
            "next_hop = \"mx\"\ndns_servers = [\"{}\"]\nmx_port = {port}\ntimeout_secs = 2\n",
            dns.addr
        ),
    )
    .await;
    send(&relay, &["someone@internet.example"]).await;
    let error = first_attempt(&relay, Duration::from_secs(15)).await;
    assert!(error.starts_with("451 4.4.2"), "{error}");
    assert!(error.contains("may have the message"), "{error}");
    assert_eq!(took.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        sink.received.lock().unwrap().is_empty(),
        "not sent to the second MX host in the same attempt"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_data_is_reset_on_a_hop_without_pipelining() {
    // The sink offers no PIPELINING, refuses DATA for "nodata" recipients,
    // and answers MAIL with 503 while a transaction is open.
    let sink = Sink::start().await;
    let (relay, _pki) = relay("", &format!("next_hop = \"{}\"\n", sink.addr)).await;
    send(&relay, &["nodata@internet.example"]).await;
    // The refusal is permanent: its DSN comes back through the same hop.
    let dsn = sink.wait_for(1).await;
    assert_eq!(dsn[0].sender, "", "{dsn:?}");
    assert_eq!(dsn[0].recipients, ["john@contoso.com"]);
    send_from(
        &relay,
        "jane@contoso.com",
        &["after@internet.example"],
        "after",
    )
    .await;
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let got = sink.received.lock().unwrap().clone();
            if got
                .iter()
                .any(|m| m.recipients == ["after@internet.example"])
            {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the next message is delivered");
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        sink.connections.load(Ordering::SeqCst),
        1,
        "RSET after the refused DATA: one connection carried every transaction"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_whose_body_is_gone_leaves_the_queue_at_recovery() {
    let hop = SocketAddr::from(([127, 0, 0, 1], support::postfix::free_port()));
    let setup = setup("", &format!("next_hop = \"{hop}\"\n"));
    let config = setup.config();
    let relay = attrelay::relay::start(&config).await.unwrap();
    send(&relay, &["someone@internet.example"]).await;
    relay.stop().await;
    let spool = setup.path("spool");
    for body in std::fs::read_dir(spool.join("msg")).unwrap() {
        std::fs::remove_file(body.unwrap().path()).unwrap();
    }
    let queued: Vec<_> = std::fs::read_dir(spool.join("queue")).unwrap().collect();
    assert_eq!(queued.len(), 1);

    let relay = attrelay::relay::start(&config).await.unwrap();
    assert_eq!(
        std::fs::read_dir(spool.join("queue")).unwrap().count(),
        0,
        "nothing stranded in queue/"
    );
    let aside: Vec<String> = std::fs::read_dir(spool.join("corrupt"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(aside.iter().any(|f| f.ends_with(".json")), "{aside:?}");
    assert_eq!(relay.metrics.spool_set_aside.get(), 1);
    assert!(relay.context.spool.entries().is_empty());
    relay.stop().await;
}

/// Mail to hundreds of domains, each MX host under a name of its own, from
/// the `attrelay` binary under `ulimit -n 256` (its plan: 222).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_stay_bounded_under_a_low_open_file_limit() {
    const DOMAINS: usize = 200;
    const MAX_CONNECTIONS: usize = 24;
    const MAX_IDLE: usize = 8;
    let sink = Sink::start().await;
    let port = sink.addr.port();
    let mut zone = vec![
        ("elsewhere.example", Rec::Mx(10, "mx.elsewhere.example")),
        ("mx.elsewhere.example", Rec::A([127, 0, 0, 1].into())),
    ];
    let mut recipients = Vec::new();
    for i in 0..DOMAINS {
        let domain: &'static str = Box::leak(format!("d{i}.example").into_boxed_str());
        let host: &'static str = Box::leak(format!("mx.d{i}.example").into_boxed_str());
        zone.push((domain, Rec::Mx(10, host)));
        zone.push((host, Rec::A([127, 0, 0, 1].into())));
        recipients.push(format!("user@{domain}"));
    }
    let dns = dns::start(zone).await;
    let setup = setup(
        "max_sessions = 16\nmax_recipients = 500",
        &format!(
            "next_hop = \"mx\"\ndns_servers = [\"{}\"]\nmx_port = {port}\nconcurrency = 2\nmax_connections = {MAX_CONNECTIONS}\nmax_idle_connections = {MAX_IDLE}\nconnection_idle_secs = 2\ntimeout_secs = 5\n",
            dns.addr
        ),
    );
    let config = setup.write();
    let relay = Launch::new(Some(&config)).open_files(256).start().await;
    let addr = relay.addr;

    // Watch the connections the hop sees open.
    let (open, most) = (sink.open.clone(), Arc::new(AtomicUsize::new(0)));
    let watcher = {
        let most = most.clone();
        tokio::spawn(async move {
            loop {
                most.fetch_max(open.load(Ordering::SeqCst), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let to: Vec<&str> = recipients.iter().map(String::as_str).collect();
    let (mut c, _) = Client::connect_from(addr, CONTOSO_IP.parse().unwrap()).await;
    assert_eq!(c.cmd("EHLO onprem.contoso.com").await.code, 250);
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    for r in &to {
        assert_eq!(c.cmd(&format!("RCPT TO:<{r}>")).await.code, 250, "{r}");
    }
    assert_eq!(c.data(b"Subject: many\r\n\r\nx\r\n.\r\n").await.code, 250);
    // Other mail keeps flowing meanwhile: a new session is answered, its
    // message accepted and delivered.
    let (mut other, greeting) = Client::connect_from(addr, CONTOSO_IP.parse().unwrap()).await;
    assert_eq!(greeting.code, 220);
    assert_eq!(other.cmd("EHLO onprem.contoso.com").await.code, 250);
    assert_eq!(other.cmd("MAIL FROM:<jane@contoso.com>").await.code, 250);
    assert_eq!(other.cmd("RCPT TO:<x@elsewhere.example>").await.code, 250);
    assert_eq!(
        other.data(b"Subject: other\r\n\r\ny\r\n.\r\n").await.code,
        250
    );

    let all_in = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let got: usize = sink
                .received
                .lock()
                .unwrap()
                .iter()
                .map(|m| m.recipients.len())
                .sum();
            if got > DOMAINS {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        all_in.is_ok(),
        "not every domain got its mail: {}",
        relay.log()
    );
    assert!(
        most.load(Ordering::SeqCst) <= MAX_CONNECTIONS,
        "at most max_connections open at once: {}",
        most.load(Ordering::SeqCst)
    );
    // Done: what stays open is the idle cap at most, then nothing after
    // the idle time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = sink.open.load(Ordering::SeqCst);
    assert!(idle <= MAX_IDLE, "{idle} idle connections, cap {MAX_IDLE}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        sink.open.load(Ordering::SeqCst),
        0,
        "idle connections swept"
    );
    watcher.abort();
    let logs = relay.log();
    assert!(!logs.contains("Too many open files"), "{logs}");
    assert!(!logs.contains("4.4.5"), "the budget sufficed: {logs}");
}

/// The binary under `ulimit -n 128` with the fixture's defaults (256
/// sessions, 128 connections to next hops, which would need about 900
/// files): it starts, says what it lowered, answers sessions past the
/// lowered bound with `421`, and still delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_open_file_limit_scales_the_relay_down_instead_of_failing() {
    let sink = Sink::start().await;
    let setup = setup("", &format!("next_hop = \"{}\"\n", sink.addr));
    let config = setup.write();
    let relay = Launch::new(Some(&config)).open_files(128).start().await;
    let addr = relay.addr;
    // Waited for: the log is written out a tenth of a second at a time.
    relay
        .log_until(|l| l.contains("serving with max_sessions = "))
        .await;
    // Sessions up to the lowered bound, then 421 for the next.
    let mut held = Vec::new();
    let refused = loop {
        let (c, greeting) = Client::connect_from(addr, CONTOSO_IP.parse().unwrap()).await;
        if greeting.code != 220 {
            break greeting;
        }
        held.push(c);
        assert!(held.len() <= 128, "no bound on sessions");
    };
    assert!(refused.is(421, "4.3.2"), "{refused:?}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut c, _) = Client::connect_from(addr, CONTOSO_IP.parse().unwrap()).await;
    assert_eq!(c.cmd("EHLO onprem.contoso.com").await.code, 250);
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<x@internet.example>").await.code, 250);
    assert_eq!(c.data(b"Subject: low\r\n\r\nx\r\n.\r\n").await.code, 250);
    let got = tokio::time::timeout(Duration::from_secs(20), sink.wait_for(1))
        .await
        .expect("delivered under the low limit");
    assert_eq!(got[0].recipients, ["x@internet.example"]);
    assert!(!relay.log().contains("Too many open files"));
}

/// A next hop that refuses the connection: the error reads as words with
/// the address it was (`connect to 127.0.0.1:PORT: connection refused`) in
/// the queue's last error, never Rust's debug text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_reported_in_words_with_its_address() {
    let hop = SocketAddr::from(([127, 0, 0, 1], support::postfix::free_port()));
    let (relay, _pki) = relay("", &format!("next_hop = \"{hop}\"\n")).await;
    send(&relay, &["someone@internet.example"]).await;
    let error = first_attempt(&relay, Duration::from_secs(10)).await;
    assert_eq!(
        error,
        format!("451 4.4.2 connect to {hop}: connection refused")
    );
    relay.stop().await;
}
