//! One policy instance's store: its state (deny-all WASI, the budget, the
//! directory it may read), the host side of the imported directory
//! interfaces, the facts as the component receives them, and what a failure
//! inside it means. Below the engine and the sessions, which both build on it.

use std::sync::Arc;

use attrelay_policy::model::{Directory as _, SessionFacts};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{attrelay::policy::directory, types as wit};
use super::convert::{connector_to_wit, ip_from_wit, ip_to_wit};
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

/// A store for one instance of a base (`tenant` is `None`) or tenant policy,
/// deciding at `time` (see [`super::sandbox`]), held to `memory_limit`.
///
/// Besides the instance's own memory, what the host copies out of the
/// instance is bounded: wasmtime's hostcall fuel charges every string and
/// list lifted from the guest — a verdict returned, an argument of an
/// imported `directory` function — and traps past
/// [`MAX_LIFTED_BYTES`](super::verdict::MAX_LIFTED_BYTES). Without it, a
/// verdict of 100 000 explanation lines all pointing at one buffer costs the
/// guest a few kilobytes and the host gigabytes, before any check runs.
pub(crate) fn new_store(
    engine: &wasmtime::Engine,
    directory: Arc<Directory>,
    time: i64,
    memory_limit: usize,
    tenant: Option<String>,
) -> Store<SessionState> {
    let mut table = ResourceTable::new();
    table.set_max_capacity(super::sandbox::MAX_RESOURCES);
    let state = SessionState {
        wasi: super::sandbox::wasi_context(time),
        table,
        budget: Budget::new(memory_limit),
        directory,
        tenant,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.budget);
    store.epoch_deadline_trap();
    store.set_hostcall_fuel(super::verdict::MAX_LIFTED_BYTES);
    store.set_max_component_handles(super::sandbox::MAX_RESOURCES);
    store
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

/// The facts, as the component receives them: the client's address in
/// its one canonical form (an IPv4-mapped IPv6 address as IPv4), whatever
/// the front end passed.
pub fn facts_to_wit(f: &SessionFacts) -> wit::SessionFacts {
    wit::SessionFacts {
        client_ip: ip_to_wit(crate::directory::canonical_ip(f.client_ip)),
        ..super::convert::facts_to_wit(f)
    }
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
    if format!("{e:#}").contains("fuel allocated for hostcalls has been exhausted") {
        return format!(
            "policy made the host copy more than {} KiB out of it in one call (a verdict or a directory argument that large is never valid)",
            super::verdict::MAX_LIFTED_BYTES / 1024
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
