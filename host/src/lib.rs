//! attrelay: a multi-tenant SMTP relay whose tenant-attribution rules run as a
//! sandboxed WebAssembly component.
//!
//! - [`config`]: the TOML configuration, validated with file/line/key errors;
//! - [`directory`]: tenants and connectors, indexed for the policy's lookups;
//! - [`policy`]: the wasmtime engine running attribution policies, fail closed;
//! - [`tls`]: client certificates as facts (x509-parser, webpki);
//! - [`smtp`]: the SMTP server (STARTTLS, client certificates, pipelining);
//! - [`spool`]: durable acceptance; [`delivery`]: the queue, retries, DSNs;
//! - [`relay`]: all of it assembled, as `attrelay serve` runs it;
//! - [`commands`]: the `check` and `cert inspect` commands.

pub mod commands;
pub mod config;
pub mod delivery;
pub mod directory;
pub mod policy;
pub mod relay;
pub mod smtp;
pub mod spool;
pub mod tls;
