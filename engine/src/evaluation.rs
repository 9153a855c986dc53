//! The evaluation: what judges sessions ([`Evaluation`], built once per
//! configuration and swapped whole on a reload) and the judging of one
//! session ([`Judges`]). One module used by every front end — the SMTP
//! server, the Postfix policy service, `attrelay check`, an embedding
//! gateway — so that all decide alike: the base policy, the tenant policy of
//! the attributed tenant (which may only refine that tenant's verdict), the
//! shadow candidate (which never decides), and the decision log.

use std::collections::HashMap;
use std::sync::Arc;

use attrelay_policy::model::{Action, SessionFacts, Verdict};
use attrelay_policy::replies;
use tracing::warn;

use crate::certificate::TrustAnchors;
use crate::decisions::{
    DecisionBudget, DecisionLog, DecisionRecord, Grant, MAX_RECORDS_PER_SESSION,
};
use crate::directory::{Directory, RecipientCheck, recipient_not_found_verdict};
use crate::policy::{LoadedPolicy, PolicySession, TenantPolicy, TenantSession};
use crate::verdict::refuse_unvouched_routing;

/// What judges a session.
pub struct Evaluation {
    pub policy: LoadedPolicy,
    pub directory: Arc<Directory>,
    /// Shared with the sessions verifying their clients' chains off the
    /// runtime.
    pub anchors: Arc<TrustAnchors>,
    /// Tenant policies by tenant id.
    pub tenant_policies: HashMap<String, TenantPolicy>,
    /// A candidate evaluated beside the policy, never deciding.
    pub shadow: Option<LoadedPolicy>,
    pub decision_log: Option<Arc<DecisionLog>>,
    /// Increments with every successful reload.
    pub generation: u64,
}

impl Evaluation {
    /// An evaluation of `policy` over `directory` alone: no client
    /// certificate anchors, tenant policies, shadow or decision log (set
    /// the fields to add them).
    pub fn new(policy: LoadedPolicy, directory: Arc<Directory>) -> Evaluation {
        Evaluation {
            policy,
            directory,
            anchors: Arc::new(TrustAnchors::default()),
            tenant_policies: HashMap::new(),
            shadow: None,
            decision_log: None,
            generation: 0,
        }
    }

    /// The judges of one session with `facts`; `client` names it in the
    /// decision log.
    pub fn session(self: &Arc<Self>, facts: SessionFacts, client: &str) -> Judges {
        Judges::new(self.clone(), facts, client)
    }
}

/// Tenant policies one session may run. Each is a policy instance held to
/// the session's end, and recipients are attributed to the tenant owning
/// their domain, so without a bound one anonymous session addressing
/// recipients of every tenant would hold an instance per tenant. Four covers
/// a message to several tenants; a recipient of a fifth tenant is deferred
/// with `452 4.5.3` (see [`too_many_tenants`]).
pub const MAX_TENANT_POLICIES_PER_SESSION: usize = 4;

/// Policy instances one SMTP session's [`Judges`] hold at most: the base
/// policy, the shadow candidate and [`MAX_TENANT_POLICIES_PER_SESSION`]
/// tenant policies. Counted whether or not a shadow or tenant policies are
/// configured now, because a reload may add them while the instance pool,
/// sized at start, stays.
pub const MAX_INSTANCES_PER_SESSION: usize = 2 + MAX_TENANT_POLICIES_PER_SESSION;

/// Policy instances one Postfix policy-delegation request holds at most: it
/// judges one recipient, so the base policy, the shadow and one tenant
/// policy. A connection answers its requests one after the other, each with
/// [`Judges`] of its own dropped before the next.
pub const MAX_INSTANCES_PER_POLICYD_REQUEST: usize = 3;

/// The stage a verdict is asked for.
#[derive(Debug, Clone)]
pub enum Stage {
    Mail(String),
    Rcpt(String),
}

