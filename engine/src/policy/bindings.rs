//! Host bindings generated from `wit/policy.wit`: the base world
//! (`attribution-policy`) and the tenant world (`tenant-rules`), sharing the
//! `types` interface so that verdicts and facts are one Rust type.

mod base {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "attribution-policy",
    });
}

pub mod tenant {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "tenant-rules",
        with: {
            "attrelay:policy/types": crate::policy::bindings::base::attrelay::policy::types,
        },
    });
}

pub use self::attrelay::policy::types;
pub use base::exports::attrelay::policy::policy as guest;
pub use base::{AttributionPolicy, AttributionPolicyPre, attrelay};
pub use tenant::exports::attrelay::policy::tenant_policy as tenant_guest;
