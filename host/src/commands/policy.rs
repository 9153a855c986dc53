//! `attrelay policy validate` and `attrelay policy diff`: checking a
//! component before anyone deploys it, and replaying recorded decisions
//! through two policies to see what would change.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use attrelay_policy::model::Verdict;

use super::{EXIT_OK, EXIT_REFUSED, UsageError, load_config};
use crate::policy::{EngineLimits, PolicyEngine, PolicyError, PolicySource, TenantBudget, World};
use crate::validate::{check_scenarios, check_tenant_scenarios};

/// What `attrelay policy validate` is asked.
pub struct ValidateArgs<'a> {
    pub component: &'a Path,
    /// The configuration whose settings (and budgets) apply.
    pub config: Option<&'a PathBuf>,
    /// A tenant policy: the tenant of the configuration whose settings and
    /// budgets apply.
    pub tenant: Option<&'a str>,
    /// `KEY=VALUE` settings, over the configuration's.
    pub settings: &'a [String],
}

/// Finds which world `component` implements (by its exports), loads it
/// for that world with the settings given, and runs the built-in scenarios
/// through it. Exit 0 when it answers them all.
pub fn validate(args: &ValidateArgs<'_>, out: &mut dyn Write) -> Result<u8, UsageError> {
    // Usage errors before any work: a malformed --setting, or --tenant
    // without the configuration it names a tenant of.
    overlay(&mut Vec::new(), args.settings)?;
    if args.tenant.is_some() && args.config.is_none() {
        return Err(UsageError::new("--tenant needs --config"));
    }
    let config = args.config.map(|c| load_config(Some(c))).transpose()?;
    let engine = PolicyEngine::new(EngineLimits {
        max_instances: 8,
        ..EngineLimits::default()
    })
    .map_err(UsageError::new)?;
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(UsageError::new);
    let origin = args.component.display().to_string();
    let world = std::fs::read(args.component)
        .map_err(|e| PolicyError::Read {
            origin: origin.clone(),
            source: e,
        })
        .and_then(|bytes| engine.world_of(&origin, &bytes));
    let world = match world {
        Ok(Some(world)) => world,
        Ok(None) => {
            w(
                out,
                format!(
                    "INVALID: {origin}: the component exports neither attrelay:policy/policy (world {}) nor attrelay:policy/tenant-policy (world {})",
                    World::AttributionPolicy.name(),
                    World::TenantRules.name()
                ),
            )?;
            return Ok(EXIT_REFUSED);
        }
        Err(e) => {
            w(out, format!("INVALID: {e}"))?;
            return Ok(EXIT_REFUSED);
        }
    };
    w(
        out,
        format!("component {origin}: implements {}", world.name()),
    )?;
    let source = PolicySource::File(args.component.to_path_buf());
    let outcome = match world {
        World::AttributionPolicy => {
            let mut settings = config.map(|c| c.policy.settings).unwrap_or_default();
            overlay(&mut settings, args.settings)?;
            engine
                .load(&source, &settings)
                .map_err(|e| e.to_string())
                .and_then(|p| {
                    w(
                        out,
                        format!("  sha256 {}; compiled, linked, configured: ok", p.sha256()),
                    )
                    .map_err(|e| e.to_string())?;
                    check_scenarios(&p)
                })
        }
        World::TenantRules => {
            let (mut settings, budget) = tenant_settings(config.as_ref(), args.tenant)?;
            overlay(&mut settings, args.settings)?;
            let mut first = true;
            check_tenant_scenarios(|tenant| {
                let p = engine
                    .load_tenant(&source, &settings, tenant, budget)
                    .map_err(|e| e.to_string())?;
                if std::mem::take(&mut first) {
                    let _ = writeln!(
                        out,
                        "  sha256 {}; compiled, linked, configured: ok",
                        p.sha256()
                    );
                }
                Ok(p)
            })
        }
    };
    report(outcome, world, out)
}

/// `KEY=VALUE` settings over `settings` (a key given again replaces it).
fn overlay(settings: &mut Vec<(String, String)>, given: &[String]) -> Result<(), UsageError> {
    for s in given {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| UsageError::new(format!("--setting {s}: write KEY=VALUE")))?;
        settings.retain(|(key, _)| key != k);
        settings.push((k.to_string(), v.to_string()));
    }
    Ok(())
}

/// A tenant policy's settings and budgets: the configured tenant's, or none
/// and the engine's defaults.
fn tenant_settings(
    config: Option<&crate::config::Config>,
    tenant: Option<&str>,
) -> Result<(Vec<(String, String)>, TenantBudget), UsageError> {
    let defaults = EngineLimits::default();
    let budget = TenantBudget {
        call_timeout: defaults.call_timeout,
        memory_limit: defaults.memory_limit,
    };
    let Some(id) = tenant else {
        return Ok((Vec::new(), budget));
    };
    let config = config.ok_or_else(|| UsageError::new("--tenant needs --config"))?;
    let t =
        config.tenants.iter().find(|t| t.id == id).ok_or_else(|| {
            UsageError::new(format!("{}: no tenant '{id}'", config.source.display()))
        })?;
    Ok(match &t.policy {
        Some(p) => (
            p.settings.clone(),
            TenantBudget {
                call_timeout: p.timeout,
                memory_limit: p.memory_limit,
            },
        ),
        None => (Vec::new(), budget),
    })
}

fn report(
    outcome: Result<crate::validate::ScenarioReport, String>,
    world: World,
    out: &mut dyn Write,
) -> Result<u8, UsageError> {
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(UsageError::new);
    let report = match outcome {
        Ok(r) => r,
        Err(e) => {
            w(out, format!("INVALID: {e}"))?;
            return Ok(EXIT_REFUSED);
        }
    };
    let judged = match world {
        World::AttributionPolicy => "calls",
        World::TenantRules => "recipients judged by the tenant policy",
    };
    w(
        out,
        format!(
            "  built-in scenarios: {} sessions, {} {judged}, all answered",
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
