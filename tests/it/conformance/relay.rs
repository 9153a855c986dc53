//! Runners: the relay over SMTP (STARTTLS with the kit's client
//! certificates, from each scenario's client address), and its Postfix
//! policy service over the policy-delegation protocol, each one relay
//! per wall-clock group. Codes come from the replies; tenant, reason and
//! warning from the relay's decision log, one record per command.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use attrelay::config::Config;
use attrelay::decisions::DecisionRecord;
use attrelay::relay::{self, RelayHandle};
use attrelay_policy::replies::grace_warning;
use attrelay_policy::scenarios::KitScenario;
use tempfile::TempDir;

use super::engine::tenant_tables;
use super::smtp::{
    Group, VerdictLine, combine, free_port, loopback_clients, send, server_certificate,
    wall_clock_groups,
};
use super::{
    Host, Observed, SESSION_TIME, SUBJECT_ALT_NAMES, VERIFYING_CHAIN, anchor_pem, assert_passes,
};

/// A relay of the kit's tenants with `settings`, its decision log in `dir`.
pub struct KitRelay {
    pub dir: TempDir,
    pub port: u16,
    pub handle: RelayHandle,
}

impl KitRelay {
    pub async fn start(settings: &BTreeMap<String, String>, extra: &str) -> KitRelay {
        let dir = tempfile::tempdir().unwrap();
        server_certificate(dir.path());
        let port = free_port();
        let mut text = format!(
            "[server]\nhostname = \"relay.example.test\"\nlisten = [\"127.0.0.1:{port}\", \"[::1]:{port}\"]\n\
             tls_cert = \"tls_cert.pem\"\ntls_key = \"tls_key.pem\"\nclient_ca = [{:?}]\n\n\
             [spool]\npath = \"spool\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [policy]\ndecision_log = \"decisions.jsonl\"\n\n[policy.settings]\n",
            anchor_pem().display()
        );
        for (k, v) in settings {
            writeln!(text, "{k} = {v:?}").unwrap();
        }
        text.push_str(extra);
        text.push('\n');
        text.push_str(&tenant_tables());
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let handle = relay::start(&config).await.unwrap();
        KitRelay { dir, port, handle }
    }

