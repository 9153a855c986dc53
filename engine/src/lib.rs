//! attrelay's policy engine: tenant-attribution policies, written as
//! WebAssembly components of the `attrelay:policy` WIT package, judging SMTP
//! sessions. It has no SMTP server, no network and no delivery: a gateway
//! (attrelay's relay, its Postfix policy service, `attrelay check`, or a
//! third-party program) gives it the facts of a session and asks for a
//! verdict per `MAIL FROM` and `RCPT TO`.
//!
//! - [`policy`]: the wasmtime engine, loading (with a compiled-component
//!   cache) and running base and tenant policies, every failure fail-closed;
//! - [`directory`]: tenants and connectors, indexed for the policy's lookups;
//! - [`certificate`]: a client's certificate chain as the facts a policy sees;
//!   [`chain`]: the chain bounded and reduced before path building;
//! - [`address`]: RFC 5321 mailboxes, one canonical text form judged and written;
//! - [`evaluation`]: what judges a session (base policy, tenant policies,
//!   shadow, decision log) and the judging itself;
//! - [`decisions`]: the decision log; [`validate`]: the seed scenarios a
//!   policy must pass before it goes live;
//! - [`verdict`]: the checks every verdict passes before a host acts on it,
//!   and the failure every host answers instead.
//!
//! The feature `runtime` (on by default) brings wasmtime and with it
//! `policy`, `evaluation`, `decisions` and `validate`. Without it the crate
//! builds for `wasm32-wasip2`: the gateway component (`gateway/`) is this
//! crate's certificate, directory and verdict code, compiled into a
//! component any host can run.
//!
//! # Embedding
//!
//! ```no_run
//! # #[cfg(feature = "runtime")] {
//! use std::sync::Arc;
//! use attrelay_engine::policy::{EngineLimits, PolicyEngine, PolicySource};
//! use attrelay_engine::evaluation::Evaluation;
//! # fn facts() -> attrelay_engine::model::SessionFacts { unimplemented!() }
//! # fn directory() -> attrelay_engine::directory::Directory { unimplemented!() }
//! let engine = PolicyEngine::new(EngineLimits::default())?;
//! let policy = engine.load(&PolicySource::Embedded, &[])?;
//! let evaluation = Arc::new(Evaluation::new(policy, Arc::new(directory())));
//! let mut session = evaluation.session(facts(), "192.0.2.1");
//! let verdict = session.mail_from("john@contoso.com");
//! println!("{}", verdict.reply_line());
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Compatibility
//!
//! The crate follows semantic versioning from 1.0; before it, a minor
//! version (0.x) may change its Rust API, and `CHANGELOG.md` at the
//! repository's root says how. The
//! WIT package's version (`attrelay:policy@0.1.0`) is a separate promise
//! about components: a component built against a version keeps loading in
//! every engine release that supports that version, and an incompatible
//! change to the contract gets a new package version, supported beside the
//! old one for at least one minor release of the engine.

pub mod address;
pub mod certificate;
pub mod chain;
#[cfg(feature = "runtime")]
pub mod decisions;
pub mod directory;
#[cfg(feature = "runtime")]
pub mod evaluation;
pub mod pem;
#[cfg(feature = "runtime")]
pub mod policy;
pub mod throttle;
#[cfg(feature = "runtime")]
pub mod validate;
pub mod verdict;

/// The data model shared with policies written in Rust (the facts, the
/// connector, the verdict).
pub use attrelay_policy::model;
