//! Abuse limits over the wire: a running relay, loopback SMTP, the compiled
//! default policy and the example tenant policy. Anonymous sessions holding
//! every policy instance they can cannot starve an attributed one, one
//! session runs a bounded number of tenant policies, its decision-log
//! records are bounded, and IPv6 clients are held to the per-IP limit.

use crate::support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use attrelay::config::Config;
use attrelay::decisions::{DecisionRecord, MAX_RECORDS_PER_SESSION};
use attrelay::evaluation::MAX_TENANT_POLICIES_PER_SESSION;
use attrelay::relay::{self, RelayHandle};
use support::Pki;
use support::relay::Setup;
use support::smtp::{Client, Sink};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

/// Contoso's on-premises range in the fixture, moved into loopback.
const CONTOSO_IP: &str = "127.0.1.10";
const UNKNOWN_IP: &str = "127.0.2.77";
const EXT: &str = "someone@internet.example";

/// Tenants of the fixture whose domains take incoming mail from anyone:
/// one more than a session may run policies for.
const TENANTS: [(&str, &str); 5] = [
    ("fabrikam", "fabrikam.com"),
    ("northwind", "northwind.com"),
    ("adatum", "adatum.com"),
    ("woodgrove", "woodgrove.com"),
    ("contoso", "contoso.com"),
];

/// The wire fixture in `pki`'s directory: `server_lines` in `[server]`,
/// `sections` merged, and the example longer-grace policy for each tenant
/// in `tenant_policies`. Written; returns the file.
fn write_config(
    pki: &Pki,
    server_lines: &str,
    sections: &str,
    tenant_policies: &[&str],
) -> PathBuf {
    let mut setup = Setup::for_pki(pki)
        .merge(&format!("[server]\n{server_lines}\n"))
        .merge(sections);
    if !tenant_policies.is_empty() {
        let grace = support::build_crate("examples/tenant-longer-grace");
        for tenant in tenant_policies {
            setup = setup.merge_tenant(
                tenant,
                &format!(
                    "policy = {:?}\npolicy_settings = {{ grace_until = \"2099-01-01T00:00:00Z\" }}\npolicy_memory_limit_mib = 8\n",
                    grace.display().to_string()
                ),
            );
        }
    }
    setup.write()
}

async fn start(path: &Path) -> RelayHandle {
    let config = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
    relay::start(&config).await.unwrap()
}

/// The default policy as a component file (a shadow holds an instance of
/// its own in every session).
fn shadow_component(pki: &Pki) -> PathBuf {
    let path = pki.path("shadow.wasm");
    std::fs::write(&path, attrelay::policy::DEFAULT_POLICY).unwrap();
    path
}