    /// The decision log's records once there are `count` (10 s at most:
    /// the log is written by a thread of its own).
    pub async fn decisions(&self, count: usize) -> Vec<DecisionRecord> {
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(self.dir.path().join("decisions.jsonl"))
                .unwrap_or_default();
            let records: Vec<DecisionRecord> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if records.len() >= count || started.elapsed() > Duration::from_secs(10) {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A decision record as the verdict line an SMTP runner aligns.
pub fn record_line(r: &DecisionRecord) -> VerdictLine {
    VerdictLine {
        stage: match r.stage.as_str() {
            "mail-from" => "mail".into(),
            _ => "rcpt".into(),
        },
        observed: Observed::from_verdict(&r.verdict, grace_warning(&r.verdict).is_some()),
    }
}

/// Every wall-clock group through a relay of its own, over SMTP.
struct RelayOverSmtp {
    answers: HashMap<String, (Observed, Vec<Observed>)>,
}

impl RelayOverSmtp {
    async fn run_all() -> RelayOverSmtp {
        loopback_clients();
        let mut answers = HashMap::new();
        for Group {
            settings,
            scenarios,
        } in wall_clock_groups()
        {
            let relay = KitRelay::start(&settings, "").await;
            let port = relay.port;
            let names = scenarios.clone();
            let replies = tokio::task::spawn_blocking(move || send(port, &names))
                .await
                .unwrap();
            let commands: usize = replies.values().map(|r| r.commands.len()).sum();
            let lines: Vec<VerdictLine> = relay
                .decisions(commands)
                .await
                .iter()
                .map(record_line)
                .collect();
            answers.extend(combine(&scenarios, &replies, &lines));
            relay.handle.stop().await;
        }
        RelayOverSmtp { answers }
    }
}

impl Host for RelayOverSmtp {
    fn lacks(&self) -> &'static [&'static str] {
        &[SESSION_TIME]
    }

    fn run(&mut self, s: &KitScenario, _certs: &Path) -> (Observed, Vec<Observed>) {
        self.answers[&s.name].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_over_smtp_passes_the_kit() {
    let mut host = RelayOverSmtp::run_all().await;
    tokio::task::spawn_blocking(move || assert_passes(&mut host))
        .await
        .unwrap();
}

/// The attributes Postfix 3.7 sends the policy service for one command of
/// `s`. Postfix verifies the client's chain against its own anchors (here
/// the kit's) and sends the subject's CN only when it verified, the
/// fingerprint whenever a certificate came; it never sends the SANs.
fn postfix_request(s: &KitScenario, recipient: Option<&str>) -> String {
    let kit = attrelay_policy::scenarios::kit();
    let mut attrs: Vec<(&str, String)> = vec![
        ("request", "smtpd_access_policy".into()),
        (
            "protocol_state",
            if recipient.is_some() { "RCPT" } else { "MAIL" }.into(),
        ),
        ("protocol_name", "ESMTP".into()),
        ("client_address", s.client_ip.clone()),
        ("client_name", "unknown".into()),
        ("helo_name", kit.helo.clone()),
        ("sender", s.sender.clone()),
        ("recipient", recipient.unwrap_or_default().into()),
    ];
    if let Some(tls) = &s.tls {
        attrs.push(("encryption_protocol", kit.tls_protocol.clone()));
        attrs.push(("encryption_cipher", kit.tls_cipher.clone()));
        if let Some(name) = &tls.certificate {
            let facts = &kit.certificates[name];
            if facts.verified {
                let cn = facts.subject.strip_prefix("CN=").unwrap_or_default();
                attrs.push(("ccert_subject", xtext(cn)));
                attrs.push(("ccert_issuer", xtext("Conformance Kit Root CA")));
            }
            attrs.push(("ccert_fingerprint", fingerprint(name)));
        }
    }
    let mut text = String::new();
    for (k, v) in attrs {
        writeln!(text, "{k}={v}").unwrap();
    }
    text.push('\n');
    text
}

/// Postfix's xtext (RFC 3461): `+`, `=` and anything not printable as `+XX`.
fn xtext(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'+' | b'=' => format!("+{b:02X}"),
            0x21..=0x7e => (b as char).to_string(),
            _ => format!("+{b:02X}"),
        })
        .collect()
}

/// The leaf's SHA-256 fingerprint, colon-separated as Postfix writes it.
fn fingerprint(chain_name: &str) -> String {
    use attrelay::certificate::{TrustAnchors, inspect_chain, unix_time};
    let der = super::chain(chain_name).remove(0);
    let leaf = [rustls_pki_types::CertificateDer::from(der.as_slice())];
    let hex = inspect_chain(&leaf, &TrustAnchors::default(), unix_time(0))
        .unwrap()
        .sha256_fingerprint;
    hex.as_bytes()
        .chunks(2)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// Every wall-clock group through the policy service of a relay of its
/// own, as Postfix asks it: one request per MAIL FROM and RCPT TO.
struct PolicyService {
    answers: HashMap<String, (Observed, Vec<Observed>)>,
}

impl PolicyService {
    async fn run_all() -> PolicyService {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let mut answers = HashMap::new();
        for Group {
            settings,
            scenarios,
        } in wall_clock_groups()
        {
            let relay = KitRelay::start(&settings, "[policyd]\nlisten = [\"127.0.0.1:0\"]\n").await;
            let stream = tokio::net::TcpStream::connect(relay.handle.policyd[0])
                .await
                .unwrap();
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            let mut actions = Vec::new();
            for s in &scenarios {
                let stages = std::iter::once(None)
                    .chain(s.recipients.iter().map(|r| Some(r.address.as_str())));
                for recipient in stages {
                    w.write_all(postfix_request(s, recipient).as_bytes())
                        .await
                        .unwrap();
                    let mut action = String::new();
                    loop {
                        let mut line = String::new();
                        r.read_line(&mut line).await.unwrap();
                        if line == "\n" || line.is_empty() {
                            break;
                        }
                        action = line.trim_end().trim_start_matches("action=").to_string();
                    }
                    actions.push(action);
                }
            }
            // The service judges MAIL FROM again before each recipient,
            // as an SMTP session would have: a RCPT request has two records.
            let expected = actions.len() * 2 - scenarios.len();
            let records = relay.decisions(expected).await;
            assert_eq!(records.len(), expected, "the decisions of every request");
            let mut records = records.iter();
            let mut actions = actions.iter();
            for s in &scenarios {
                let mut take = |stage: &str| {
                    if stage == "rcpt" {
                        let again = record_line(records.next().unwrap());
                        assert_eq!(
                            (again.stage.as_str(), again.observed.code),
                            ("mail", 250),
                            "{}",
                            s.name
                        );
                    }
                    let line = record_line(records.next().unwrap());
                    let action = actions.next().unwrap();
                    assert_eq!(line.stage, stage, "{}", s.name);
                    let o = line.observed;
                    let expected_action = match (o.code / 100, stage) {
                        (2, "mail") => "DUNNO".to_string(),
                        (2, _) => "OK".to_string(),
                        _ => format!("{} {}", o.code, o.enhanced),
                    };
                    assert!(
                        action.starts_with(&expected_action),
                        "{}: action={action} for {o:?}",
                        s.name
                    );
                    o
                };
                let mail = take("mail");
                let rcpts = s.recipients.iter().map(|_| take("rcpt")).collect();
                answers.insert(s.name.clone(), (mail, rcpts));
            }
            relay.handle.stop().await;
        }
        PolicyService { answers }
    }
}

impl Host for PolicyService {
    /// Postfix passes neither the session time, the certificate's SANs
    /// nor the chain that verified it.
    fn lacks(&self) -> &'static [&'static str] {
        &[SESSION_TIME, SUBJECT_ALT_NAMES, VERIFYING_CHAIN]
    }

    fn run(&mut self, s: &KitScenario, _certs: &Path) -> (Observed, Vec<Observed>) {
        self.answers[&s.name].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_service_passes_the_kit() {
    let mut host = PolicyService::run_all().await;
    tokio::task::spawn_blocking(move || assert_passes(&mut host))
        .await
        .unwrap();
}
