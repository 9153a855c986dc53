//! Asking the judges of a session from an async front end (the SMTP
//! server, the Postfix policy service): the call runs on the blocking pool
//! and is counted in the metrics. The judging itself is
//! [`attrelay_engine::evaluation`].

use std::net::IpAddr;

use attrelay_policy::model::Verdict;

use crate::evaluation::{Judges, Stage};
use crate::policy::policy_failure;
use tracing::info;

use crate::metrics::Metrics;

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
