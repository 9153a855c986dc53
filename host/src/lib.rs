//! attrelay: a multi-tenant SMTP relay whose tenant-attribution rules run as a
//! sandboxed WebAssembly component.
//!
//! - [`config`]: the TOML configuration, validated with file/line/key errors;
//! - [`directory`]: tenants and connectors, indexed for the policy's lookups;
//! - [`policy`]: the wasmtime engine running attribution policies, fail closed;
//! - [`tls`]: client certificates as facts (x509-parser, webpki);
//! - [`commands`]: the `check` and `cert inspect` commands.

pub mod commands;
pub mod config;
pub mod directory;
pub mod policy;
pub mod tls;
