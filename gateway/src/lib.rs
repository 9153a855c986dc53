//! The gateway component: attrelay's judgement of an SMTP session as one
//! WebAssembly component (`wit/gateway/gateway.wit`, world
//! `attrelay:gateway/attrelay-gateway`), for hosts that are not written in
//! Rust (Haraka through jco, a proxy, any component host).
//!
//! It is the relay's own code, not a port: [`attrelay_engine`] without its
//! wasmtime runtime (certificate facts, the directory index, recipient
//! lists, verdict checks) and the default policy's rules
//! ([`attrelay_policy`]), linked together. A host hands it raw facts — the
//! client's DER chain, the relay's tenant tables, PEM trust anchors — so
//! that no host prepares them its own way and judges differently.
//!
//! - [`tenants`]: the directory as the relay's `[[tenant]]` tables, TOML or JSON;
//! - [`judge`]: the configured gateway and a session's verdicts.
//!
//! Built for `wasm32-wasip2` it is one of three components: by default
//! `attrelay-gateway` (the default policy inside); with the feature
//! `socket`, `gateway-socket` (an operator's policy plugged in by
//! composition); with `directory-provider`, the directory the two share
//! (`gateway/compose.wac`, docs/EMBEDDING.md).
//!
//! Signatures are verified by `rustls-webpki` with `ring`, which needs a C
//! compiler for wasm32 (Debian's `clang`); see `docs/EMBEDDING.md`.

pub mod judge;
pub mod tenants;

// One world per build: the gateway with the default policy inside, or
// (feature `socket`) the socket an operator's policy is plugged into, or
// (feature `directory-provider`) the directory of a composed gateway.
#[cfg(all(
    target_arch = "wasm32",
    not(any(feature = "socket", feature = "directory-provider"))
))]
mod component;
#[cfg(all(target_arch = "wasm32", feature = "directory-provider"))]
mod component_provider;
#[cfg(all(target_arch = "wasm32", feature = "socket"))]
mod component_socket;
#[cfg(all(feature = "socket", feature = "directory-provider"))]
compile_error!(
    "the features `socket` and `directory-provider` build different components: enable one"
);
#[cfg(feature = "faults")]
pub mod faults;

pub use judge::{Configuration, Gateway, NativeSession, RawFacts, RawTls, Session};
