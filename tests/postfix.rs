//! Interop with a real Postfix, in both of its roles here. A private Postfix
//! instance (its own configuration, queue and ports in a temporary directory)
//!
//! - as a gateway, delegates its relay decision to our policy service with
//!   `check_policy_service`, verifies client certificates itself, and relays
//!   what it accepts to a recording next hop; SMTP clients talk to it from
//!   distinct loopback addresses, so what reaches our policy is exactly what
//!   Postfix sends in production;
//! - as a tenant's on-premises server, relays through our SMTP server with
//!   STARTTLS and its client certificate, as a hybrid deployment does.
//!
//! Needs Postfix (`.ci/run` installs Debian's package) and root, as starting
//! a Postfix master does; without them the test fails and says so.

mod support;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use attrelay::config::Config;
use support::Pki;
use support::smtp::{Client, Reply, Sink};

const CONTOSO_IP: &str = "127.0.1.10";
const UNKNOWN_IP: &str = "127.0.2.77";
const EXT: &str = "someone@internet.example";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `postfix` command: Debian puts it in /usr/sbin, which a non-login
/// PATH may lack.
fn postfix_binary() -> String {
    for dir in ["/usr/sbin", "/usr/local/sbin", "/sbin"] {
        let p = format!("{dir}/postfix");
        if Path::new(&p).exists() {
            return p;
        }
    }
    let found = Command::new("sh")
        .args(["-c", "command -v postfix"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    found.unwrap_or_else(|| {
        panic!("Postfix is not installed: this interop test needs it (.ci/run installs Debian's postfix package)")
    })
}

/// One Postfix instance at a time in this process.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A private Postfix instance, stopped when dropped.
struct Postfix {
    dir: PathBuf,
    addr: SocketAddr,
}

impl Postfix {
    fn postfix(&self, args: &[&str]) -> std::process::Output {
        Command::new(postfix_binary())
            .arg("-c")
            .arg(self.dir.join("etc"))
            .args(args)
            .output()
            .expect("running postfix")
    }

    /// Postfix's own log, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Starts an instance relaying to `next_hop`, with `extra` lines
    /// appended to its main.cf (the role-specific settings).
    fn start(dir: &Path, pki: &Pki, next_hop: SocketAddr, extra: &str) -> Postfix {
        let _ = postfix_binary();
        // Postfix's master must start as root.
        let uid = Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "starting a Postfix instance needs root"
        );
        for d in ["etc", "queue", "data"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        // Postfix's daemons run as the postfix user: they must reach the
        // queue below the temporary directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let chown = Command::new("chown")
            .arg("postfix")
            .arg(dir.join("data"))
            .status()
            .unwrap();
        assert!(chown.success());
        let port = free_port();
        let d = dir.display();
        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
relayhost = [{next_ip}]:{next_port}
smtp_tls_security_level = none
smtpd_tls_security_level = may
smtpd_tls_cert_file = {server_pem}
smtpd_tls_key_file = {server_key}
smtpd_tls_ask_ccert = yes
smtpd_tls_CAfile = {ca}
{extra}
",
            next_ip = next_hop.ip(),
            next_port = next_hop.port(),
            server_pem = pki.path("selfsigned.pem").display(),
            server_key = pki.path("selfsigned.key").display(),
            ca = pki.path("ca.pem").display(),
        );
        std::fs::write(dir.join("etc/main.cf"), main_cf).unwrap();
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"
        );
        std::fs::write(dir.join("etc/master.cf"), master_cf).unwrap();
        let pf = Postfix {
            dir: dir.to_path_buf(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let out = pf.postfix(&["start"]);
        assert!(
            out.status.success(),
            "postfix start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            pf.log()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(pf.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "Postfix did not listen on {}:\n{}",
                pf.addr,
                pf.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pf
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = self.postfix(&["stop"]);
    }
}

/// An SMTP session with Postfix from `source`, with STARTTLS and a client
/// certificate when `cert` is given.
async fn session(pf: &Postfix, pki: &Pki, source: &str, cert: Option<&str>) -> Client {
    let (mut c, greeting) = Client::connect_from(pf.addr, source.parse::<IpAddr>().unwrap()).await;
    assert_eq!(greeting.code, 220, "{greeting:?}");
    let ehlo = c.cmd("EHLO client.example.test").await;
    assert_eq!(ehlo.code, 250);
    if let Some(name) = cert {
        let (pem, key) = (
            pki.path(&format!("{name}.pem")),
            pki.path(&format!("{name}.key")),
        );
        assert_eq!(c.starttls(Some((&pem, &key))).await.code, 220);
        assert_eq!(c.cmd("EHLO client.example.test").await.code, 250);
    }
    c
}

fn refused_by_attribution(r: &Reply) -> bool {
    r.is(550, "5.7.64")
        && r.lines
            .iter()
            .any(|l| l.contains("TenantAttribution; Relay Access Denied"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_delegates_relay_decisions_to_our_policy() {
    let _one = ONE_AT_A_TIME.lock().await;
    let pki = Pki::new();
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The relay runs only its policy service for Postfix here (its SMTP
    // listener is unused); contoso's on-premises range is moved to loopback.
    let text = support::fixture_toml(&format!(
        "listen = [\"127.0.0.1:0\"]\n\n[spool]\npath = {:?}\n\n[delivery]\ndirectory = {:?}\n\n[policyd]\nlisten = [\"127.0.0.1:0\"]\n",
        pki.path("spool").display().to_string(),
        pki.path("out").display().to_string(),
    ))
    .replace("203.0.113.0/24", "127.0.1.0/24");
    let path = pki.path("relay.toml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::load(&path).unwrap();
    let relay = attrelay::relay::start(&config).await.unwrap();
    let pf = Postfix::start(
        dir.path(),
        &pki,
        sink.addr,
        &format!(
            "smtpd_relay_restrictions = check_policy_service inet:{}, reject\nsmtpd_policy_service_timeout = 10s",
            relay.policyd[0]
        ),
    );

    // Contoso's on-premises server by IP: Postfix relays the message.
    let mut c = session(&pf, &pki, CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    let r = c.cmd(&format!("RCPT TO:<{EXT}>")).await;
    assert_eq!(r.code, 250, "{r:?}\n{}", pf.log());
    let r = c
        .data(b"Subject: through Postfix\r\n\r\nattributed by attrelay's policy\r\n.\r\n")
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT").await;

    // An unknown address: refused with our code and text.
    let mut c = session(&pf, &pki, UNKNOWN_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    let r = c.cmd(&format!("RCPT TO:<{EXT}>")).await;
    assert!(refused_by_attribution(&r), "{r:?}\n{}", pf.log());
    println!(
        "Postfix to a client our policy refuses: {}",
        r.lines.join(" / ")
    );
    c.cmd("QUIT").await;

    // An NDR from the unknown address over TLS with contoso's certificate,
    // verified by Postfix against our CA: attributed by the certificate.
    let mut c = session(&pf, &pki, UNKNOWN_IP, Some("contoso")).await;
    assert_eq!(c.cmd("MAIL FROM:<>").await.code, 250);
    let r = c.cmd(&format!("RCPT TO:<{EXT}>")).await;
    assert_eq!(r.code, 250, "{r:?}\n{}", pf.log());
    let r = c
        .data(b"Subject: Undeliverable\r\n\r\nan NDR relayed by certificate\r\n.\r\n")
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT").await;

    // The same name in a self-signed certificate: Postfix does not verify
    // it, so it authenticates nothing and the NDR is refused.
    let mut c = session(&pf, &pki, UNKNOWN_IP, Some("selfsigned")).await;
    assert_eq!(c.cmd("MAIL FROM:<>").await.code, 250);
    let r = c.cmd(&format!("RCPT TO:<{EXT}>")).await;
    assert!(refused_by_attribution(&r), "{r:?}\n{}", pf.log());
    c.cmd("QUIT").await;

    // Postfix relayed exactly the two accepted messages to the next hop.
    let got = tokio::time::timeout(Duration::from_secs(60), sink.wait_for(2))
        .await
        .unwrap_or_else(|_| panic!("Postfix did not relay both messages:\n{}", pf.log()));
    let senders: Vec<&str> = got.iter().map(|m| m.sender.as_str()).collect();
    assert!(senders.contains(&"john@contoso.com"), "{senders:?}");
    assert!(
        senders.contains(&""),
        "the NDR keeps its null sender: {senders:?}"
    );
    assert!(got.iter().all(|m| m.recipients == vec![EXT.to_string()]));

    // Our side saw Postfix's requests: two recipients per verdict kind.
    let text = relay.metrics.render();
    assert!(
        relay.metrics.policyd_requests.get() >= 4,
        "requests answered: {}\n{text}",
        relay.metrics.policyd_requests.get()
    );
    assert_eq!(
        relay.metrics.policyd_errors.get(),
        0,
        "Postfix's requests all parse"
    );

    // With the policy service gone, Postfix fails closed: a temporary 451.
    relay.stop().await;
    let mut c = session(&pf, &pki, CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    let r = c.cmd(&format!("RCPT TO:<{EXT}>")).await;
    assert!(r.is(451, "4.3.5"), "{r:?}\n{}", pf.log());
    c.cmd("QUIT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_postfix_relays_through_us_with_its_client_certificate() {
    let _one = ONE_AT_A_TIME.lock().await;
    let pki = Pki::new();
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Our relay, trusting the test CA for client certificates; Postfix sends
    // from an address no connector knows, so only its certificate can
    // attribute it.
    let text = support::fixture_toml(&format!(
        "listen = [\"127.0.0.1:0\"]\nclient_ca = [\"ca.pem\"]\n\n[spool]\npath = {:?}\n\n[delivery]\nnext_hop = \"{}\"\nretry_initial_secs = 1\n",
        pki.path("spool").display().to_string(),
        sink.addr,
    ));
    let path = pki.path("relay.toml");
    std::fs::write(&path, &text).unwrap();
    let relay = attrelay::relay::start(&Config::load(&path).unwrap())
        .await
        .unwrap();
    let pf = Postfix::start(
        dir.path(),
        &pki,
        relay.addrs[0],
        &format!(
            "mynetworks = 127.0.0.0/8\nsmtpd_relay_restrictions = permit_mynetworks, reject\nsmtp_bind_address = {UNKNOWN_IP}\nsmtp_tls_security_level = encrypt\nsmtp_tls_cert_file = {}\nsmtp_tls_key_file = {}\nsmtp_tls_loglevel = 1",
            pki.path("contoso.pem").display(),
            pki.path("contoso.key").display(),
        ),
    );

    // A non-delivery report from the tenant's Postfix: the null sender is
    // relayed only through a certificate-based connector.
    let mut c = session(&pf, &pki, "127.0.0.1", None).await;
    assert_eq!(c.cmd("MAIL FROM:<>").await.code, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{EXT}>")).await.code, 250);
    let r = c
        .data(b"Subject: Undeliverable: hello\r\n\r\nyour message could not be delivered\r\n.\r\n")
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT").await;

    let got = tokio::time::timeout(Duration::from_secs(60), sink.wait_for(1))
        .await
        .unwrap_or_else(|_| panic!("the NDR did not come through attrelay:\n{}", pf.log()));
    let m = &got[0];
    assert_eq!(m.sender, "");
    assert_eq!(m.recipients, vec![EXT.to_string()]);
    let text = String::from_utf8_lossy(&m.data);
    assert!(
        text.contains("\r\nX-Attributed-Tenant: contoso\r\n"),
        "attributed to contoso by its certificate:\n{text}"
    );
    // Our trace header records Postfix's TLS session and verified certificate.
    let received = text.lines().next().unwrap_or_default().to_string();
    assert!(
        received.starts_with(&format!("Received: from postfix.test ([{UNKNOWN_IP}])")),
        "{text}"
    );
    assert!(text.contains("with ESMTPS"), "{text}");
    assert!(
        text.contains("mail.contoso.com") && text.contains("\" verified)"),
        "{text}"
    );
    assert!(
        pf.log().contains(&format!(
            "relay=127.0.0.1[127.0.0.1]:{}",
            relay.addrs[0].port()
        )),
        "Postfix logged the delivery through attrelay:\n{}",
        pf.log()
    );
    relay.stop().await;
}
