//! The default tenant-attribution policy of attrelay.
//!
//! The rules live in plain Rust modules ([`certname`], [`settings`], [`decide`])
//! over the native types of [`model`], so they compile and are tested natively
//! and serve as the native baseline in the host's benchmarks. Built for
//! `wasm32-wasip2`, the crate also exports the `attribution-policy` world of
//! `wit/policy.wit` (module `component`, feature `component`), and becomes
//! the component the relay embeds.

pub mod certname;
pub mod decide;
pub mod model;
pub mod replies;
#[cfg(any(test, feature = "scenarios"))]
pub mod scenarios;
pub mod settings;
pub mod wit_conversions;

#[cfg(all(target_arch = "wasm32", feature = "component"))]
mod component;

pub use decide::Session;
pub use model::*;
pub use settings::Settings;
