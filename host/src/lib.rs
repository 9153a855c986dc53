//! attrelay: a multi-tenant SMTP relay whose tenant-attribution rules run as a
//! sandboxed WebAssembly component.
//!
//! The library is what `attrelay` (the binary in `main.rs`), the integration
//! tests, the benches and the fuzz targets use; everything else is
//! `pub(crate)`. Each public type has one path.
//!
//! The policy engine is the `attrelay-engine` crate, whose modules are
//! re-exported under their own names: [`address`], [`certificate`],
//! [`decisions`], [`directory`], [`evaluation`], [`pem`], [`policy`],
//! [`throttle`], [`validate`]. The data model the policies speak is
//! `attrelay_policy::model`, imported from there and nowhere else.
//!
//! Public, for the binary and the tests:
//!
//! - [`relay`]: all of it assembled, as `attrelay serve` runs it
//!   ([`relay::start`], [`relay::RelayHandle`]);
//! - [`config`]: the TOML configuration, validated with file/line/key errors;
//! - [`commands`]: the command-line tools (`check`, `cert inspect`,
//!   `policy diff` and `validate`, `queue`, `config test`/`show`, `diagnose
//!   send-log`, `directory lint`, `bench`);
//! - [`smtp`]: the SMTP server (STARTTLS, client certificates, pipelining),
//!   whose [`smtp::Session`] the tests drive in memory;
//! - [`intake`]: the one way a message enters the queue, and
//!   [`intake::trace`], the one place facts become header text;
//! - [`spool`]: durable acceptance and the queue's contents;
//! - [`delivery`]: the queue, connections to next hops, retries, DSNs (its
//!   settings, and the SMTP commands the fuzz targets check);
//! - [`policyd`]: the Postfix policy-delegation service;
//! - [`reload`]: building evaluations and swapping them in, and what
//!   triggers a reload;
//! - [`tls`]: the server's and the client's TLS (rustls);
//! - [`admin`]: the HTTP endpoint; [`logs`]: the log writer;
//!   [`clock`]: the relay's clock;
//! - [`lint`]: the directory lint (what a configuration that loads may
//!   still get wrong);
//! - [`privileges`]: giving up root for `[server] user` once the listeners
//!   are bound.
//!
//! Inside the crate only: `judges` (asking the evaluation from async code,
//! with metrics), `metrics` (what the admin endpoint exports) and
//! `open_files` (the open-file budget planned at start) and `preflight`
//! (what `serve` checks before it listens, for `config test` and reloads)
//! and `accounts` (users and groups by name).

pub(crate) mod accounts;
pub mod admin;
pub mod clock;
pub mod commands;
pub mod config;
pub mod delivery;
pub mod intake;
pub(crate) mod judges;
pub mod lint;
pub mod logs;
pub(crate) mod metrics;
pub(crate) mod open_files;
pub mod policyd;
pub(crate) mod preflight;
pub mod privileges;
pub mod proxy;
pub mod relay;
pub mod reload;
pub mod smtp;
pub mod spool;
pub mod tls;

pub use attrelay_engine::{
    address, certificate, decisions, directory, evaluation, pem, policy, throttle, validate,
    verdict,
};
