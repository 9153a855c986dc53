//! `attrelay queue list`: the queue as the spool holds it, like `mailq`.
//!
//! It reads the spool directly, so it works whether the relay runs or not
//! (flushing needs the running relay: `POST /queue/flush` on the admin
//! endpoint).

use std::io::Write;
use std::path::PathBuf;

use super::{EXIT_OK, UsageError, load_config};
use crate::spool::{QueueEntry, Spool, listing};

/// Prints the queue of the relay configured by `config`; with `json`, one
/// JSON array (the same as `GET /queue`).
pub fn list(config: Option<&PathBuf>, json: bool, out: &mut dyn Write) -> Result<u8, UsageError> {
    let config = load_config(config.map(PathBuf::as_path))?;
    let entries = if config.spool.join("queue").is_dir() {
        let spool = Spool::open(&config.spool).map_err(UsageError::new)?;
        listing(&spool)
    } else {
        Vec::new()
    };
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&entries).map_err(UsageError::new)?
        )
        .map_err(UsageError::new)?;
        return Ok(EXIT_OK);
    }
    write_table(&entries, &config.spool, out).map_err(UsageError::new)?;
    Ok(EXIT_OK)
}

fn utc(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

fn write_table(
    entries: &[QueueEntry],
    spool: &std::path::Path,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if entries.is_empty() {
        return writeln!(out, "queue empty (spool {})", spool.display());
    }
    for e in entries {
        let sender = if e.sender.is_empty() { "<>" } else { &e.sender };
        writeln!(
            out,
            "{}  {:>8} bytes  received {}  attempts {}  next {}  tenant {}{}",
            e.id,
            e.size,
            utc(e.received_at),
            e.attempts,
            utc(e.next_attempt),
            e.tenant.as_deref().unwrap_or("-"),
            if e.is_dsn { "  (DSN)" } else { "" },
        )?;
        writeln!(out, "  from {sender}")?;
        for r in &e.pending {
            writeln!(out, "  to   {r}")?;
        }
        if let Some(err) = &e.last_error {
            writeln!(out, "  last error: {err}")?;
        }
    }
    writeln!(
        out,
        "{} message{} in the queue (spool {})",
        entries.len(),
        if entries.len() == 1 { "" } else { "s" },
        spool.display()
    )
}
