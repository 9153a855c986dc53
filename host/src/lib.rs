//! attrelay: a multi-tenant SMTP relay whose tenant-attribution rules run as a
//! sandboxed WebAssembly component.
//!
//! - [`address`]: RFC 5321 mailboxes, one canonical text form judged and written;
//! - [`config`]: the TOML configuration, validated with file/line/key errors;
//! - [`directory`]: tenants and connectors, indexed for the policy's lookups;
//! - [`policy`]: the wasmtime engine running attribution policies, fail closed;
//! - [`tls`]: client certificates as facts (x509-parser, webpki);
//! - [`smtp`]: the SMTP server (STARTTLS, client certificates, pipelining);
//! - [`spool`]: durable acceptance; [`delivery`]: the queue, retries, DSNs;
//! - [`relay`]: all of it assembled, as `attrelay serve` runs it;
//! - [`commands`]: the `check` and `cert inspect` commands.

pub mod address;
pub mod admin;
pub mod commands;
pub mod config;
pub mod decisions;
pub mod delivery;
pub mod directory;
pub mod judges;
pub mod metrics;
pub mod policy;
pub mod policyd;
pub mod relay;
pub mod reload;
pub mod smtp;
pub mod spool;
pub mod throttle;
pub mod tls;
