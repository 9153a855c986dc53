//! One policy instance for one SMTP session: a fresh `Store` with its own
//! budgets, and calls that can only end in a checked verdict or `451 4.3.5`.

use std::net::IpAddr;
use std::sync::Arc;

use attrelay_policy::model::{self, Directory as _, SessionFacts, Verdict};
use wasmtime::component::{ResourceAny, ResourceTable};
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{AttributionPolicy, attrelay::policy::directory, types as wit};
use super::engine::{LoadedPolicy, PolicyEngine, StartError};
use super::verdict::{check, policy_failure};
use crate::directory::Directory;

/// The per-session memory and table budget. Records when it refused growth
/// so that the failure can be reported as a budget, not a mystery trap.
pub struct Budget {
    memory_limit: usize,
    pub(crate) exceeded: bool,
}

/// Table elements one instance may have (function tables of a small policy
/// hold hundreds; a million means something is wrong).
const TABLE_ELEMENTS_LIMIT: usize = 100_000;

impl Budget {
    pub fn new(memory_limit: usize) -> Budget {
        Budget {
            memory_limit,
            exceeded: false,
        }
    }
}

impl ResourceLimiter for Budget {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.memory_limit;
        self.exceeded |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= TABLE_ELEMENTS_LIMIT;
        self.exceeded |= !ok;
        Ok(ok)
    }
}

/// What a store holds: deny-all WASI, the budget, and the tenant directory the
/// imported `directory` functions read.
pub struct SessionState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) budget: Budget,
    pub(crate) directory: Arc<Directory>,
    /// For tenant policies: the only tenant whose data this store may read.
    pub(crate) tenant: Option<String>,
}

impl WasiView for SessionState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for SessionState {}

fn ip_to_wit(ip: IpAddr) -> wit::IpAddress {
    match crate::directory::canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            wit::IpAddress::Ipv4((a, b, c, d))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            wit::IpAddress::Ipv6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
        }
    }
}

fn ip_from_wit(ip: wit::IpAddress) -> IpAddr {
    match ip {
        wit::IpAddress::Ipv4((a, b, c, d)) => IpAddr::from([a, b, c, d]),
        wit::IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::from([a, b, c, d, e, f, g, h]),
    }
}

fn connector_to_wit(c: model::Connector) -> wit::Connector {
    wit::Connector {
        tenant: c.tenant,
        name: c.name,
        kind: match c.kind {
            model::ConnectorKind::OnPremises => wit::ConnectorKind::OnPremises,
            model::ConnectorKind::Partner => wit::ConnectorKind::Partner,
        },
        enabled: c.enabled,
        sender_ip_addresses: c.sender_ip_addresses,
        tls_sender_certificate_name: c.tls_sender_certificate_name,
        sender_domains: c.sender_domains,
        recipient_domains: c.recipient_domains,
        restrict_domains_to_ip_addresses: c.restrict_domains_to_ip_addresses,
        restrict_domains_to_certificate: c.restrict_domains_to_certificate,
    }
}

impl directory::Host for SessionState {
    fn connectors_by_ip(&mut self, ip: wit::IpAddress) -> Vec<wit::Connector> {
        self.directory
            .connectors_by_ip(ip_from_wit(ip))
            .into_iter()
            .map(connector_to_wit)
            .collect()
    }
    fn connectors_by_certificate_name(&mut self, name: String) -> Vec<wit::Connector> {
        self.directory
            .connectors_by_certificate_name(&name)
            .into_iter()
            .map(connector_to_wit)
            .collect()
    }
    fn connectors_of_tenant(&mut self, tenant: String) -> Vec<wit::Connector> {
        self.directory
            .connectors_of_tenant(&tenant)
            .into_iter()
            .map(connector_to_wit)
            .collect()
    }
    fn tenant_of_domain(&mut self, domain: String) -> Option<String> {
        self.directory.tenant_of_domain(&domain)
    }
}

impl super::bindings::tenant::attrelay::policy::tenant_directory::Host for SessionState {
    fn tenant_id(&mut self) -> String {
        self.tenant.clone().unwrap_or_default()
    }
    fn accepted_domains(&mut self) -> Vec<String> {
        self.tenant
            .as_deref()
            .map(|t| self.directory.accepted_domains(t))
            .unwrap_or_default()
    }
    fn connectors(&mut self) -> Vec<wit::Connector> {
        let Some(t) = self.tenant.as_deref() else {
            return Vec::new();
        };
        self.directory
            .connectors_of_tenant(t)
            .into_iter()
            .map(connector_to_wit)
            .collect()
    }
}

