//! One policy instance for one SMTP session: a fresh `Store` with its own
//! budgets, and calls that can only end in a checked verdict or `451 4.3.5`.

use std::sync::Arc;

use attrelay_policy::model::{SessionFacts, Verdict};
use wasmtime::Store;
use wasmtime::component::ResourceAny;

use super::bindings::{AttributionPolicy, types as wit};
use super::engine::{LoadedPolicy, PolicyEngine, StartError};
use super::store::{SessionState, describe_error_with, facts_to_wit};
use super::verdict::check;
use crate::directory::Directory;
use crate::verdict::policy_failure;

/// Turns a wasmtime error into an operator-readable cause.
pub(crate) fn describe_error(
    store: &Store<SessionState>,
    e: &anyhow::Error,
    engine: &PolicyEngine,
) -> String {
    let limits = engine.limits();
    describe_error_with(store, e, limits.call_timeout, limits.memory_limit)
}

impl LoadedPolicy {
    /// Opens a policy session for one SMTP session. Never fails: a session
    /// whose policy could not start answers every call with `451 4.3.5`.
    pub fn open_session(&self, directory: Arc<Directory>, facts: &SessionFacts) -> PolicySession {
        PolicySession::open(self.clone(), directory, facts)
    }
}

enum State {
    /// Not started: the first call instantiates, configures and constructs
    /// the session within its own deadline.
    Pending(Box<wit::SessionFacts>),
    Ready {
        bindings: AttributionPolicy,
        session: ResourceAny,
    },
    Failed(String),
}

/// A policy instance bound to one SMTP session.
pub struct PolicySession {
    policy: LoadedPolicy,
    store: Store<SessionState>,
    state: State,
}

/// Whether a call that began at `started` stayed within `budget`. The epoch
/// deadline interrupts the guest; this also counts what the host did for
/// the call (instantiating, lifting, checking), which no epoch interrupts.
/// One tick of slack, the epoch's own granularity.
pub(crate) fn within_budget(
    started: std::time::Instant,
    budget: std::time::Duration,
) -> Result<(), String> {
    let took = started.elapsed();
    if took <= budget + super::engine::EPOCH_TICK {
        return Ok(());
    }
    Err(format!(
        "policy exceeded its time budget ({} ms per call, host-side work included): the call took {} ms",
        budget.as_millis(),
        took.as_millis()
    ))
}

impl PolicySession {
    /// A session whose instance starts at its first call: instantiation,
    /// `configure`, the constructor and that call share one deadline.
    pub(crate) fn open(
        policy: LoadedPolicy,
        directory: Arc<Directory>,
        facts: &SessionFacts,
    ) -> PolicySession {
        let store = policy.new_store(directory, facts.time);
        PolicySession {
            policy,
            store,
            state: State::Pending(Box::new(facts_to_wit(facts))),
        }
    }

    /// Instantiates, configures and opens the guest's session, under the
    /// deadline the caller set.
    fn start(&mut self, facts: &wit::SessionFacts) -> State {
        let bindings = match self.policy.instantiate(&mut self.store) {
            Err(StartError::Settings(m)) => {
                return State::Failed(format!("policy refused its settings: {m}"));
            }
            Err(StartError::Failed(m)) => return State::Failed(m),
            Ok(bindings) => bindings,
        };
        match bindings
            .attrelay_policy_policy()
            .session()
            .call_constructor(&mut self.store, facts)
        {
            Ok(session) => State::Ready { bindings, session },
            Err(e) => State::Failed(describe_error(&self.store, &e.into(), self.policy.engine())),
        }
    }

    /// The policy this session runs.
    pub fn policy(&self) -> &LoadedPolicy {
        &self.policy
    }

    /// Why the instance is unusable, if it is (known once a call started it).
    pub fn failure(&self) -> Option<&str> {
        match &self.state {
            State::Failed(m) => Some(m),
            State::Pending(_) | State::Ready { .. } => None,
        }
    }

    /// MAIL FROM; `sender` is empty for the null reverse-path.
    pub fn mail_from(&mut self, sender: &str) -> Verdict {
        self.call(|store, b, s| {
            b.attrelay_policy_policy()
                .session()
                .call_mail_from(store, s, sender)
        })
    }

    /// RCPT TO.
    pub fn rcpt_to(&mut self, recipient: &str) -> Verdict {
        self.call(|store, b, s| {
            b.attrelay_policy_policy()
                .session()
                .call_rcpt_to(store, s, recipient)
        })
    }

    fn call(
        &mut self,
        f: impl FnOnce(
            &mut Store<SessionState>,
            &AttributionPolicy,
            ResourceAny,
        ) -> wasmtime::Result<wit::Verdict>,
    ) -> Verdict {
        let timeout = self.policy.engine().limits().call_timeout;
        self.store
            .set_epoch_deadline(self.policy.engine().deadline_ticks());
        let started = std::time::Instant::now();
        if let State::Pending(facts) = &self.state {
            let facts = facts.clone();
            self.state = self.start(&facts);
            if let State::Failed(m) = &self.state {
                return self.fail(m.clone());
            }
        }
        let (bindings, session) = match &self.state {
            // Said when it failed; every later call answers the same.
            State::Failed(m) => return policy_failure(m.clone()),
            State::Pending(_) => return self.fail("policy instance did not start".into()),
            State::Ready { bindings, session } => (bindings, *session),
        };
        let outcome = f(&mut self.store, bindings, session);
        let result = match outcome {
            Ok(v) => within_budget(started, timeout)
                .and_then(|()| check(v, &self.store.data().directory)),
            Err(e) => {
                // A trapped instance must not be entered again.
                let m = describe_error(&self.store, &e.into(), self.policy.engine());
                self.state = State::Failed(m.clone());
                Err(m)
            }
        };
        result.unwrap_or_else(|m| self.fail(m))
    }

    fn fail(&self, m: String) -> Verdict {
        tracing::warn!(policy = self.policy.origin(), error = %m, "policy failure: answering 451 4.3.5");
        policy_failure(m)
    }
}
