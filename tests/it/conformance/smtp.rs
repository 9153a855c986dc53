//! What the SMTP runners share: the kit's sessions sent by
//! `conformance/runners/smtp.py` (Python's smtplib, from each scenario's
//! client address), the groups a host judging at its wall clock runs them
//! in, and the verdict lines hosts log.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;

use attrelay_policy::scenarios::{KitScenario, kit};
use attrelay_policy::settings::{DEFAULT_ENFORCEMENT, format_instant, parse_instant};
use serde::Deserialize;

use super::{Observed, certs};
use crate::support;

/// The scenarios one host instance judges at its wall clock: the kit's
/// settings with the enforcement instant moved by (now − the scenario's
/// time), so that the session's distance to the deadline is the
/// scenario's. Scenarios that need their own session time (a
/// certificate's validity at it) cannot be moved: they are left out.
pub struct Group {
    pub settings: BTreeMap<String, String>,
    pub scenarios: Vec<&'static KitScenario>,
}

pub fn wall_clock_groups() -> Vec<Group> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut groups: Vec<Group> = Vec::new();
    for s in kit()
        .scenarios
        .iter()
        .filter(|s| !s.needs.iter().any(|n| n == super::SESSION_TIME))
    {
        let mut settings = s.settings.clone();
        let enforcement = settings
            .get("enforcement")
            .map(|e| parse_instant(e).unwrap())
            .unwrap_or(DEFAULT_ENFORCEMENT);
        let time = parse_instant(&s.time).unwrap();
        settings.insert(
            "enforcement".into(),
            format_instant(enforcement + (now - time)),
        );
        match groups.iter_mut().find(|g| g.settings == settings) {
            Some(g) => g.scenarios.push(s),
            None => groups.push(Group {
                settings,
                scenarios: vec![s],
            }),
        }
    }
    groups
}

/// Every client address of the kit, added to loopback.
pub fn loopback_clients() {
    let mut addrs: Vec<&str> = kit()
        .scenarios
        .iter()
        .map(|s| s.client_ip.as_str())
        .collect();
    addrs.sort();
    addrs.dedup();
    support::add_loopback_addresses(&addrs);
}

/// What `smtp.py` saw of one scenario (its `mail` and `rcpts` summaries
/// are not needed here).
#[derive(Debug, Deserialize)]
pub struct Replies {
    /// Every MAIL and RCPT sent, in order: (stage, address, code, text).
    pub commands: Vec<(String, String, u16, String)>,
}

/// Sends `scenarios` to the server on loopback `port` (IPv4 and IPv6).
pub fn send(port: u16, scenarios: &[&KitScenario]) -> HashMap<String, Replies> {
    let out = Command::new("python3")
        .arg(support::root().join("conformance/runners/smtp.py"))
        .arg(port.to_string())
        .arg(certs())
        .args(scenarios.iter().map(|s| s.name.as_str()))
        .output()
        .expect("running python3 conformance/runners/smtp.py");
    assert!(
        out.status.success(),
        "smtp.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("smtp.py's JSON")
}

/// The enhanced status code a reply text starts with.
pub fn enhanced(text: &str) -> String {
    text.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A verdict a host logged: `attrelay verdict stage=... address=<...>
/// code=... enhanced=... tenant=... reason=... warning=...`.
#[derive(Debug, Clone)]
pub struct VerdictLine {
    pub stage: String,
    pub observed: Observed,
}

pub fn verdict_lines(log: &str) -> Vec<VerdictLine> {
    log.lines()
        .filter_map(|l| l.split_once("attrelay verdict ").map(|(_, rest)| rest))
        .map(|rest| {
            let field = |k: &str| {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{k}=")))
                    .unwrap_or_default()
                    .to_string()
            };
            let optional = |v: String| (v != "-").then_some(v);
            VerdictLine {
                stage: field("stage"),
                observed: Observed {
                    code: field("code").parse().unwrap_or_default(),
                    enhanced: field("enhanced"),
                    tenant: optional(field("tenant")),
                    reason: optional(field("reason")),
                    warning: field("warning") == "true",
                },
            }
        })
        .collect()
}

/// The answers per scenario: the codes from the replies, the rest from the
/// verdicts the host logged, one line per command in order, each checked
/// against its reply. A recipient sent again (after `452 4.5.3`) counts
/// with its last answer.
pub fn combine(
    scenarios: &[&KitScenario],
    replies: &HashMap<String, Replies>,
    lines: &[VerdictLine],
) -> HashMap<String, (Observed, Vec<Observed>)> {
    let mut lines = lines.iter();
    let mut out = HashMap::new();
    for s in scenarios {
        let r = &replies[&s.name];
        let mut mail = None;
        let mut last: HashMap<&str, Observed> = HashMap::new();
        for (stage, address, code, text) in &r.commands {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("{}: no logged verdict for {stage} <{address}>", s.name));
            assert_eq!(
                &line.stage, stage,
                "{}: logged verdicts out of step",
                s.name
            );
            let o = line.observed.clone();
            assert_eq!(
                (o.code, o.enhanced.as_str()),
                (*code, enhanced(text).as_str()),
                "{}: the reply {code} {text} to {stage} <{address}> is not the logged verdict",
                s.name
            );
            if stage == "mail" {
                mail.get_or_insert(o);
            } else {
                last.insert(address, o);
            }
        }
        let rcpts = s
            .recipients
            .iter()
            .filter_map(|rcpt| last.get(rcpt.address.as_str()).cloned())
            .collect();
        out.insert(s.name.clone(), (mail.expect("a MAIL FROM"), rcpts));
    }
    out
}

/// A port free on loopback for both IPv4 and IPv6 (a host listens on both).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("[::]:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A server's own STARTTLS certificate, `tls_cert.pem` and `tls_key.pem`
/// in `config` (self-signed, made by openssl).
pub fn server_certificate(config: &std::path::Path) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(config.join("tls_key.pem"))
        .arg("-out")
        .arg(config.join("tls_cert.pem"))
        .args(["-days", "3650", "-subj", "/CN=relay.example.test"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A prepared DH group: Haraka would otherwise generate one at start.
    std::fs::write(config.join("dhparams.pem"), include_str!("ffdhe2048.pem")).unwrap();
    std::fs::write(config.join("tls.ini"), "dhparam=dhparams.pem\n").unwrap();
}