fn datetime(seconds: i64) -> wit::Datetime {
    wit::Datetime {
        seconds,
        nanoseconds: 0,
    }
}

/// The facts, as the component receives them.
pub fn facts_to_wit(f: &SessionFacts) -> wit::SessionFacts {
    wit::SessionFacts {
        client_ip: ip_to_wit(f.client_ip),
        helo: f.helo.clone(),
        server_hostname: f.server_hostname.clone(),
        time: datetime(f.time),
        tls: f.tls.as_ref().map(|t| wit::TlsFacts {
            protocol: t.protocol.clone(),
            cipher: t.cipher.clone(),
            client_certificate: t
                .client_certificate
                .as_ref()
                .map(|c| wit::ClientCertificate {
                    verified: c.verified,
                    verification_error: c.verification_error.clone(),
                    subject: c.subject.clone(),
                    common_names: c.common_names.clone(),
                    dns_names: c.dns_names.clone(),
                    issuer: c.issuer.clone(),
                    serial: c.serial.clone(),
                    sha256_fingerprint: c.sha256_fingerprint.clone(),
                    not_before: datetime(c.not_before),
                    not_after: datetime(c.not_after),
                }),
        }),
    }
}

/// Turns a wasmtime error into an operator-readable cause.
pub(crate) fn describe_error(
    store: &Store<SessionState>,
    e: &anyhow::Error,
    engine: &PolicyEngine,
) -> String {
    let limits = engine.limits();
    describe_error_with(store, e, limits.call_timeout, limits.memory_limit)
}

/// Turns a wasmtime error into a cause, given the budgets the store had.
pub(crate) fn describe_error_with(
    store: &Store<SessionState>,
    e: &anyhow::Error,
    call_timeout: std::time::Duration,
    memory_limit: usize,
) -> String {
    if store.data().budget.exceeded {
        return format!(
            "policy exceeded its memory budget ({} MiB): {e:#}",
            memory_limit / (1024 * 1024)
        );
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!(
            "policy exceeded its time budget ({} ms per call) and was interrupted",
            call_timeout.as_millis()
        ),
        Some(trap) => format!("policy trapped: {trap} ({e:#})"),
        None => format!("policy failed: {e:#}"),
    }
}

enum State {
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

impl PolicySession {
    pub(crate) fn open(
        policy: LoadedPolicy,
        directory: Arc<Directory>,
        facts: &SessionFacts,
    ) -> PolicySession {
        let mut store = policy.new_store(directory, facts.time);
        let state = match policy.instantiate(&mut store) {
            Err(StartError::Settings(m)) => {
                State::Failed(format!("policy refused its settings: {m}"))
            }
            Err(StartError::Failed(m)) => State::Failed(m),
            Ok(bindings) => {
                store.set_epoch_deadline(policy.engine().deadline_ticks());
                let wit_facts = facts_to_wit(facts);
                match bindings
                    .attrelay_policy_policy()
                    .session()
                    .call_constructor(&mut store, &wit_facts)
                {
                    Ok(session) => State::Ready { bindings, session },
                    Err(e) => State::Failed(describe_error(&store, &e.into(), policy.engine())),
                }
            }
        };
        PolicySession {
            policy,
            store,
            state,
        }
    }

    /// The policy this session runs.
    pub fn policy(&self) -> &LoadedPolicy {
        &self.policy
    }

    /// Why the instance is unusable, if it is.
    pub fn failure(&self) -> Option<&str> {
        match &self.state {
            State::Failed(m) => Some(m),
            State::Ready { .. } => None,
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
        let (bindings, session) = match &self.state {
            State::Failed(m) => return policy_failure(m.clone()),
            State::Ready { bindings, session } => (bindings, *session),
        };
        self.store
            .set_epoch_deadline(self.policy.engine().deadline_ticks());
        let outcome = f(&mut self.store, bindings, session);
        let result = match outcome {
            Ok(v) => check(v, &self.store.data().directory),
            Err(e) => {
                // A trapped instance must not be entered again.
                let m = describe_error(&self.store, &e.into(), self.policy.engine());
                self.state = State::Failed(m.clone());
                Err(m)
            }
        };
        result.unwrap_or_else(|m| {
            tracing::warn!(policy = self.policy.origin(), error = %m, "policy failure: answering 451 4.3.5");
            policy_failure(m)
        })
    }
}
