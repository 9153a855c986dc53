//! `[policy]`: the base policy, its settings and budgets, the shadow and
//! the decision log. The budgets' defaults are the engine's
//! ([`crate::policy::EngineLimits::default`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::source::{ConfigError, Source, limit};
use crate::policy::EngineLimits;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    component: Option<Spanned<PathBuf>>,
    #[serde(default)]
    settings: BTreeMap<String, Spanned<toml::Value>>,
    timeout_ms: Option<Spanned<u64>>,
    memory_limit_mib: Option<Spanned<u64>>,
    max_instances: Option<Spanned<u64>>,
    cache: Option<Spanned<PathBuf>>,
    shadow: Option<Spanned<PathBuf>>,
    decision_log: Option<Spanned<PathBuf>>,
    decision_log_max_mib: Option<Spanned<u64>>,
    decision_log_mode: Option<Spanned<String>>,
}

/// `[policy]`
#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// `None`: the embedded default policy.
    pub component: Option<PathBuf>,
    /// Settings handed to the policy's `configure`, as strings.
    pub settings: Vec<(String, String)>,
    /// The time budget of one policy call.
    pub timeout: Duration,
    /// The memory budget of one policy instance.
    pub memory_limit: usize,
    /// The least number of policy instances the relay's pool holds; `serve`
    /// raises it to what all sessions can hold at once
    /// ([`crate::relay::policy_pool_size`]), so it cannot undersize the pool.
    pub max_instances: u32,
    /// Line of each setting key, to point at it when the policy refuses it.
    pub setting_lines: HashMap<String, usize>,
    /// Where compiled components are cached.
    pub cache: Option<PathBuf>,
    /// A candidate evaluated beside the active policy, never deciding.
    pub shadow: Option<PathBuf>,
    /// Append every decision's inputs and verdict here (JSON Lines).
    pub decision_log: Option<PathBuf>,
    /// Rotate the decision log at this size (0: never; see
    /// [`crate::decisions::DecisionLog`]).
    pub decision_log_max_bytes: u64,
    /// The mode the decision log is created with: `0600`, or `0640` for a
    /// group that reads it (`decision_log_mode`).
    pub decision_log_mode: u32,
}

impl Default for PolicySettings {
    fn default() -> Self {
        let limits = EngineLimits::default();
        PolicySettings {
            component: None,
            settings: Vec::new(),
            timeout: limits.call_timeout,
            memory_limit: limits.memory_limit,
            max_instances: limits.max_instances,
            setting_lines: HashMap::new(),
            cache: None,
            shadow: None,
            decision_log: None,
            decision_log_max_bytes: crate::decisions::DEFAULT_MAX_MIB * 1024 * 1024,
            decision_log_mode: crate::decisions::DEFAULT_MODE,
        }
    }
}

/// The engine's budgets as `[policy]` sets them.
impl From<&PolicySettings> for EngineLimits {
    fn from(p: &PolicySettings) -> Self {
        EngineLimits {
            call_timeout: p.timeout,
            memory_limit: p.memory_limit,
            max_instances: p.max_instances,
        }
    }
}

pub(super) fn setting_text(
    src: &Source<'_>,
    key: &str,
    value: &Spanned<toml::Value>,
    table: &str,
) -> Result<String, ConfigError> {
    Ok(match value.get_ref() {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        _ => {
            return Err(src.error(
                value.span(),
                format!("{table}.{key}"),
                "a setting is a string, number, boolean or date-time, not an array or table",
            ));
        }
    })
}

/// `decision_log_mode`: octal, its owner may write, a group may read and
/// write; never other users, and never executable.
fn decision_log_mode(src: &Source<'_>, v: &Spanned<String>) -> Result<u32, ConfigError> {
    let text = v.get_ref().trim();
    let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8).ok();
    match mode {
        Some(m) if m & 0o600 == 0o600 && m & !0o660 == 0 => Ok(m),
        _ => Err(src.error(
            v.span(),
            "policy.decision_log_mode",
            format!(
                "'{text}' is not a mode for the decision log: octal, readable and writable by its owner, at most by a group too, such as \"0600\" or \"0640\" (it names every sender, recipient and client)"
            ),
        )),
    }
}

/// Validates `[policy]`.
pub(super) fn parse(
    src: &Source<'_>,
    p: RawPolicy,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<PolicySettings, ConfigError> {
    let t = src.table("policy");
    let mut policy = PolicySettings {
        component: p
            .component
            .map(|c| src.file("policy.component", &c, resolve)),
        ..PolicySettings::default()
    };
    for (key, value) in &p.settings {
        let text = setting_text(src, key, value, "policy.settings")?;
        policy
            .setting_lines
            .insert(key.clone(), src.line(&value.span()));
        policy.settings.push((key.clone(), text));
    }
    policy.cache = p.cache.map(|c| src.file("policy.cache", &c, resolve));
    policy.shadow = p.shadow.map(|c| src.file("policy.shadow", &c, resolve));
    policy.decision_log = p
        .decision_log
        .map(|c| src.file("policy.decision_log", &c, resolve));
    policy.decision_log_max_bytes =
        limit!(t, p.decision_log_max_mib, mib 0..=1 << 20, policy.decision_log_max_bytes);
    if let Some(v) = &p.decision_log_mode {
        policy.decision_log_mode = decision_log_mode(src, v)?;
    }
    let defaults = EngineLimits::default();
    policy.timeout = limit!(t, p.timeout_ms, millis 1..=60_000, defaults.call_timeout);
    policy.memory_limit = limit!(t, p.memory_limit_mib, mib 1..=4096, defaults.memory_limit);
    policy.max_instances = limit!(t, p.max_instances, 1..=100_000, defaults.max_instances);
    Ok(policy)
}
