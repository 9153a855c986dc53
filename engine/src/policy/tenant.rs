//! Tenant policies: a tenant's own rules, run in their own store with their
//! own budgets after the base attribution, for that tenant's mail only.

use std::sync::Arc;
use std::time::Duration;

use attrelay_policy::model::{Action, SessionFacts, Verdict};
use attrelay_policy::replies;
use wasmtime::Store;
use wasmtime::component::ResourceAny;

use super::bindings::tenant::{TenantRules, TenantRulesPre};
use super::bindings::{tenant_guest, types as wit};
use super::cache::Provenance;
use super::engine::{
    PolicyEngine, PolicyError, PolicySource, StartError, World, link_error, wit_settings,
};
use super::session::within_budget;
use super::store::{SessionState, describe_error_with, facts_to_wit};
use super::verdict::check;
use crate::directory::Directory;
use crate::verdict::{policy_failure, vouches_for_sender};

/// The budgets of one tenant's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantBudget {
    pub call_timeout: Duration,
    pub memory_limit: usize,
}

struct Inner {
    engine: PolicyEngine,
    pre: TenantRulesPre<SessionState>,
    settings: Vec<tenant_guest::Setting>,
    tenant: String,
    budget: TenantBudget,
    origin: String,
    sha256: String,
    provenance: Provenance,
}

/// A tenant's compiled, validated policy. Cheap to clone.
#[derive(Clone)]
pub struct TenantPolicy {
    inner: Arc<Inner>,
}

impl PolicyEngine {
    /// Loads `tenant`'s policy: compiled once per distinct component (shared
    /// between tenants), linked against the tenant world, and configured once
    /// to refuse bad settings at load time.
    pub fn load_tenant(
        &self,
        source: &PolicySource,
        settings: &[(String, String)],
        tenant: &str,
        budget: TenantBudget,
    ) -> Result<TenantPolicy, PolicyError> {
        let origin = format!("{} (tenant {tenant})", source.describe());
        let slot = self.limits().memory_limit;
        if budget.memory_limit > slot {
            return Err(PolicyError::Budget {
                origin,
                message: format!(
                    "a memory budget of {} MiB is more than the {} MiB of a policy instance pool slot (policy.memory_limit_mib when the relay started; changing it takes a restart)",
                    budget.memory_limit / (1024 * 1024),
                    slot / (1024 * 1024)
                ),
            });
        }
        let bytes = match source {
            PolicySource::Embedded => {
                return Err(PolicyError::Link {
                    origin,
                    world: World::TenantRules,
                    detail: anyhow::anyhow!("the embedded default policy is not a tenant policy"),
                });
            }
            PolicySource::File(p) => std::fs::read(p).map_err(|e| PolicyError::Read {
                origin: origin.clone(),
                source: e,
            })?,
        };
        let (component, sha256, provenance) = self.component(&origin, &bytes)?;
        let pre = self
            .tenant_linker()
            .instantiate_pre(&component)
            .and_then(TenantRulesPre::new)
            .map_err(link_error(&origin, World::TenantRules))?;
        let policy = TenantPolicy {
            inner: Arc::new(Inner {
                engine: self.clone(),
                pre,
                settings: wit_settings(settings),
                tenant: tenant.to_string(),
                budget,
                origin: origin.clone(),
                sha256,
                provenance,
            }),
        };
        let mut store = policy.new_store(Arc::new(Directory::default()), 0);
        store.set_epoch_deadline(policy.ticks());
        match policy.instantiate(&mut store) {
            Ok(_) => Ok(policy),
            Err(StartError::Settings(message)) => Err(PolicyError::Settings { origin, message }),
            Err(StartError::Failed(message)) => Err(PolicyError::Start { origin, message }),
        }
    }
}

impl TenantPolicy {
    pub fn tenant(&self) -> &str {
        &self.inner.tenant
    }
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }
    pub fn provenance(&self) -> Provenance {
        self.inner.provenance
    }

    fn ticks(&self) -> u64 {
        self.inner.engine.ticks_for(self.inner.budget.call_timeout)
    }

    /// A store for one instance deciding at `time` (see [`super::sandbox`]).
    fn new_store(&self, directory: Arc<Directory>, time: i64) -> Store<SessionState> {
        super::store::new_store(
            self.inner.engine.engine(),
            directory,
            time,
            self.inner.budget.memory_limit,
            Some(self.inner.tenant.clone()),
        )
    }

    fn describe(&self, store: &Store<SessionState>, e: wasmtime::Error) -> String {
        describe_error_with(
            store,
            &e.into(),
            self.inner.budget.call_timeout,
            self.inner.budget.memory_limit,
        )
    }

    /// Instantiates and configures, within the deadline the caller set.
    fn instantiate(&self, store: &mut Store<SessionState>) -> Result<TenantRules, StartError> {
        let bindings = self
            .inner
            .pre
            .instantiate(&mut *store)
            .map_err(|e| StartError::Failed(self.describe(store, e)))?;
        match bindings
            .attrelay_policy_tenant_policy()
            .call_configure(&mut *store, &self.inner.settings)
        {
            Ok(Ok(())) => Ok(bindings),
            Ok(Err(m)) => Err(StartError::Settings(crate::verdict::one_line(&m))),
            Err(e) => Err(StartError::Failed(self.describe(store, e))),
        }
    }

    /// Instantiates, configures and opens the guest's session.
    fn start(
        &self,
        store: &mut Store<SessionState>,
        facts: &wit::SessionFacts,
    ) -> Result<(TenantRules, ResourceAny), String> {
        let bindings = self
            .instantiate(store)
            .map_err(|(StartError::Settings(m) | StartError::Failed(m))| m)?;
        let session = bindings
            .attrelay_policy_tenant_policy()
            .session()
            .call_constructor(&mut *store, facts)
            .map_err(|e| self.describe(store, e))?;
        Ok((bindings, session))
    }

    /// Opens the tenant's session for one SMTP session. The instance starts
    /// at the first call, within that call's deadline; a failed start
    /// answers every call with `451 4.3.5`.
    pub fn open_session(&self, directory: Arc<Directory>, facts: &SessionFacts) -> TenantSession {
        TenantSession {
            policy: self.clone(),
            store: self.new_store(directory, facts.time),
            state: TenantState::Pending(Box::new(facts_to_wit(facts))),
        }
    }
}

