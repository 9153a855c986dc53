//! `attrelay policy validate` and `attrelay policy diff`: checking a
//! component before anyone deploys it, and replaying recorded decisions
//! through two policies to see what would change.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use attrelay_policy::model::Verdict;

use super::{EXIT_OK, EXIT_REFUSED, UsageError, load_config};
use crate::policy::{EngineLimits, PolicyEngine, PolicySource};
use crate::validate::check_scenarios;

/// Loads `component` with the configuration's settings (or none) and runs
/// the built-in scenarios through it. Exit 0 when it answers them all.
pub fn validate(
    component: &Path,
    config: Option<&PathBuf>,
    out: &mut dyn Write,
) -> Result<u8, UsageError> {
    let settings = match config {
        Some(c) => load_config(Some(c))?.policy.settings,
        None => Vec::new(),
    };
    let engine = PolicyEngine::new(EngineLimits {
        max_instances: 8,
        ..EngineLimits::default()
    })
    .map_err(UsageError::new)?;
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(UsageError::new);
    let policy = match engine.load(&PolicySource::File(component.to_path_buf()), &settings) {
        Ok(p) => p,
        Err(e) => {
            w(out, format!("INVALID: {e}"))?;
            return Ok(EXIT_REFUSED);
        }
    };
    w(
        out,
        format!(
            "component {} (sha256 {})",
            component.display(),
            policy.sha256()
        ),
    )?;
    w(
        out,
        "  compiled, linked against attrelay:policy/attribution-policy, configured: ok".into(),
    )?;
    match check_scenarios(&policy) {
        Ok(report) => {
            w(
                out,
                format!(
                    "  built-in scenarios: {} sessions, {} calls, all answered",
                    report.scenarios, report.calls
                ),
            )?;
            if report.differing.is_empty() {
                w(out, "  every verdict matches the reference rules".into())?;
            } else {
                w(
                    out,
                    format!(
                        "  {} verdicts differ from the reference rules (fine if intended):",
                        report.differing.len()
                    ),
                )?;
                for d in &report.differing {
                    w(out, format!("    - {d}"))?;
                }
            }
            w(out, "VALID".into())?;
            Ok(EXIT_OK)
        }
        Err(e) => {
            w(out, format!("INVALID: {e}"))?;
            Ok(EXIT_REFUSED)
        }
    }
}

fn summary(v: &Verdict) -> String {
    format!(
        "{} tenant={} reason={}",
        v.reply_line(),
        v.tenant.as_deref().unwrap_or("-"),
        v.reason.as_deref().unwrap_or("-")
    )
}

/// Replays a decision log through OLD and NEW; prints every decision on
/// which they differ. Exit 0 when none differs, 1 otherwise.
pub fn diff(
    old: &Path,
    new: &Path,
    decisions: &Path,
    config: Option<&PathBuf>,
    out: &mut dyn Write,
) -> Result<u8, UsageError> {
    let config = load_config(config.map(|p| p.as_path()))?;
    let records = crate::decisions::read(decisions).map_err(UsageError)?;
    let engine = PolicyEngine::new(EngineLimits {
        max_instances: 16,
        ..EngineLimits::from(&config.policy)
    })
    .map_err(UsageError::new)?;
    let load = |p: &Path| {
        engine
            .load(
                &PolicySource::File(p.to_path_buf()),
                &config.policy.settings,
            )
            .map_err(UsageError::new)
    };
    let (old_p, new_p) = (load(old)?, load(new)?);
    let directory = Arc::new(config.directory());
    // Sessions in order of first appearance, each with its decisions in order.
    let mut order: Vec<String> = Vec::new();
    let mut sessions: BTreeMap<String, Vec<&crate::decisions::DecisionRecord>> = BTreeMap::new();
    for r in &records {
        if !sessions.contains_key(&r.session) {
            order.push(r.session.clone());
        }
        sessions.entry(r.session.clone()).or_default().push(r);
    }
    let mut differences = 0;
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(UsageError::new);
    for id in &order {
        let recs = &sessions[id];
        let facts = &recs[0].facts;
        let mut a = old_p.open_session(directory.clone(), facts);
        let mut b = new_p.open_session(directory.clone(), facts);
        for r in recs {
            let (va, vb, what) = match r.recipient.as_deref() {
                None => (
                    a.mail_from(&r.sender),
                    b.mail_from(&r.sender),
                    format!("MAIL FROM:<{}>", r.sender),
                ),
                Some(rcpt) => (
                    a.rcpt_to(rcpt),
                    b.rcpt_to(rcpt),
                    format!("RCPT TO:<{rcpt}> (from <{}>)", r.sender),
                ),
            };
            let same = va.code == vb.code
                && va.enhanced == vb.enhanced
                && va.tenant == vb.tenant
                && va.reason == vb.reason;
            if !same {
                differences += 1;
                w(
                    out,
                    format!("session {id} client {} {what}", facts.client_ip),
                )?;
                w(out, format!("  old: {}", summary(&va)))?;
                w(out, format!("  new: {}", summary(&vb)))?;
            }
        }
    }
    w(
        out,
        format!(
            "{} decisions in {} sessions replayed; {differences} differ",
            records.len(),
            order.len()
        ),
    )?;
    Ok(if differences == 0 {
        EXIT_OK
    } else {
        EXIT_REFUSED
    })
}
