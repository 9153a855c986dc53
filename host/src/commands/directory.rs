//! `attrelay directory lint`: every warning about the tenant directory in
//! one report, each with the configuration's file, line and key
//! (`crate::lint`); exit 1 when there is any.

use std::io::Write;
use std::path::PathBuf;

use super::{EXIT_OK, EXIT_REFUSED, UsageError, load_config};

/// Prints the directory's warnings (one JSON array with `json`).
pub fn lint(config: Option<&PathBuf>, json: bool, out: &mut dyn Write) -> Result<u8, UsageError> {
    let config = load_config(config.map(PathBuf::as_path))?;
    let found = crate::lint::report(&config);
    let file = config.source.display().to_string();
    if json {
        let list: Vec<serde_json::Value> = found
            .iter()
            .map(|w| serde_json::json!({ "file": file, "line": w.line, "key": w.key, "warning": w.message }))
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        )
        .map_err(UsageError::new)?;
    } else {
        for w in &found {
            writeln!(out, "{file}:{}: {}: {}", w.line, w.key, w.message)
                .map_err(UsageError::new)?;
        }
        let tenants = config.tenants.len();
        match found.len() {
            0 => writeln!(out, "{file}: {tenants} tenants, no warnings"),
            n => writeln!(
                out,
                "{file}: {tenants} tenants, {n} warning{}",
                if n == 1 { "" } else { "s" }
            ),
        }
        .map_err(UsageError::new)?;
    }
    Ok(if found.is_empty() {
        EXIT_OK
    } else {
        EXIT_REFUSED
    })
}
