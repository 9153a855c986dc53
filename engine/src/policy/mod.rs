//! Running attribution policies: the WebAssembly engine, per-session
//! instances, and the checks that make every failure fail closed.

pub mod bindings;
pub mod cache;
mod convert;
pub mod engine;
pub mod sandbox;
pub mod session;
pub mod store;
pub mod tenant;
pub mod verdict;

pub use crate::verdict::policy_failure;
pub use engine::{EngineLimits, LoadedPolicy, PolicyEngine, PolicyError, PolicySource, World};
pub use session::PolicySession;
pub use tenant::{TenantBudget, TenantPolicy, TenantSession};

pub use engine::DEFAULT_POLICY;