fn next_session_number() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The policy instances judging one SMTP session: the base policy, the
/// shadow candidate, and the tenant policies of tenants attributed so far
/// (at most [`MAX_TENANT_POLICIES_PER_SESSION`]). Moved as a whole onto the
/// blocking pool for each call.
pub struct Judges {
    eval: Arc<Evaluation>,
    facts: SessionFacts,
    id: String,
    base: Option<PolicySession>,
    shadow: Option<PolicySession>,
    tenants: HashMap<String, TenantSession>,
    decisions: DecisionBudget,
}

fn same_decision(a: &Verdict, b: &Verdict) -> bool {
    a.code == b.code && a.enhanced == b.enhanced && a.tenant == b.tenant && a.reason == b.reason
}

/// The answer for a recipient whose tenant policy would be one more than
/// [`MAX_TENANT_POLICIES_PER_SESSION`]. Temporary, because the recipient is
/// not at fault: RFC 5321's `452` for too many recipients, which clients
/// retry later (the next attempt is a new session, where the tenant's
/// policy can run). Never the base verdict alone: an accept would bypass the
/// tenant's rules, and a rejection would bounce mail the tenant's rules may
/// only have deferred.
pub fn too_many_tenants(tenant: &str) -> Verdict {
    Verdict {
        explanation: vec![format!(
            "the session already runs the policies of {MAX_TENANT_POLICIES_PER_SESSION} tenants; tenant {tenant}'s would be one more"
        )],
        ..replies::verdict(
            Action::Defer,
            452,
            "4.5.3",
            "Too many tenants in one session; send this recipient again in a new session",
            Some(tenant.to_string()),
            "tenant-limit",
        )
    }
}

impl Judges {
    /// Judges for one session; `client` names it in the decision log (a
    /// sequence number is appended, so ids are unique within a process).
    pub fn new(eval: Arc<Evaluation>, facts: SessionFacts, client: &str) -> Judges {
        let id = format!("{client}-{}", next_session_number());
        Judges::with_id(eval, facts, id)
    }

    /// Judges for one session the caller has named `id` (its logs name it
    /// so too): the decision log's `session`.
    pub fn with_id(eval: Arc<Evaluation>, facts: SessionFacts, id: String) -> Judges {
        Judges {
            eval,
            facts,
            id,
            base: None,
            shadow: None,
            tenants: HashMap::new(),
            decisions: DecisionBudget::default(),
        }
    }

    /// Charges this session's decision-log records to `budget` instead of
    /// a fresh one: an SMTP connection passes the same budget to the judges
    /// of each EHLO, so that saying EHLO again does not renew it.
    pub fn with_decision_budget(mut self, budget: DecisionBudget) -> Judges {
        self.decisions = budget;
        self
    }

    /// The verdict for `MAIL FROM:<sender>` (`""` for the null sender).
    pub fn mail_from(&mut self, sender: &str) -> Verdict {
        self.decide(&Stage::Mail(sender.to_string()), sender).0
    }

    /// The verdict for `RCPT TO:<recipient>` in a transaction from `sender`.
    pub fn rcpt_to(&mut self, sender: &str, recipient: &str) -> Verdict {
        self.decide(&Stage::Rcpt(recipient.to_string()), sender).0
    }

    /// The verdict for one stage, the time the deciding policies took, and the
    /// shadow's verdict when it differs from the base policy's.
    pub fn decide(
        &mut self,
        stage: &Stage,
        sender: &str,
    ) -> (Verdict, std::time::Duration, Option<Verdict>) {
        let started = std::time::Instant::now();
        // Directory-based edge blocking comes first: a recipient a tenant's
        // list does not hold is refused before any policy runs, by every
        // front end alike.
        if let Stage::Rcpt(r) = stage
            && let RecipientCheck::Unknown { tenant } = self.eval.directory.recipient_check(r)
        {
            let v = recipient_not_found_verdict(r, &tenant);
            self.log(stage, sender, &v);
            return (v, started.elapsed(), None);
        }
        let base_v = self.base_verdict(stage);
        let v = match stage {
            Stage::Rcpt(r) => self.tenant_verdict(sender, r, &base_v),
            Stage::Mail(_) => None,
        }
        .unwrap_or_else(|| base_v.clone());
        let v = match stage {
            Stage::Rcpt(r) => refuse_unvouched_routing(r, v),
            Stage::Mail(_) => v,
        };
        let latency = started.elapsed();
        let shadow = self
            .shadow_verdict(stage)
            .filter(|sv| !same_decision(&base_v, sv));
        self.log(stage, sender, &v);
        (v, latency, shadow)
    }

