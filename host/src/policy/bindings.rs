//! Host bindings generated from `wit/policy.wit`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "attribution-policy",
});

pub use attrelay::policy::types;
pub use exports::attrelay::policy::policy as guest;
