//! attrelay: a multi-tenant SMTP relay whose tenant-attribution rules run as a
//! sandboxed WebAssembly component.
//!
//! The policy engine is the `attrelay-engine` crate (re-exported here as
//! [`address`], [`directory`], [`policy`], [`evaluation`], [`decisions`]);
//! the relay adds:
//!
//! - [`config`]: the TOML configuration, validated with file/line/key errors;
//! - [`tls`]: the server's TLS (rustls); client certificates become facts in
//!   the engine's `certificate` module;
//! - [`smtp`]: the SMTP server (STARTTLS, client certificates, pipelining);
//! - [`spool`]: durable acceptance; [`delivery`]: the queue, retries, DSNs;
//! - [`relay`]: all of it assembled, as `attrelay serve` runs it;
//! - [`commands`]: the `check` and `cert inspect` commands.

pub mod admin;
pub mod commands;
pub mod config;
pub mod delivery;
pub mod intake;
pub mod judges;
pub mod logs;
pub mod metrics;
pub mod open_files;
pub mod policyd;
pub mod relay;
pub mod reload;
pub mod smtp;
pub mod spool;
pub mod tls;

// The engine's modules, under the names the relay has always used.
pub use attrelay_engine::{address, decisions, directory, evaluation, policy, throttle, validate};
