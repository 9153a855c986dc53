//! A tenant's own policy (`policy`, `policy_settings`, `policy_timeout_ms`,
//! `policy_memory_limit_mib`): run after the base attribution, within
//! budgets the base policy's bound.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::super::policy::{PolicySettings, setting_text};
use super::super::source::{ConfigError, Source, limit};
use super::raw::RawTenant;

/// `[[tenant]] policy = ...` and its settings and budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPolicySettings {
    pub component: PathBuf,
    pub settings: Vec<(String, String)>,
    pub timeout: Duration,
    pub memory_limit: usize,
}

/// The policy of tenant `t` (`key` is `tenant[N]`), if it has one; its
/// budgets default to the base `policy`'s.
pub(super) fn parse(
    src: &Source<'_>,
    t: &RawTenant,
    key: &str,
    policy: &PolicySettings,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Option<TenantPolicySettings>, ConfigError> {
    let Some(component) = &t.policy else {
        if let Some((k, v)) = t.policy_settings.iter().next() {
            return Err(src.error(
                v.span(),
                format!("{key}.policy_settings.{k}"),
                "policy_settings without a tenant policy",
            ));
        }
        return Ok(None);
    };
    let mut settings = Vec::new();
    for (k, v) in &t.policy_settings {
        settings.push((
            k.clone(),
            setting_text(src, k, v, &format!("{key}.policy_settings"))?,
        ));
    }
    let table = src.table(key);
    Ok(Some(TenantPolicySettings {
        component: src.file(format!("{key}.policy"), component, resolve),
        settings,
        timeout: limit!(table, t.policy_timeout_ms, millis 1..=60_000, policy.timeout),
        memory_limit: memory_limit(src, &t.policy_memory_limit_mib, key, policy.memory_limit)?,
    }))
}

/// A tenant policy's memory budget in bytes: at most the base policy's
/// `policy.memory_limit_mib`, which sizes every slot of the instance pool.
/// A larger budget could never be granted (the slot caps the memory), so it
/// is an error rather than silently less than the file says.
fn memory_limit(
    src: &Source,
    v: &Option<Spanned<u64>>,
    key: &str,
    slot: usize,
) -> Result<usize, ConfigError> {
    let slot_mib = (slot / (1024 * 1024)) as u64;
    let mib = match v {
        None => slot_mib,
        Some(x) if *x.get_ref() == 0 => {
            return Err(src.error(
                x.span(),
                format!("{key}.policy_memory_limit_mib"),
                "must be at least 1 MiB",
            ));
        }
        Some(x) if *x.get_ref() > slot_mib => {
            return Err(src.error(
                x.span(),
                format!("{key}.policy_memory_limit_mib"),
                format!(
                    "{} MiB is more than policy.memory_limit_mib ({slot_mib} MiB), the size of every slot of the policy instance pool; raise policy.memory_limit_mib or lower this budget",
                    x.get_ref()
                ),
            ));
        }
        Some(x) => *x.get_ref(),
    };
    Ok((mib * 1024 * 1024) as usize)
}
