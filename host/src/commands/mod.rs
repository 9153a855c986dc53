//! The command-line tools, as library functions: each takes parsed arguments
//! and writes its report, returning the process exit status. `main.rs` only
//! parses arguments and maps errors to exit status 2.

pub mod bench;
pub mod check;
pub mod config;
pub mod diagnose;
pub mod directory;
pub mod inspect;
pub mod policy;
pub mod queue;
pub mod terminal;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Config;

/// Exit status: every recipient accepted / the command succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit status: some recipient deferred or rejected.
pub const EXIT_REFUSED: u8 = 1;
/// Exit status: usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

/// An error that ends a command with exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    pub fn new(e: impl std::fmt::Display) -> Self {
        UsageError(e.to_string())
    }
}

/// Loads the configuration (or the embedded demo one) and prints its warnings to stderr.
pub fn load_config(path: Option<&Path>) -> Result<Config, UsageError> {
    let config = match path {
        Some(p) => Config::load(p).map_err(UsageError::new)?,
        None => Config::embedded_default(),
    };
    for w in &config.warnings {
        eprintln!("warning: {}: {w}", config.source.display());
    }
    Ok(config)
}

/// `--at` as seconds since the epoch, or now.
pub fn session_time(at: Option<&str>) -> Result<i64, UsageError> {
    match at {
        Some(t) => attrelay_policy::settings::parse_instant(t)
            .map_err(|e| UsageError(format!("--at: {e}"))),
        None => Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)),
    }
}