/// An anonymous session holding every instance a session can: the base
/// policy, the shadow and the tenant policies of four tenants, its
/// recipients at those tenants accepted. A fifth tenant is deferred.
async fn greedy_session(relay: SocketAddr, source: &str) -> Client {
    let mut c = Client::session(relay, source, None).await;
    assert_eq!(c.cmd("MAIL FROM:<a@internet.example>").await.code, 250);
    let (held, over) = TENANTS.split_at(MAX_TENANT_POLICIES_PER_SESSION);
    for (tenant, domain) in held {
        let r = c.cmd(&format!("RCPT TO:<kate@{domain}>")).await;
        assert!(r.is(250, "2.1.5"), "{source} to {tenant}: {r:?}");
    }
    for (tenant, domain) in over {
        let r = c.cmd(&format!("RCPT TO:<kate@{domain}>")).await;
        assert!(r.is(452, "4.5.3"), "{source} to {tenant}: {r:?}");
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_sessions_cannot_starve_attributed_ones() {
    let pki = Pki::new();
    let sink = Sink::start().await;
    let shadow = shadow_component(&pki);
    let all: Vec<&str> = TENANTS.iter().map(|(t, _)| *t).collect();
    // `max_instances = 1` asks for a pool far too small: the relay sizes it
    // for every session anyway.
    let path = write_config(
        &pki,
        "listen = [\"127.0.0.1:0\"]\nmax_sessions = 6\nmax_sessions_per_ip = 100\nidle_timeout_secs = 60",
        &format!(
            "[delivery]\nnext_hop = \"{}\"\n\n[policy]\nmax_instances = 1\nshadow = {:?}\n",
            sink.addr,
            shadow.display().to_string()
        ),
        &all,
    );
    let handle = start(&path).await;
    let addr = handle.addrs[0];
    // Every session but one held by anonymous clients, each at its most.
    let mut greedy = Vec::new();
    for i in 1..=5 {
        greedy.push(greedy_session(addr, &format!("127.0.2.{i}")).await);
    }
    // The last session is contoso's own server: its base policy, shadow and
    // tenant policy must all instantiate.
    let mut c = Client::session(addr, CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    let r = c.cmd(&format!("RCPT TO:<{EXT}>")).await;
    assert!(r.is(250, "2.1.5"), "{r:?}");
    let r = c.data(b"Subject: attributed\r\n\r\nhello\r\n.\r\n").await;
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(sink.wait_for(1).await[0].recipients, vec![EXT.to_string()]);
    // The anonymous sessions' accepted mail flows too.
    for c in &mut greedy {
        assert_eq!(
            c.data(b"Subject: inbound\r\n\r\nhello\r\n.\r\n").await.code,
            250
        );
    }
    sink.wait_for(6).await;
    assert_eq!(
        handle.metrics.policy_failures.get(),
        0,
        "no session went without an instance"
    );
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_a_bounded_number_of_tenant_policies() {
    let pki = Pki::new();
    let all: Vec<&str> = TENANTS.iter().map(|(t, _)| *t).collect();
    let path = write_config(
        &pki,
        "listen = [\"127.0.0.1:0\"]",
        &format!(
            "[delivery]\ndirectory = {:?}\n",
            pki.path("out").display().to_string()
        ),
        &all,
    );
    let handle = start(&path).await;
    let addr = handle.addrs[0];
    let mut c = greedy_session(addr, UNKNOWN_IP).await;
    let r = c.cmd("RCPT TO:<kate@contoso.com>").await;
    assert_eq!(
        r.text,
        "Too many tenants in one session; send this recipient again in a new session"
    );
    // Tenants whose policy already runs in the session are still served.
    assert!(c.cmd("RCPT TO:<john@fabrikam.com>").await.is(250, "2.1.5"));
    // A deferred recipient is no part of the message, whatever the client
    // does next.
    let r = c.data(b"Subject: greedy\r\n\r\nx\r\n.\r\n").await;
    assert_eq!(r.code, 250, "{r:?}");
    for _ in 0..100 {
        if handle.context.queue.contents().messages == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(handle.context.queue.contents().messages, 0, "delivered");
    let mut envelopes = String::new();
    for entry in std::fs::read_dir(pki.path("out")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            envelopes.push_str(&std::fs::read_to_string(p).unwrap());
        }
    }
    assert!(envelopes.contains("john@fabrikam.com"), "{envelopes}");
    assert!(!envelopes.contains("kate@contoso.com"), "{envelopes}");
    // The bound is the session's, not the transaction's.
    assert_eq!(c.cmd("RSET").await.code, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@internet.example>").await.code, 250);
    assert!(c.cmd("RCPT TO:<kate@contoso.com>").await.is(452, "4.5.3"));
    // A new session is where the deferred recipient goes through.
    let mut fresh = Client::session(addr, UNKNOWN_IP, None).await;
    assert_eq!(fresh.cmd("MAIL FROM:<a@internet.example>").await.code, 250);
    assert!(
        fresh
            .cmd("RCPT TO:<kate@contoso.com>")
            .await
            .is(250, "2.1.5")
    );
    handle.stop().await;
}

/// A relay with a decision log whose sessions may have many recipients.
async fn logging_relay(pki: &Pki) -> (RelayHandle, PathBuf) {
    let log = pki.path("decisions.jsonl");
    let path = write_config(
        pki,
        "listen = [\"127.0.0.1:0\"]\nmax_recipients = 1000",
        &format!(
            "[delivery]\ndirectory = {:?}\n\n[policy]\ndecision_log = {:?}\n",
            pki.path("out").display().to_string(),
            log.display().to_string()
        ),
        &[],
    );
    (start(&path).await, log)
}

/// Past the bound: MAIL FROM and 300 accepted recipients (so no error limit
/// ends the session first).
async fn past_the_bound(c: &mut Client) {
    assert_eq!(c.cmd("MAIL FROM:<a@internet.example>").await.code, 250);
    let n = MAX_RECORDS_PER_SESSION as usize + 44;
    for i in 0..n {
        let r = c.cmd(&format!("RCPT TO:<user{i}@contoso.com>")).await;
        assert!(r.is(250, "2.1.5"), "decisions go on past the bound: {r:?}");
    }
}

/// The log's records by session id, once `total` records are written: the
/// log is written by a thread of its own, after the replies. Waits a little
/// more to see that no further record comes.
async fn logged(log: &Path, total: usize) -> Vec<(String, Vec<DecisionRecord>)> {
    let count = || attrelay::decisions::read(log).map(|r| r.len()).unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while count() < total && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    by_session(log)
}

/// The log's records by session id, in order of appearance.
fn by_session(log: &Path) -> Vec<(String, Vec<DecisionRecord>)> {
    let mut order = Vec::new();
    let mut sessions: BTreeMap<String, Vec<DecisionRecord>> = BTreeMap::new();
    for r in attrelay::decisions::read(log).unwrap() {
        if !sessions.contains_key(&r.session) {
            order.push(r.session.clone());
        }
        sessions.entry(r.session.clone()).or_default().push(r);
    }
    order
        .into_iter()
        .map(|id| {
            let records = sessions.remove(&id).unwrap_or_default();
            (id, records)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_log_records_stop_at_the_session_bound() {
    let pki = Pki::new();
    let (handle, log) = logging_relay(&pki).await;
    let mut c = Client::session(handle.addrs[0], UNKNOWN_IP, None).await;
    past_the_bound(&mut c).await;
    let sessions = logged(&log, MAX_RECORDS_PER_SESSION as usize).await;
    assert_eq!(sessions.len(), 1);
    let records = &sessions[0].1;
    assert_eq!(records.len(), MAX_RECORDS_PER_SESSION as usize);
    // A prefix of the session, which `policy diff` replays as it happened.
    assert_eq!(records[0].stage, "mail-from");
    let last = MAX_RECORDS_PER_SESSION - 2;
    assert_eq!(
        records.last().unwrap().recipient.as_deref(),
        Some(format!("user{last}@contoso.com").as_str())
    );
    // The bound is per session: the next one is logged.
    let mut next = Client::session(handle.addrs[0], UNKNOWN_IP, None).await;
    assert_eq!(next.cmd("MAIL FROM:<b@internet.example>").await.code, 250);
    assert!(
        next.cmd("RCPT TO:<kate@contoso.com>")
            .await
            .is(250, "2.1.5")
    );
    let sessions = logged(&log, MAX_RECORDS_PER_SESSION as usize + 2).await;
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[1].1.len(), 2);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saying_ehlo_again_does_not_renew_the_decision_log_bound() {
    let pki = Pki::new();
    let (handle, log) = logging_relay(&pki).await;
    let mut c = Client::session(handle.addrs[0], UNKNOWN_IP, None).await;
    past_the_bound(&mut c).await;
    // EHLO opens a new policy session (new facts, new id), on the same
    // connection and the same allowance.
    assert_eq!(c.cmd("EHLO again.example.test").await.code, 250);
    assert_eq!(c.cmd("MAIL FROM:<b@internet.example>").await.code, 250);
    assert!(c.cmd("RCPT TO:<kate@contoso.com>").await.is(250, "2.1.5"));
    let logged: usize = logged(&log, MAX_RECORDS_PER_SESSION as usize)
        .await
        .iter()
        .map(|(_, r)| r.len())
        .sum();
    assert_eq!(logged, MAX_RECORDS_PER_SESSION as usize);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_decision_log_holds_up_no_decision() {
    // The decision log is a FIFO whose reader never reads: once its 64 KiB
    // are full, every write blocks, as on a dead disk. Decisions must not
    // wait for it (a write under a lock in the policy call stalled them all).
    let pki = Pki::new();
    let log = pki.path("decisions.jsonl");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &log,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let _reader = rustix::fs::open(
        &log,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let (handle, _) = logging_relay(&pki).await;
    // Four sessions of 256 logged decisions: about a megabyte for the pipe.
    let sessions = async {
        for _ in 0..4 {
            let mut c = Client::session(handle.addrs[0], UNKNOWN_IP, None).await;
            past_the_bound(&mut c).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), sessions)
        .await
        .expect("decisions waited for the stalled decision log");
    handle.stop().await;
}

/// Connects from `source` and returns the first line the relay says.
async fn first_line_from(source: &str, addr: SocketAddr) -> (BufReader<TcpStream>, String) {
    let socket = tokio::net::TcpSocket::new_v6().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let mut reader = BufReader::new(tcp);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .expect("a reply")
        .unwrap();
    (reader, line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_of_one_64_share_the_per_ip_limit() {
    // Two clients in one /64 and one in the next /64.
    let (a1, a2, b) = (
        "fd7a:a77e:1e1a::11",
        "fd7a:a77e:1e1a::12",
        "fd7a:a77e:1e1a:1::11",
    );
    support::add_loopback_addresses(&[a1, a2, b]);
    let pki = Pki::new();
    let path = write_config(
        &pki,
        "listen = [\"[::1]:0\"]\nmax_sessions_per_ip = 2\nipv6_prefix_length = 64",
        &format!(
            "[delivery]\ndirectory = {:?}\n",
            pki.path("out").display().to_string()
        ),
        &[],
    );
    let handle = start(&path).await;
    let addr = handle.addrs[0];
    let (first, greeting) = first_line_from(a1, addr).await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    let (_second, greeting) = first_line_from(a2, addr).await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    // A third address of the same /64 is the same client.
    let (_, refused) = first_line_from(a1, addr).await;
    assert!(refused.starts_with("421 4.7.0 "), "{refused}");
    // Another /64 is another client.
    let (_other, greeting) = first_line_from(b, addr).await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    drop(first);
    let mut greeting = String::new();
    for _ in 0..50 {
        let (_third, line) = first_line_from(a2, addr).await;
        greeting = line;
        if greeting.starts_with("220 ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(greeting.starts_with("220 "), "a slot freed: {greeting}");
    handle.stop().await;
}
