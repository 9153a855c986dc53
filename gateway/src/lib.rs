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
//! Signatures are verified by `rustls-webpki` with `ring`, which needs a C
//! compiler for wasm32 (Debian's `clang`); see `docs/EMBEDDING.md`.

pub mod judge;
pub mod tenants;

#[cfg(target_arch = "wasm32")]
mod component;
#[cfg(feature = "faults")]
pub mod faults;

pub use judge::{Configuration, Gateway, RawFacts, RawTls, Session};
