//! The Postfix policy-delegation front end over the wire: requests written as
//! Postfix writes them, over loopback TCP and a UNIX-domain socket, answered
//! by the compiled default policy inside the running relay. Postfix itself
//! talking to it is in `tests/it/interop/postfix.rs`.

use crate::support;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use attrelay::relay::RelayHandle;
use attrelay_policy::model::{Action, ClientCertificate, SessionFacts, TlsFacts, Verdict};
use attrelay_policy::scenarios::{fixture, scenarios};
use attrelay_policy::{Session, Settings};
use support::Pki;
use support::relay::Setup;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A relay with `[policyd]` (and `policyd_lines` in it) on loopback.
struct Policyd {
    handle: RelayHandle,
    addr: SocketAddr,
    _pki: Pki,
}

impl Policyd {
    async fn start(policyd_lines: &str, sections: &str) -> Policyd {
        let mut setup = Setup::seed()
            .set("delivery.directory", "out")
            .merge(&format!("[policyd]\n{policyd_lines}\n"))
            .merge(sections);
        if !setup.has("policyd.listen") {
            setup = setup.set("policyd.listen", vec!["127.0.0.1:0"]);
        }
        let (handle, pki) = setup.start_handle().await;
        let addr = handle.policyd.first().copied().unwrap_or(handle.addrs[0]);
        Policyd {
            handle,
            addr,
            _pki: pki,
        }
    }

    async fn connect(&self) -> Conn {
        Conn::new(TcpStream::connect(self.addr).await.unwrap())
    }

    /// Connects from `source`, another loopback address: another client.
    async fn connect_from(&self, source: &str) -> Conn {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(source.parse().unwrap(), 0))
            .unwrap();
        Conn::new(socket.connect(self.addr).await.unwrap())
    }
}

/// One policy-delegation connection, as Postfix holds it.
struct Conn {
    r: BufReader<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    w: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
}

impl Conn {
    fn new(s: TcpStream) -> Conn {
        let (r, w) = s.into_split();
        Conn {
            r: BufReader::new(Box::new(r)),
            w: Box::new(w),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
    }

    /// The reply's `action=` value, or `None` if the server closed the
    /// connection without answering (within 5 s).
    async fn reply(&mut self) -> Option<String> {
        let mut action = None;
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(5), self.r.read_line(&mut line))
                .await
                .expect("the server answers or closes within 5 s")
                .unwrap_or(0);
            if n == 0 {
                assert!(action.is_none(), "a reply cut short: {action:?}");
                return None;
            }
            if line == "\n" {
                return Some(action.expect("a reply has an action"));
            }
            let value = line
                .strip_prefix("action=")
                .unwrap_or_else(|| panic!("unexpected reply line {line:?}"));
            assert!(action.is_none(), "one attribute per reply");
            action = Some(value.trim_end_matches('\n').to_string());
        }
    }

    async fn ask(&mut self, attrs: &[(&str, &str)]) -> String {
        self.send(request(attrs).as_bytes()).await;
        self.reply().await.expect("an answer")
    }
}

/// A request with the attributes Postfix 3.7 sends, overridden by `attrs`.
fn request(attrs: &[(&str, &str)]) -> String {
    let mut base: Vec<(&str, &str)> = vec![
        ("request", "smtpd_access_policy"),
        ("protocol_state", "RCPT"),
        ("protocol_name", "ESMTP"),
        ("client_address", "203.0.113.7"),
        ("client_name", "unknown"),
        ("client_port", "40000"),
        ("reverse_client_name", "unknown"),
        ("server_address", "127.0.0.1"),
        ("server_port", "25"),
        ("helo_name", "mail.contoso.com"),
        ("sender", "john@contoso.com"),
        ("recipient", "someone@internet.example"),
        ("recipient_count", "0"),
        ("queue_id", ""),
        ("instance", "1a2b.6b0305fc.7a87e.0"),
        ("size", "0"),
        ("etrn_domain", ""),
        ("stress", ""),
        ("sasl_method", ""),
        ("sasl_username", ""),
        ("sasl_sender", ""),
        ("ccert_subject", ""),
        ("ccert_issuer", ""),
        ("ccert_fingerprint", ""),
        ("ccert_pubkey_fingerprint", ""),
        ("encryption_protocol", ""),
        ("encryption_cipher", ""),
        ("encryption_keysize", "0"),
        ("policy_context", ""),
    ];
    for (k, v) in attrs {
        match base.iter_mut().find(|(n, _)| n == k) {
            Some(slot) => slot.1 = v,
            None => base.push((k, v)),
        }
    }
    let mut s = String::new();
    for (k, v) in base {
        writeln!(s, "{k}={v}").unwrap();
    }
    s.push('\n');
    s
}

