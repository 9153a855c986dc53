//! Building the evaluation a configuration describes, validated, before
//! anything is swapped.

use std::collections::HashMap;
use std::sync::Arc;

use crate::certificate::TrustAnchors;
use crate::config::Config;
use crate::decisions::DecisionLog;
use crate::evaluation::Evaluation;
use crate::policy::{LoadedPolicy, PolicyEngine, PolicySource, TenantBudget};
use crate::validate::{ScenarioReport, check_scenarios};

/// Loads the policy a configuration names, turning a refusal of its
/// settings into an error that points at the setting's line.
pub fn load_policy(
    config: &Config,
    engine: &PolicyEngine,
    source: &PolicySource,
) -> Result<LoadedPolicy, String> {
    use crate::policy::PolicyError;
    engine
        .load(source, &config.policy.settings)
        .map_err(|e| match &e {
            PolicyError::Settings { message, .. } => {
                let key = config
                    .policy
                    .settings
                    .iter()
                    .map(|(k, _)| k)
                    .find(|k| message.contains(&format!("'{k}'")));
                match key {
                    Some(k) => format!(
                        "{}:{}: policy.settings.{k}: {e}",
                        config.source.display(),
                        config.policy.setting_lines.get(k).copied().unwrap_or(0)
                    ),
                    None => format!("{}: [policy.settings]: {e}", config.source.display()),
                }
            }
            _ => e.to_string(),
        })
}

/// Builds and validates the evaluation a configuration describes: what
/// the relay runs, and what `attrelay check` runs for one session.
pub fn build(
    config: &Config,
    engine: &PolicyEngine,
    generation: u64,
) -> Result<(Evaluation, ScenarioReport), String> {
    let source = PolicySource::from_option(config.policy.component.as_deref());
    let policy = load_policy(config, engine, &source)?;
    let report =
        check_scenarios(&policy).map_err(|e| format!("{}: refused: {e}", policy.origin()))?;
    let directory = Arc::new(config.directory());
    let anchors = TrustAnchors::load(&config.server.client_ca).map_err(|e| e.to_string())?;
    let mut tenant_policies = HashMap::new();
    for t in &config.tenants {
        let Some(p) = &t.policy else { continue };
        let budget = TenantBudget {
            call_timeout: p.timeout,
            memory_limit: p.memory_limit,
        };
        let tp = engine
            .load_tenant(
                &PolicySource::File(p.component.clone()),
                &p.settings,
                &t.id,
                budget,
            )
            .map_err(|e| e.to_string())?;
        tenant_policies.insert(t.id.clone(), tp);
    }
    let shadow = match &config.policy.shadow {
        Some(path) => Some(
            engine
                .load(&PolicySource::File(path.clone()), &config.policy.settings)
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let decision_log = match &config.policy.decision_log {
        Some(path) => Some(Arc::new(
            DecisionLog::open_with_mode(
                path,
                config.policy.decision_log_max_bytes,
                config.policy.decision_log_mode,
            )
            .map_err(|e| format!("{}: {e}", path.display()))?,
        )),
        None => None,
    };
    Ok((
        Evaluation {
            policy,
            directory,
            anchors: Arc::new(anchors),
            tenant_policies,
            shadow,
            decision_log,
            generation,
        },
        report,
    ))
}
