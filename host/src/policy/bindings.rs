//! Host bindings generated from `wit/policy.wit`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "attribution-policy",
});

pub use self::attrelay::policy::types;
pub use self::exports::attrelay::policy::policy as guest;
