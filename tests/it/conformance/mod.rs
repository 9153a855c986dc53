//! The conformance kit (`conformance/`) against every host that judges
//! mail: each runner gives a host the kit's sessions and compares what it
//! answers with the kit's expectations. A host that prepares facts its own
//! way (a test double skipping chain verification) must fail it.

mod composed;
mod engine;
mod gateway;
mod haraka;
mod node;
mod plugin;
mod relay;
mod smtp;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use attrelay_policy::model::Verdict;
use attrelay_policy::scenarios::{KitScenario, kit};

use crate::support;

/// What a host answered for one recipient, as far as it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub code: u16,
    pub enhanced: String,
    pub tenant: Option<String>,
    pub reason: Option<String>,
    /// The host wrote (or would write) the grace-period warning field.
    pub warning: bool,
}

impl Observed {
    /// A verdict's fields; `warning` as the host decides it.
    pub fn from_verdict(v: &Verdict, warning: bool) -> Observed {
        Observed {
            code: v.code,
            enhanced: v.enhanced.clone(),
            tenant: v.tenant.clone(),
            reason: v.reason.clone(),
            warning,
        }
    }
}

/// What a host under test may lack, as the kit's `needs` names it.
pub const SESSION_TIME: &str = "session-time";
pub const SUBJECT_ALT_NAMES: &str = "subject-alt-names";
pub const VERIFYING_CHAIN: &str = "verifying-chain";

/// A host under test.
pub trait Host {
    /// What the host cannot know (a host judging at its wall clock lacks
    /// [`SESSION_TIME`]); the kit's scenarios that need it are left out.
    fn lacks(&self) -> &'static [&'static str] {
        &[]
    }

    /// The verdicts for `MAIL FROM` and each recipient of `scenario`, its
    /// chain (if any) read from `certs`.
    fn run(&mut self, scenario: &KitScenario, certs: &Path) -> (Observed, Vec<Observed>);
}

/// The kit's certificates, made once per test run by the kit's own script.
pub fn certs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("attrelay-kit-certs-{}", std::process::id()));
        let status = Command::new("python3")
            .arg(support::root().join("conformance/make-certs.py"))
            .arg(&dir)
            .status()
            .expect("running python3 conformance/make-certs.py");
        assert!(status.success(), "make-certs.py failed");
        dir
    })
}

/// The PEM of the kit's trust anchor.
pub fn anchor_pem() -> PathBuf {
    certs().join(format!("{}.pem", kit().trust_anchors))
}

/// The DER certificates of chain `name`.
pub fn chain(name: &str) -> Vec<Vec<u8>> {
    attrelay::pem::read_certificates(&certs().join(format!("{name}.pem")))
        .unwrap()
        .into_iter()
        .map(|c| c.to_vec())
        .collect()
}

/// Runs every scenario of the kit (both layers) that `host` runs; the
/// failures, each naming the scenario and recipient, and how many
/// recipients were compared.
pub fn run_kit(host: &mut dyn Host) -> (Vec<String>, usize) {
    let mut failures = Vec::new();
    let mut compared = 0;
    for s in &kit().scenarios {
        if let Some(need) = s.needs.iter().find(|n| host.lacks().contains(&n.as_str())) {
            println!("left out (the host lacks {need}): {}", s.name);
            continue;
        }
        let (mail, rcpts) = host.run(s, certs());
        if (mail.code, mail.enhanced.as_str()) != (250, "2.1.0") {
            failures.push(format!("{}: MAIL FROM:<{}> got {mail:?}", s.name, s.sender));
            continue;
        }
        for (r, got) in s.recipients.iter().zip(&rcpts) {
            compared += 1;
            let want = Observed {
                code: r.code,
                enhanced: r.enhanced.clone(),
                tenant: r.tenant.clone(),
                reason: Some(r.reason.clone()),
                warning: r.warning,
            };
            if *got != want {
                failures.push(format!(
                    "{} / RCPT TO:<{}>\n  want {want:?}\n  got  {got:?}",
                    s.name, r.address
                ));
            }
        }
        if rcpts.len() != s.recipients.len() {
            failures.push(format!(
                "{}: {} answers for {} recipients",
                s.name,
                rcpts.len(),
                s.recipients.len()
            ));
        }
    }
    (failures, compared)
}

/// Asserts that `host` passes every scenario it runs, leaving out only
/// those that need what it lacks.
pub fn assert_passes(host: &mut dyn Host) {
    let (failures, compared) = run_kit(host);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let lacks = host.lacks();
    let expected: usize = kit()
        .scenarios
        .iter()
        .filter(|s| !s.needs.iter().any(|n| lacks.contains(&n.as_str())))
        .map(|s| s.recipients.len())
        .sum();
    assert_eq!(compared, expected, "every recipient compared");
}
