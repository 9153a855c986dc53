//! attrelay: a multi-tenant SMTP relay whose tenant-attribution rules run as a
//! sandboxed WebAssembly component.
//!
//! The policy engine is the `attrelay-engine` crate (re-exported here as
//! [`address`], [`decisions`], [`directory`], [`evaluation`], [`policy`],
//! [`throttle`], [`validate`]); the relay adds:
//!
//! - [`config`]: the TOML configuration, validated with file/line/key errors;
//! - [`tls`]: the server's TLS (rustls) and the client-certificate facts,
//!   verified off the runtime;
//! - [`smtp`]: the SMTP server (STARTTLS, client certificates, pipelining);
//! - [`judges`]: asking the evaluation from async code, with metrics;
//! - [`intake`]: the one way a message enters the queue;
//! - [`spool`]: durable acceptance; [`delivery`]: the queue, connections to
//!   next hops, retries, DSNs;
//! - [`policyd`]: the Postfix policy-delegation service;
//! - [`reload`]: building evaluations and swapping them in, and what
//!   triggers a reload;
//! - [`admin`]: the HTTP endpoint; [`metrics`]: what it exports;
//!   [`logs`]: the log writer;
//! - [`open_files`]: the open-file budget planned at start;
//! - [`relay`]: all of it assembled, as `attrelay serve` runs it;
//! - [`commands`]: the command-line tools (`check`, `cert inspect`,
//!   `policy diff` and `validate`, `queue list`, `bench`).

pub mod admin;
pub mod clock;
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