enum TenantState {
    Pending(Box<wit::SessionFacts>),
    Ready(TenantRules, ResourceAny),
    Failed(String),
}

/// A tenant policy instance bound to one SMTP session.
pub struct TenantSession {
    policy: TenantPolicy,
    store: Store<SessionState>,
    state: TenantState,
}

fn verdict_to_wit(v: &Verdict) -> wit::Verdict {
    use attrelay_policy::model::Action;
    wit::Verdict {
        action: match v.action {
            Action::Accept => wit::Action::Accept,
            Action::Defer => wit::Action::Defer,
            Action::Reject => wit::Action::Reject,
        },
        code: v.code,
        enhanced: v.enhanced.clone(),
        text: v.text.clone(),
        tenant: v.tenant.clone(),
        reason: v.reason.clone(),
        explanation: v.explanation.clone(),
        headers: v
            .headers
            .iter()
            .map(|h| wit::HeaderField {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect(),
    }
}

impl TenantSession {
    pub fn policy(&self) -> &TenantPolicy {
        &self.policy
    }

    /// The tenant's verdict for a recipient the base policy attributed to it.
    /// The result always names this tenant; any failure is `451 4.3.5`.
    pub fn rcpt_to(&mut self, sender: &str, recipient: &str, base: &Verdict) -> Verdict {
        let tenant = self.policy.tenant().to_string();
        let fail = |m: String| {
            let mut v = policy_failure(format!("tenant {tenant} policy: {m}"));
            v.tenant = Some(tenant.clone());
            v
        };
        let budget = self.policy.inner.budget;
        self.store.set_epoch_deadline(self.policy.ticks());
        let started = std::time::Instant::now();
        if let TenantState::Pending(facts) = &self.state {
            let facts = facts.clone();
            self.state = match self.policy.start(&mut self.store, &facts) {
                Ok((b, s)) => TenantState::Ready(b, s),
                Err(m) => TenantState::Failed(m),
            };
        }
        let (bindings, session) = match &self.state {
            TenantState::Failed(m) => return fail(m.clone()),
            TenantState::Pending(_) => return fail("policy instance did not start".into()),
            TenantState::Ready(b, s) => (b, *s),
        };
        let base_wit = verdict_to_wit(base);
        let outcome = bindings
            .attrelay_policy_tenant_policy()
            .session()
            .call_rcpt_to(&mut self.store, session, sender, recipient, &base_wit);
        let v = match outcome {
            Ok(v) => v,
            Err(e) => {
                let m = self.policy.describe(&self.store, e);
                self.state = TenantState::Failed(m.clone());
                return fail(m);
            }
        };
        if let Err(m) = within_budget(started, budget.call_timeout) {
            return fail(m);
        }
        match check(v, &self.store.data().directory) {
            Ok(v)
                if v.action == Action::Accept
                    && v.reason.as_deref() == Some(replies::reason::ATTR36)
                    && base.reason.as_deref() != Some(replies::reason::ATTR36) =>
            {
                // The relay writes X-Attrelay-Warning from an attr36
                // accept's text: a tenant policy may give that reason only
                // where the base policy found ATTR36 too.
                fail("verdict claims ATTR36's grace period where the base policy did not find ATTR36".into())
            }
            Ok(v)
                if vouches_for_sender(v.reason.as_deref())
                    && !vouches_for_sender(base.reason.as_deref()) =>
            {
                fail(format!(
                    "verdict claims a connector vouched for the sender (reason {:?}) where the base policy did not",
                    v.reason.as_deref().unwrap_or_default()
                ))
            }
            Ok(mut v) => match v.tenant.as_deref() {
                None => {
                    v.tenant = Some(tenant);
                    v
                }
                Some(t) if t == tenant => v,
                Some(other) => fail(format!(
                    "verdict attributes the mail to another tenant ({other})"
                )),
            },
            Err(m) => fail(m),
        }
    }
}