    /// The base policy's verdict (its instance opened at the first call).
    fn base_verdict(&mut self, stage: &Stage) -> Verdict {
        let (eval, facts) = (&self.eval, &self.facts);
        let base = self
            .base
            .get_or_insert_with(|| eval.policy.open_session(eval.directory.clone(), facts));
        match stage {
            Stage::Mail(s) => base.mail_from(s),
            Stage::Rcpt(r) => base.rcpt_to(r),
        }
    }

    /// The tenant policy's verdict for a recipient the base policy
    /// attributed to a tenant that has one; `None` when there is none to ask.
    /// A tenant beyond [`MAX_TENANT_POLICIES_PER_SESSION`] gets
    /// [`too_many_tenants`], and no instance.
    fn tenant_verdict(
        &mut self,
        sender: &str,
        recipient: &str,
        base_v: &Verdict,
    ) -> Option<Verdict> {
        let tenant = base_v.tenant.as_deref()?;
        let policy = self.eval.tenant_policies.get(tenant)?;
        if !self.tenants.contains_key(tenant)
            && self.tenants.len() >= MAX_TENANT_POLICIES_PER_SESSION
        {
            return Some(too_many_tenants(tenant));
        }
        let (eval, facts) = (&self.eval, &self.facts);
        let session = self
            .tenants
            .entry(tenant.to_string())
            .or_insert_with(|| policy.open_session(eval.directory.clone(), facts));
        Some(session.rcpt_to(sender, recipient, base_v))
    }

    /// The shadow candidate's verdict, when one is configured.
    fn shadow_verdict(&mut self, stage: &Stage) -> Option<Verdict> {
        let (eval, facts) = (&self.eval, &self.facts);
        let sp = eval.shadow.as_ref()?;
        let ss = self
            .shadow
            .get_or_insert_with(|| sp.open_session(eval.directory.clone(), facts));
        Some(match stage {
            Stage::Mail(s) => ss.mail_from(s),
            Stage::Rcpt(r) => ss.rcpt_to(r),
        })
    }

    /// Appends the decision to the decision log, if one is configured and
    /// the connection has not used up [`MAX_RECORDS_PER_SESSION`].
    fn log(&self, stage: &Stage, sender: &str, v: &Verdict) {
        let Some(log) = &self.eval.decision_log else {
            return;
        };
        match self.decisions.take() {
            Grant::Append => log.append(self.record(stage, sender, v)),
            Grant::Exhausted => warn!(
                session = %self.id,
                limit = MAX_RECORDS_PER_SESSION,
                "decision log: the session reached its record limit; its further decisions are made but not logged"
            ),
            Grant::Silent => {}
        }
    }

    fn record(&self, stage: &Stage, sender: &str, v: &Verdict) -> DecisionRecord {
        let (stage_name, sender, recipient) = match stage {
            Stage::Mail(s) => ("mail-from", s.clone(), None),
            Stage::Rcpt(r) => ("rcpt-to", sender.to_string(), Some(r.clone())),
        };
        DecisionRecord {
            session: self.id.clone(),
            facts: self.facts.clone(),
            stage: stage_name.to_string(),
            sender,
            recipient,
            verdict: v.clone(),
            policy: self.eval.policy.sha256().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_beyond_the_bound_is_deferred_for_this_recipient_only() {
        let v = too_many_tenants("contoso");
        assert_eq!(v.action, Action::Defer, "never accepted without its policy");
        assert_eq!((v.code, v.enhanced.as_str()), (452, "4.5.3"));
        assert_eq!(v.tenant.as_deref(), Some("contoso"));
        assert!(
            v.reply_line().bytes().all(|b| (0x20..0x7f).contains(&b)),
            "{}",
            v.reply_line()
        );
    }
}