/// Postfix's xtext for ccert_* values.
fn xtext(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
                (b as char).to_string()
            } else {
                format!("+{b:02X}")
            }
        })
        .collect()
}

/// The `action=` our front end must give for a verdict.
fn expected_action(v: &Verdict) -> String {
    if v.action == Action::Accept {
        "OK".into()
    } else {
        v.reply_line()
    }
}

/// What Postfix can tell about a session: the CN of a verified certificate,
/// only the fingerprint of an unverified one, no SANs at all.
fn as_postfix_sees_it(facts: &SessionFacts) -> SessionFacts {
    let tls = facts.tls.as_ref().map(|t| TlsFacts {
        protocol: t.protocol.clone(),
        cipher: t.cipher.clone(),
        client_certificate: t.client_certificate.as_ref().map(|c| ClientCertificate {
            verified: c.verified,
            common_names: if c.verified {
                c.common_names.iter().take(1).cloned().collect()
            } else {
                vec![]
            },
            dns_names: vec![],
            ..c.clone()
        }),
    });
    SessionFacts {
        tls,
        ..facts.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenarios_as_postfix_requests_get_the_policys_verdicts() {
    let pd = Policyd::start("", "").await;
    let mut conn = pd.connect().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (mut compared, mut accepted, mut refused, mut with_cert) = (0, 0, 0, 0);
    // Every request on the one connection, as Postfix reuses it.
    for s in scenarios().into_iter().filter(|s| s.settings.is_empty()) {
        let mut facts = as_postfix_sees_it(&s.facts);
        facts.time = now;
        let mut native = Session::open(fixture(), Settings::default(), facts.clone());
        let mail = native.mail_from(s.sender);
        let ip = facts.client_ip.to_string();
        let (proto, cipher, subject, issuer, fingerprint) = match &facts.tls {
            Some(t) => {
                let c = t.client_certificate.as_ref();
                (
                    t.protocol.clone(),
                    t.cipher.clone(),
                    c.and_then(|c| c.common_names.first())
                        .map(|n| xtext(n))
                        .unwrap_or_default(),
                    c.filter(|c| c.verified)
                        .map(|c| xtext(&c.issuer))
                        .unwrap_or_default(),
                    c.map(|c| c.sha256_fingerprint.clone()).unwrap_or_default(),
                )
            }
            None => Default::default(),
        };
        with_cert += usize::from(!fingerprint.is_empty());
        for (rcpt, _) in &s.recipients {
            let expected = if mail.action == Action::Accept {
                native.rcpt_to(rcpt)
            } else {
                mail.clone()
            };
            let got = conn
                .ask(&[
                    ("client_address", &ip),
                    ("helo_name", &facts.helo),
                    ("sender", s.sender),
                    ("recipient", rcpt),
                    ("encryption_protocol", &proto),
                    ("encryption_cipher", &cipher),
                    ("ccert_subject", &subject),
                    ("ccert_issuer", &issuer),
                    ("ccert_fingerprint", &fingerprint),
                    ("instance", s.name),
                ])
                .await;
            assert_eq!(
                got,
                expected_action(&expected),
                "scenario {:?}, recipient {rcpt}",
                s.name
            );
            compared += 1;
            if expected.action == Action::Accept {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
    }
    println!(
        "{compared} recipients compared: {accepted} OK, {refused} refused, {with_cert} with a client certificate"
    );
    assert!(compared >= 25 && accepted >= 5 && refused >= 5 && with_cert >= 5);
    assert_eq!(
        pd.handle.metrics.policyd_requests.get(),
        compared as u64,
        "every request answered and counted"
    );
    pd.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_postfix_is_told() {
    let pd = Policyd::start("", "").await;
    let mut c = pd.connect().await;
    // Contoso's on-premises IP, contoso's domain: relaying permitted.
    assert_eq!(c.ask(&[]).await, "OK");
    // An address no connector knows.
    let unknown = c.ask(&[("client_address", "198.51.100.9")]).await;
    assert!(
        unknown.starts_with("550 5.7.64 TenantAttribution; Relay Access Denied"),
        "{unknown}"
    );
    // An NDR from an unknown IP with a certificate Postfix verified, named
    // like contoso's certificate connector: attributed by the certificate.
    let tls = [
        ("client_address", "198.51.100.9"),
        ("sender", ""),
        ("encryption_protocol", "TLSv1.3"),
        ("encryption_cipher", "TLS_AES_256_GCM_SHA384"),
        ("ccert_subject", "mail.contoso.com"),
        ("ccert_issuer", "Contoso+20Issuing+20CA"),
        ("ccert_fingerprint", "75:84:AB:71:CC:D7"),
    ];
    assert_eq!(c.ask(&tls).await, "OK");
    // The same certificate unverified by Postfix (no subject, only the
    // fingerprint) authenticates nothing.
    let mut unverified = tls.to_vec();
    unverified[4].1 = "";
    unverified[5].1 = "";
    let r = c.ask(&unverified).await;
    assert!(r.starts_with("550 5.7.64 "), "{r}");
    // IPv6, and the MAIL FROM stage: acceptance there is only "no objection".
    assert_eq!(
        c.ask(&[
            ("client_address", "2001:db8::25"),
            ("protocol_state", "MAIL"),
            ("recipient", "")
        ])
        .await,
        "DUNNO"
    );
    // Stages with nothing to attribute.
    for state in ["CONNECT", "EHLO", "DATA", "END-OF-MESSAGE", "VRFY", "ETRN"] {
        assert_eq!(
            c.ask(&[
                ("protocol_state", state),
                ("client_address", "198.51.100.9")
            ])
            .await,
            "DUNNO",
            "{state}"
        );
    }
    // Unknown attributes are ignored, as the protocol requires.
    assert_eq!(c.ask(&[("future_attribute", "x")]).await, "OK");
    // Incoming mail for contoso from anyone is permitted, but not with a
    // route onward in the local part (Postfix's internal, unquoted forms).
    let incoming = [
        ("client_address", "198.51.100.9"),
        ("sender", "a@internet.example"),
        ("recipient", "kate@contoso.com"),
    ];
    assert_eq!(c.ask(&incoming).await, "OK");
    for routed in [
        "victim%evil.example@contoso.com",
        "evil.example!victim@contoso.com",
        "victim@evil.example@contoso.com",
    ] {
        let mut r = incoming.to_vec();
        r[2].1 = routed;
        let answer = c.ask(&r).await;
        assert!(answer.starts_with("550 5.7.1 "), "{routed}: {answer}");
    }
    pd.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_action_dunno_leaves_permission_to_postfix() {
    let pd = Policyd::start("accept_action = \"DUNNO\"", "").await;
    let mut c = pd.connect().await;
    assert_eq!(c.ask(&[]).await, "DUNNO");
    let r = c.ask(&[("client_address", "198.51.100.9")]).await;
    assert!(r.starts_with("550 5.7.64 "), "refusals still refuse: {r}");
    pd.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_get_no_answer_and_the_connection_is_closed() {
    let pd = Policyd::start("", "").await;
    let good = request(&[]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a line without '='",
            b"request=smtpd_access_policy\nnonsense\n\n".to_vec(),
        ),
        (
            "an empty name",
            b"request=smtpd_access_policy\n=x\n\n".to_vec(),
        ),
        (
            "a NUL byte",
            good.replacen("sender=", "sender=a\0", 1).into_bytes(),
        ),
        ("invalid UTF-8", {
            let mut b = b"request=smtpd_access_policy\nsender=\xff\n".to_vec();
            b.extend_from_slice(good.as_bytes());
            b
        }),
        ("an empty request", b"\n".to_vec()),
        (
            "a 5000-byte line",
            format!("sender={}\n\n", "a".repeat(5000)).into_bytes(),
        ),
        ("200 attributes", {
            let mut s = good.trim_end().to_string();
            for i in 0..200 {
                write!(s, "\nx{i}=y").unwrap();
            }
            s.push_str("\n\n");
            s.into_bytes()
        }),
        (
            "another request type",
            good.replacen("smtpd_access_policy", "other_policy", 1)
                .into_bytes(),
        ),
        (
            "no request type",
            good.replacen("request=smtpd_access_policy\n", "", 1)
                .into_bytes(),
        ),
        (
            "RCPT without a client address",
            good.replacen("client_address=203.0.113.7\n", "", 1)
                .into_bytes(),
        ),
        (
            "a client address that is not an IP",
            good.replacen("client_address=203.0.113.7", "client_address=unknown", 1)
                .into_bytes(),
        ),
        (
            "RCPT without a recipient",
            good.replacen("recipient=someone@internet.example", "recipient=", 1)
                .into_bytes(),
        ),
    ];
    for (what, bytes) in &cases {
        let mut c = pd.connect().await;
        c.send(bytes).await;
        assert_eq!(c.reply().await, None, "{what}: closed without an answer");
    }
    assert_eq!(
        pd.handle.metrics.policyd_errors.get(),
        cases.len() as u64,
        "every violation counted"
    );
    // A good request in front of a bad one is answered; the bad one ends it.
    let mut c = pd.connect().await;
    c.send(format!("{good}request=smtpd_access_policy\nbroken\n\n").as_bytes())
        .await;
    assert_eq!(c.reply().await.as_deref(), Some("OK"));
    assert_eq!(c.reply().await, None);
    // And the service goes on serving.
    assert_eq!(pd.connect().await.ask(&[]).await, "OK");
    pd.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idle_and_surplus_connections_are_bounded() {
    let pd = Policyd::start(
        "max_connections = 2\nrequest_timeout_secs = 1\nidle_timeout_secs = 2",
        "",
    )
    .await;
    // A request that trickles in is dropped at the request deadline.
    let mut slow = pd.connect().await;
    let started = Instant::now();
    slow.send(b"request=smtpd_access_policy\nprotocol_state=RC")
        .await;
    assert_eq!(slow.reply().await, None);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    // A pause longer than the request deadline before a request is idleness,
    // not slowness: the request is answered.
    let mut paused = pd.connect().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let whole = request(&[]);
    let (first, second) = whole.split_at(whole.len() / 2);
    paused.send(first.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    paused.send(second.as_bytes()).await;
    assert_eq!(paused.reply().await.as_deref(), Some("OK"));
    drop(paused);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Two connections fill the limit; a third takes the slot of the one
    // quiet longest, which is closed.
    let mut a = pd.connect().await;
    let mut b = pd.connect().await;
    assert_eq!(a.ask(&[]).await, "OK");
    assert_eq!(b.ask(&[]).await, "OK");
    let mut third = pd.connect().await;
    assert_eq!(third.ask(&[]).await, "OK", "room made for the newcomer");
    assert_eq!(
        a.reply().await,
        None,
        "the least recently active was closed"
    );
    // Idle connections are closed after the idle timeout, freeing the slots.
    let started = Instant::now();
    assert_eq!(b.reply().await, None);
    assert_eq!(third.reply().await, None);
    assert!(started.elapsed() < Duration::from_secs(4));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pd.connect().await.ask(&[]).await, "OK");
    pd.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_policy_answers_451_never_ok() {
    let rogue = support::build_component("rogue-policy");
    let pd = Policyd::start(
        "",
        &format!(
            "[policy]\ncomponent = {:?}\ntimeout_ms = 100\n[policy.settings]\nbehavior = \"loop\"\nstage = \"rcpt-to\"\nonly = \"trigger\"\n",
            rogue.display().to_string()
        ),
    )
    .await;
    let mut c = pd.connect().await;
    let started = Instant::now();
    let r = c.ask(&[("recipient", "trigger@internet.example")]).await;
    assert!(r.starts_with("451 4.3.5 "), "{r}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(pd.handle.metrics.policy_failures.get(), 1);
    pd.handle.stop().await;
}

/// A local user's process (run as `nobody`: the tests run as root) that
/// connects to `addr` from each of `sources`, asks one request on each,
/// then asks again on each and holds every connection until its standard
/// input closes. Returns the process and, per connection in order, whether
/// it is still served at the end.
fn hog_as_nobody(addr: SocketAddr, sources: &[&str]) -> (std::process::Child, Vec<bool>) {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    assert_eq!(
        rustix::process::getuid().as_raw(),
        0,
        "this test runs a process as another user: it needs root, as CI has"
    );
    let script = r#"
import socket, sys
host, port, request = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
held = []
for source in sys.argv[4:]:
    s = socket.socket()
    s.bind((source, 0))
    s.connect((host, port))
    s.settimeout(5)
    try:
        s.sendall(request)
        answer = s.recv(4096)
    except OSError:
        answer = b""
    held.append(s)
# Which are still served: ask again on each.
for s in held:
    try:
        s.sendall(request)
        answer = s.recv(4096)
    except OSError:
        answer = b""
    print("served" if answer.startswith(b"action=") else "closed", flush=True)
sys.stdin.read()
"#;
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(request(&[]))
        .args(sources)
        .uid(65534)
        .gid(65534)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 as nobody");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let answered = sources
        .iter()
        .map(|_| lines.next().unwrap().unwrap() == "served")
        .collect();
    (child, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_local_user_cannot_take_every_connection_from_many_addresses() {
    // Any local user can bind any 127/8 address: counted by the user that
    // owns the socket, not by address, it gets its share and no more.
    let pd = Policyd::start(
        "max_connections = 8
max_connections_per_client = 2",
        "",
    )
    .await;
    let sources: Vec<String> = (9..17).map(|i| format!("127.0.0.{i}")).collect();
    let addr = pd.addr;
    let (mut hog, answered) = tokio::task::spawn_blocking(move || {
        let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
        hog_as_nobody(addr, &sources)
    })
    .await
    .unwrap();
    // Each new connection took the place of the user's quietest: the
    // user holds two at the end, the newest, whatever its addresses.
    assert_eq!(
        answered,
        [false, false, false, false, false, false, true, true],
        "the user's two connections, whatever its addresses"
    );
    // Postfix (another user) is answered while the hog holds its share;
    // and a client of the test's own user at its share gets a connection
    // too, in place of its own quietest.
    // (A pause between them makes which is quietest unambiguous.)
    let mut postfix = pd.connect_from("127.0.0.1").await;
    assert_eq!(postfix.ask(&[]).await, "OK");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = pd.connect_from("127.0.0.2").await;
    assert_eq!(again.ask(&[]).await, "OK");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = pd.connect_from("127.0.0.3").await;
    assert_eq!(third.ask(&[]).await, "OK");
    postfix.send(request(&[]).as_bytes()).await;
    assert_eq!(postfix.reply().await, None, "its quietest gave way");
    drop(hog.stdin.take());
    let _ = hog.wait();
    pd.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_service_closes_its_least_recently_active_connection_for_postfix() {
    // Clients that fill every slot and keep asking now and then (which
    // defeats the idle timeout): a new connection still gets a slot, taken
    // from the one that has been quiet longest.
    let pd = Policyd::start(
        "max_connections = 4
max_connections_per_client = 64",
        "",
    )
    .await;
    let mut hog = Vec::new();
    for i in 0..4 {
        let mut c = pd.connect_from(&format!("127.0.0.{}", 20 + i)).await;
        assert_eq!(c.ask(&[]).await, "OK");
        hog.push(c);
    }
    // The most active of them asks again just before Postfix connects.
    for c in hog.iter_mut().skip(1) {
        assert_eq!(c.ask(&[]).await, "OK");
    }
    let mut postfix = pd.connect_from("127.0.0.1").await;
    assert_eq!(postfix.ask(&[]).await, "OK", "Postfix is answered");
    assert_eq!(pd.handle.metrics.policyd_evicted.get(), 1);
    // The one closed is the quietest; the others still answer.
    hog[0].send(request(&[]).as_bytes()).await;
    assert_eq!(
        hog[0].reply().await,
        None,
        "the least recently active was closed"
    );
    for c in hog.iter_mut().skip(1) {
        assert_eq!(c.ask(&[]).await, "OK");
    }
    pd.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_domain_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("policy.sock");
    // A stale socket from a previous run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    // A group other than ours, by number: the socket is created with it
    // (and with its mode) before anyone can reach it.
    let pd = Policyd::start(
        &format!(
            "listen = [{:?}]\nsocket_mode = \"0660\"\nsocket_group = \"4242\"",
            format!("unix:{}", sock.display())
        ),
        "",
    )
    .await;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 4242);
    // Nothing of the private directory it was made in is left.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("policy.sock")]);
    let s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let (r, w) = s.into_split();
    let mut c = Conn {
        r: BufReader::new(Box::new(r)),
        w: Box::new(w),
    };
    assert_eq!(c.ask(&[]).await, "OK");
    drop(c);
    pd.handle.stop().await;
    assert!(
        !Path::new(&sock).exists(),
        "the socket is removed at shutdown"
    );
}
