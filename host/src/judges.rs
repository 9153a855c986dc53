//! The policies judging one session, shared by the SMTP server and the
//! Postfix policy-delegation front end so that both decide alike: the base
//! policy, the tenant policy of the attributed tenant (which may only refine
//! that tenant's verdict), the shadow candidate (which never decides), and
//! the decision log.

use std::net::IpAddr;
use std::sync::Arc;

use attrelay_policy::model::{SessionFacts, Verdict};
use tracing::info;

use crate::decisions::DecisionRecord;
use crate::metrics::Metrics;
use crate::policy::{PolicySession, TenantSession, policy_failure};
use crate::reload::Evaluation;

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
/// shadow candidate, and the tenant policies of tenants attributed so far.
/// Moved as a whole onto the blocking pool for each call.
pub struct Judges {
    eval: Arc<Evaluation>,
    facts: SessionFacts,
    id: String,
    base: Option<PolicySession>,
    shadow: Option<PolicySession>,
    tenants: std::collections::HashMap<String, TenantSession>,
}

fn same_decision(a: &Verdict, b: &Verdict) -> bool {
    a.code == b.code && a.enhanced == b.enhanced && a.tenant == b.tenant && a.reason == b.reason
}

impl Judges {
    /// Judges for one session; `client` names it in the decision log (a
    /// sequence number is appended, so ids are unique within a process).
    pub fn new(eval: Arc<Evaluation>, facts: SessionFacts, client: &str) -> Judges {
        Judges {
            eval,
            facts,
            id: format!("{client}-{}", next_session_number()),
            base: None,
            shadow: None,
            tenants: Default::default(),
        }
    }

    /// The verdict for one stage, the time the deciding policies took, and the
    /// shadow's verdict when it differs from the base policy's.
    pub fn decide(
        &mut self,
        stage: &Stage,
        sender: &str,
    ) -> (Verdict, std::time::Duration, Option<Verdict>) {
        let started = std::time::Instant::now();
        let (eval, facts) = (&self.eval, &self.facts);
        let base = self
            .base
            .get_or_insert_with(|| eval.policy.open_session(eval.directory.clone(), facts));
        let base_v = match stage {
            Stage::Mail(s) => base.mail_from(s),
            Stage::Rcpt(r) => base.rcpt_to(r),
        };
        let mut v = base_v.clone();
        if let Stage::Rcpt(r) = stage
            && let Some(t) = base_v.tenant.clone()
            && let Some(tp) = eval.tenant_policies.get(&t)
        {
            let ts = self
                .tenants
                .entry(t)
                .or_insert_with(|| tp.open_session(eval.directory.clone(), facts));
            v = ts.rcpt_to(sender, r, &base_v);
        }
        let latency = started.elapsed();
        let shadow = eval.shadow.as_ref().and_then(|sp| {
            let ss = self
                .shadow
                .get_or_insert_with(|| sp.open_session(eval.directory.clone(), facts));
            let sv = match stage {
                Stage::Mail(s) => ss.mail_from(s),
                Stage::Rcpt(r) => ss.rcpt_to(r),
            };
            (!same_decision(&base_v, &sv)).then_some(sv)
        });
        if let Some(log) = &eval.decision_log {
            let (stage_name, recipient) = match stage {
                Stage::Mail(_) => ("mail-from", None),
                Stage::Rcpt(r) => ("rcpt-to", Some(r.clone())),
            };
            let sender = match stage {
                Stage::Mail(s) => s.clone(),
                Stage::Rcpt(_) => sender.to_string(),
            };
            log.append(&DecisionRecord {
                session: self.id.clone(),
                facts: facts.clone(),
                stage: stage_name.to_string(),
                sender,
                recipient,
                verdict: v.clone(),
                policy: eval.policy.sha256().to_string(),
            });
        }
        (v, latency, shadow)
    }
}

/// Runs one policy call on the blocking pool (a call may take its whole time
/// budget and must not stall other connections), records its latency and
/// outcome in `metrics`, and logs a differing shadow verdict.
///
/// Returns the judges for the session's next call — `None` if the task
/// running them was lost, after which the caller starts afresh — and the
/// verdict, which is `451 4.3.5` whenever anything went wrong.
pub async fn ask(
    mut judges: Judges,
    stage: Stage,
    sender: String,
    metrics: &Metrics,
    client: IpAddr,
) -> (Option<Judges>, Verdict) {
    let result = tokio::task::spawn_blocking(move || {
        let v = judges.decide(&stage, &sender);
        (judges, v)
    })
    .await;
    let (judges, (v, latency, shadow)) = match result {
        Ok(x) => x,
        Err(e) => return (None, policy_failure(format!("policy task failed: {e}"))),
    };
    metrics.policy_latency.observe(latency.as_secs_f64());
    if v.reason.as_deref() == Some("policy-failure") {
        metrics.policy_failures.inc();
    }
    if let Some(sv) = shadow {
        metrics.shadow_differences.inc();
        info!(
            target: "attrelay::shadow",
            client = %client,
            active = %v.reply_line(),
            active_tenant = v.tenant.as_deref().unwrap_or("-"),
            shadow = %sv.reply_line(),
            shadow_tenant = sv.tenant.as_deref().unwrap_or("-"),
            shadow_reason = sv.reason.as_deref().unwrap_or("-"),
            "shadow policy differs"
        );
    }
    (Some(judges), v)
}
