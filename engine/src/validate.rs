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

/// Runs a tenant policy (`world tenant-rules`) over the built-in scenarios:
/// each recipient the default policy attributes to a tenant goes through
/// `load(tenant)`'s policy (the same component loaded for that tenant) with
/// the default verdict as its base, as the relay runs it. `Err` at the
/// first policy failure (a trap, a budget, a verdict the checks refuse,
/// such as one naming another tenant); the verdicts it changed are listed.
pub fn check_tenant_scenarios(
    mut load: impl FnMut(&str) -> Result<crate::policy::TenantPolicy, String>,
) -> Result<ScenarioReport, String> {
    use attrelay_policy::scenarios::{fixture, scenarios};
    use attrelay_policy::{Session, Settings};
    let directory = Arc::new(Directory::from_fixture(&fixture()));
    let mut policies = std::collections::HashMap::new();
    let mut report = ScenarioReport {
        scenarios: 0,
        calls: 0,
        differing: Vec::new(),
    };
    for s in scenarios() {
        report.scenarios += 1;
        let settings = Settings::from_pairs(s.settings.iter().copied())?;
        let mut base = Session::open(fixture(), settings, s.facts.clone());
        if base.mail_from(s.sender).code >= 300 {
            continue;
        }
        let mut sessions = std::collections::HashMap::new();
        for (rcpt, _) in &s.recipients {
            let base_v = base.rcpt_to(rcpt);
            let Some(tenant) = base_v.tenant.clone() else {
                continue;
            };
            if !policies.contains_key(&tenant) {
                policies.insert(tenant.clone(), load(&tenant)?);
            }
            let session = sessions
                .entry(tenant.clone())
                .or_insert_with(|| policies[&tenant].open_session(directory.clone(), &s.facts));
            let v = session.rcpt_to(s.sender, rcpt, &base_v);
            report.calls += 1;
            if v.reason.as_deref() == Some("policy-failure") {
                return Err(format!(
                    "scenario '{}': RCPT TO {rcpt} (tenant {tenant}) failed: {}",
                    s.name,
                    v.explanation.join("; ")
                ));
            }
            if v.code != base_v.code || v.enhanced != base_v.enhanced || v.reason != base_v.reason {
                report.differing.push(format!(
                    "{} / {rcpt} (tenant {tenant}): {} instead of {}",
                    s.name,
                    v.reply_line(),
                    base_v.reply_line()
                ));
            }
        }
    }
    Ok(report)
}
