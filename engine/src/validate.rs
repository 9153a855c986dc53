//! Validating a policy before it decides anything: the reference's seed
//! scenarios, run through the candidate against the scenario fixture.

use std::sync::Arc;

use serde::Serialize;

use crate::directory::Directory;
use crate::policy::LoadedPolicy;

/// How a candidate policy answered the built-in scenarios.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenarios: usize,
    pub calls: usize,
    /// Recipients whose verdict differs from the reference's expectation, for
    /// the scenarios written for default settings (informational: operators'
    /// policies may differ on purpose).
    pub differing: Vec<String>,
}

/// Runs every built-in seed scenario through `policy` against the scenario
/// fixture. Fails if any call fails (trap, budget, malformed verdict): a
/// component that cannot answer the reference's own cases must not go live.
pub fn check_scenarios(policy: &LoadedPolicy) -> Result<ScenarioReport, String> {
    use attrelay_policy::scenarios::{check, fixture, scenarios};
    let directory = Arc::new(Directory::from_fixture(&fixture()));
    let mut report = ScenarioReport {
        scenarios: 0,
        calls: 0,
        differing: Vec::new(),
    };
    for s in scenarios() {
        report.scenarios += 1;
        let mut session = policy.open_session(directory.clone(), &s.facts);
        let mail = session.mail_from(s.sender);
        report.calls += 1;
        if mail.reason.as_deref() == Some("policy-failure") {
            return Err(format!(
                "scenario '{}': MAIL FROM failed: {}",
                s.name,
                mail.explanation.join("; ")
            ));
        }
        if mail.code >= 300 {
            report.differing.push(format!(
                "{}: MAIL FROM answered {}",
                s.name,
                mail.reply_line()
            ));
            continue;
        }
        for (rcpt, expect) in &s.recipients {
            let v = session.rcpt_to(rcpt);
            report.calls += 1;
            if v.reason.as_deref() == Some("policy-failure") {
                return Err(format!(
                    "scenario '{}': RCPT TO {rcpt} failed: {}",
                    s.name,
                    v.explanation.join("; ")
                ));
            }
            // Scenarios written for other settings (warn mode, another date)
            // are run, but not compared: the policy runs with the operator's.
            if s.settings.is_empty() && check(expect, &v).is_err() {
                report
                    .differing
                    .push(format!("{} / {rcpt}: {}", s.name, v.reply_line()));
            }
        }
    }
    Ok(report)
}
