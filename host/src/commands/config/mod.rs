//! `attrelay config test`: everything `serve` checks before it listens,
//! with every problem listed (see `preflight.rs`); `attrelay config show`:
//! the configuration in effect (`render.rs`).

mod render;

use std::io::Write;
use std::path::PathBuf;

use super::{EXIT_OK, EXIT_REFUSED, UsageError, load_config};
use crate::policy::{EngineLimits, PolicyEngine};

/// Tests the configuration at `config` (or the embedded one): exit 0 when
/// `serve` would start on it, 1 with each problem on a line of its own. A
/// file that does not parse is a usage error (exit 2), as everywhere.
pub fn test(config: Option<&PathBuf>, out: &mut dyn Write) -> Result<u8, UsageError> {
    let config = load_config(config.map(PathBuf::as_path))?;
    let engine = PolicyEngine::new(EngineLimits::from(&config.policy)).map_err(UsageError::new)?;
    let mut problems = crate::preflight::files(&config);
    // The policies, as a reload builds them; the decision log is not
    // opened (that would create it): `preflight` checks it can be.
    let mut without_log = config.clone();
    without_log.policy.decision_log = None;
    if let Err(e) = crate::reload::build(&without_log, &engine, 0) {
        problems.push(format!("{}: {e}", config.source.display()));
    }
    // The lint's findings are warnings: said, and no reason to refuse.
    for w in crate::lint::findings(&config) {
        writeln!(
            out,
            "{}:{}: warning: {}: {}",
            config.source.display(),
            w.line,
            w.key,
            w.message
        )
        .map_err(UsageError::new)?;
    }
    if problems.is_empty() {
        writeln!(out, "{}: ok", config.source.display()).map_err(UsageError::new)?;
        return Ok(EXIT_OK);
    }
    // Each problem names the file (and line and key) itself.
    for p in &problems {
        writeln!(out, "{p}").map_err(UsageError::new)?;
    }
    Ok(EXIT_REFUSED)
}

/// Prints the configuration in effect as TOML: the keys the file sets, or
/// with `defaults` every key, each with the value the relay uses.
pub fn show(
    config: Option<&PathBuf>,
    defaults: bool,
    out: &mut dyn Write,
) -> Result<u8, UsageError> {
    let loaded = load_config(config.map(PathBuf::as_path))?;
    let written = match config {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| UsageError(format!("{}: {e}", path.display())))?,
        None => crate::config::EMBEDDED_DEFAULT.to_string(),
    };
    writeln!(
        out,
        "# attrelay: the configuration in effect ({}{})",
        loaded.source.display(),
        if defaults {
            ", every default written out"
        } else {
            ""
        }
    )
    .map_err(UsageError::new)?;
    write!(out, "{}", render::render(&loaded, &written, defaults)).map_err(UsageError::new)?;
    Ok(EXIT_OK)
}
