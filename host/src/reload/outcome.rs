//! What a reload reports, and which changes it cannot apply.

use serde::Serialize;

use crate::config::Config;
use crate::policy::cache::Provenance;
use crate::validate::ScenarioReport;

/// The result of a reload, as the admin endpoint reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    pub generation: u64,
    pub policy: String,
    pub sha256: String,
    /// "memory", "disk" (precompiled cache) or "compiled".
    pub provenance: String,
    pub tenants: usize,
    pub tenant_policies: usize,
    pub elapsed_ms: f64,
    pub scenarios: ScenarioReport,
    /// Changed settings that a reload cannot apply (listeners, limits, the
    /// spool, delivery, the engine's budgets): they take effect at the next
    /// restart, and until then the running values stay.
    pub restart_required: Vec<&'static str>,
}

/// The settings read only at start that differ between `running` and `new`.
/// Everything else — tenants, connectors, trust anchors, policies and their
/// settings, shadow, decision log — is applied by the reload itself.
pub fn restart_required(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    // Trust anchors (client_ca) are part of the evaluation: reloaded.
    let server = |c: &Config| crate::config::ServerSettings {
        client_ca: Vec::new(),
        ..c.server.clone()
    };
    if server(running) != server(new) {
        out.push("server");
    }
    if running.spool != new.spool || running.spool_min_free_bytes != new.spool_min_free_bytes {
        out.push("spool");
    }
    if running.delivery != new.delivery {
        out.push("delivery");
    }
    if running.admin != new.admin {
        out.push("admin");
    }
    if running.policyd != new.policyd {
        out.push("policyd");
    }
    let engine = |c: &Config| {
        (
            c.policy.timeout,
            c.policy.memory_limit,
            c.policy.max_instances,
            c.policy.cache.clone(),
        )
    };
    if engine(running) != engine(new) {
        out.push("policy.timeout_ms/memory_limit_mib/max_instances/cache");
    }
    out
}

/// How the policy was obtained, as the outcome names it.
pub(super) fn provenance_name(p: Provenance) -> &'static str {
    match p {
        Provenance::Memory => "memory",
        Provenance::Disk => "disk",
        Provenance::Compiled => "compiled",
    }
}
