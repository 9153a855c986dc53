//! `attrelay queue`: the queue as the spool holds it, like `mailq`
//! (`list`, `show`), and an operator's actions on it (`act.rs`).
//!
//! Looking reads the spool directly and changes nothing, so it works
//! whether the relay runs or not; a missing spool is an error, never an
//! empty queue. Actions go through the running relay (`remote.rs`).

mod act;
mod filter;
mod remote;

use std::io::Write;
use std::path::PathBuf;

pub use act::{Targets, act};
pub use filter::{Filter, parse_duration};

use super::terminal::terminal_safe;
use super::{EXIT_OK, EXIT_REFUSED, UsageError, load_config};
use crate::clock::now;
use crate::spool::{QueueEntry, RecipientState, SpoolError, SpoolId};

/// Prints the queued messages `filter` matches, of the relay configured by
/// `config`; with `json`, one JSON array (as `GET /queue`).
pub fn list(
    config: Option<&PathBuf>,
    filter: &Filter,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, UsageError> {
    let config = load_config(config.map(PathBuf::as_path))?;
    let listing = crate::spool::list(&config.spool).map_err(UsageError::new)?;
    if listing.unreadable > 0 {
        eprintln!(
            "warning: {} envelope files in {} could not be read (the relay sets them aside in corrupt/ at its next start)",
            listing.unreadable,
            config.spool.display()
        );
    }
    let at = now();
    let entries: Vec<QueueEntry> = listing
        .envelopes
        .into_iter()
        .map(QueueEntry::from)
        .filter(|e| filter.matches(e, at))
        .collect();
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

/// Prints one queued message: its envelope, each recipient's state and
/// last reply, and its header section (`--json`: as `GET /queue/ID`).
pub fn show(
    config: Option<&PathBuf>,
    id: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, UsageError> {
    let config = load_config(config.map(PathBuf::as_path))?;
    let shown = match crate::spool::show(&config.spool, &SpoolId::from(id)) {
        Ok(shown) => shown,
        Err(e @ SpoolError::NotQueued { .. }) => {
            eprintln!("attrelay: {}", terminal_safe(&e.to_string()));
            return Ok(EXIT_REFUSED);
        }
        Err(e) => return Err(UsageError::new(e)),
    };
    let header = String::from_utf8_lossy(&shown.header);
    if json {
        let value = serde_json::json!({ "envelope": shown.envelope, "header": header });
        writeln!(out, "{value:#}").map_err(UsageError::new)?;
        return Ok(EXIT_OK);
    }
    write_envelope(&shown.envelope, &header, out).map_err(UsageError::new)?;
    Ok(EXIT_OK)
}

fn write_envelope(
    e: &crate::spool::Envelope,
    header: &str,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let sender = if e.sender.is_empty() {
        "<>".into()
    } else {
        terminal_safe(&e.sender)
    };
    writeln!(out, "queue id     {}", terminal_safe(e.id.as_str()))?;
    writeln!(out, "sender       {sender}")?;
    writeln!(
        out,
        "tenant       {}",
        terminal_safe(e.tenant.as_deref().unwrap_or("-"))
    )?;
    writeln!(
        out,
        "client       {}{}",
        terminal_safe(&e.client),
        if e.authenticated {
            " (authenticated)"
        } else {
            ""
        }
    )?;
    writeln!(out, "received     {} UTC", utc(e.received_at))?;
    writeln!(out, "size         {} bytes", e.size())?;
    writeln!(
        out,
        "attempts     {}, next {} UTC",
        e.attempts,
        utc(e.next_attempt)
    )?;
    if let Some(since) = e.held_since {
        writeln!(
            out,
            "held         since {} UTC (not attempted until released)",
            utc(since)
        )?;
    }
    if e.is_dsn {
        writeln!(out, "DSN          yes (never bounced itself)")?;
    }
    if let Some(err) = &e.last_error {
        writeln!(out, "last error   {}", terminal_safe(err))?;
    }
    for r in &e.recipients {
        let (state, reply) = match &r.state {
            RecipientState::Pending => ("pending", e.last_error.as_deref().unwrap_or("")),
            RecipientState::Delivered { reply } => ("delivered", reply.as_str()),
            RecipientState::Failed { reply, .. } => ("failed", reply.as_str()),
        };
        writeln!(
            out,
            "recipient    {} {state} {}",
            terminal_safe(&r.address),
            terminal_safe(reply)
        )?;
    }
    writeln!(out)?;
    for line in header.split("\r\n") {
        writeln!(out, "{}", terminal_safe(line))?;
    }
    Ok(())
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
            match (e.is_dsn, e.held) {
                (_, true) => "  HELD",
                (true, false) => "  (DSN)",
                (false, false) => "",
            },
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
            held: false,
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
