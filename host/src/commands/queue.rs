//! `attrelay queue list`: the queue as the spool holds it, like `mailq`.
//!
//! It reads the spool directly, so it works whether the relay runs or not
//! (flushing needs the running relay: `POST /queue/flush` on the admin
//! endpoint).

use std::io::Write;
use std::path::PathBuf;

use super::{EXIT_OK, UsageError, load_config};
use crate::spool::{QueueEntry, Spool};

/// Prints the queue of the relay configured by `config`; with `json`, one
/// JSON array (the same as `GET /queue`).
pub fn list(config: Option<&PathBuf>, json: bool, out: &mut dyn Write) -> Result<u8, UsageError> {
    let config = load_config(config.map(PathBuf::as_path))?;
    let entries = if config.spool.join("queue").is_dir() {
        let spool = Spool::open(&config.spool).map_err(UsageError::new)?;
        spool.entries()
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

/// `s` safe for an operator's terminal: control characters (ESC, BEL, BS,
/// CR...) written as `\u{..}` escapes. The relay stores no such byte in an
/// address any more, but a spool from an older version, or a next hop's
/// reply, must not drive the terminal that lists it.
pub fn terminal_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
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
        let sender = if e.sender.is_empty() {
            "<>".into()
        } else {
            terminal_safe(&e.sender)
        };
        writeln!(
            out,
            "{}  {:>8} bytes  received {}  attempts {}  next {}  tenant {}{}",
            terminal_safe(e.id.as_str()),
            e.size,
            utc(e.received_at),
            e.attempts,
            utc(e.next_attempt),
            terminal_safe(e.tenant.as_deref().unwrap_or("-")),
            if e.is_dsn { "  (DSN)" } else { "" },
        )?;
        writeln!(out, "  from {sender}")?;
        for r in &e.pending {
            writeln!(out, "  to   {}", terminal_safe(r))?;
        }
        if let Some(err) = &e.last_error {
            writeln!(out, "  last error: {}", terminal_safe(err))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(terminal_safe("a@b.example"), "a@b.example");
        let hostile = "\"x\u{1b}[2J\u{7}\u{8}\r\"@evil.example";
        let shown = terminal_safe(hostile);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert_eq!(shown, "\"x\\u{1b}[2J\\u{7}\\u{8}\\u{d}\"@evil.example");
    }

    #[test]
    fn the_table_escapes_every_field() {
        let entry = QueueEntry {
            id: "Q\u{1b}1".into(),
            sender: "s\u{1b}@x.example".into(),
            tenant: Some("t\u{7}".into()),
            pending: vec!["r\u{8}@y.example".into()],
            received_at: 0,
            attempts: 1,
            next_attempt: 0,
            last_error: Some("451 \u{1b}[31mred".into()),
            is_dsn: false,
            size: 1,
        };
        let mut out = Vec::new();
        write_table(&[entry], std::path::Path::new("spool"), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains("from s\\u{1b}@x.example"), "{text}");
    }
}
