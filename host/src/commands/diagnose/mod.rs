//! `attrelay diagnose send-log`: the investigation the reference's
//! troubleshooting article walks an administrator through by hand, from
//! the on-premises send connector's protocol log to the fix. Each distinct
//! certificate the log records (`sendlog.rs`) is judged against the
//! relay's connectors (`verdict.rs`).

mod sendlog;
mod verdict;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use super::terminal::terminal_safe;
use super::{EXIT_OK, EXIT_REFUSED, UsageError, load_config};
use sendlog::{Read, Session};
use verdict::{Outcome, UNSEEN, Verdict};

/// The arguments of `attrelay diagnose send-log`.
#[derive(Debug, Clone, clap::Args)]
pub struct SendLogArgs {
    /// Send protocol log files (Exchange 2010, 2013 and later).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The relay's configuration, whose connectors judge the certificates.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Distinct certificates judged; the rest are counted (a server sends one
/// or two; thousands mean the log is not what it seems).
pub const MAX_CERTIFICATES: usize = 1000;

/// One certificate, the sessions that sent it and its verdict.
#[derive(Debug, Serialize)]
struct Finding<'a> {
    certificate: &'a sendlog::SentCertificate,
    sessions: Vec<&'a str>,
    send_connectors: Vec<&'a str>,
    first_seen: &'a str,
    last_seen: &'a str,
    #[serde(flatten)]
    verdict: Verdict,
}

/// Reads the logs, judges each certificate, prints the report; exit 0 when
/// every certificate is attributed by certificate, 1 otherwise.
pub fn send_log(args: &SendLogArgs, out: &mut dyn Write) -> Result<u8, UsageError> {
    let config = load_config(args.config.as_deref())?;
    let mut read = Read::default();
    for file in &args.files {
        let f = std::fs::File::open(file)
            .map_err(|e| UsageError(format!("{}: {e}", file.display())))?;
        sendlog::read(std::io::BufReader::new(f), &mut read);
    }
    read.finish();
    let dir = config.directory();
    let mut by_cert: BTreeMap<String, Vec<&Session>> = BTreeMap::new();
    for s in &read.sessions {
        by_cert.entry(s.certificate.key()).or_default().push(s);
    }
    let findings: Vec<Finding<'_>> = by_cert
        .values()
        .take(MAX_CERTIFICATES)
        .map(|sessions| finding(&dir, sessions))
        .collect();
    let not_judged = by_cert.len().saturating_sub(MAX_CERTIFICATES);
    let all_attributed = !findings.is_empty()
        && findings
            .iter()
            .all(|f| matches!(f.verdict.outcome, Outcome::Attributed { .. }));
    if args.json {
        let report = serde_json::json!({
            "versions": read.versions,
            "certificates": findings,
            "sessions_without_certificate": read.without_certificate,
            "lines_skipped": read.skipped,
            "files_unreadable": read.unreadable,
            "certificates_not_judged": not_judged,
            "cannot_tell": UNSEEN,
        });
        writeln!(out, "{report:#}").map_err(UsageError::new)?;
    } else {
        write_text(&read, &findings, out).map_err(UsageError::new)?;
        if not_judged > 0 {
            writeln!(out, "{not_judged} more distinct certificates were not judged (at most {MAX_CERTIFICATES})")
                .map_err(UsageError::new)?;
        }
    }
    Ok(if all_attributed {
        EXIT_OK
    } else {
        EXIT_REFUSED
    })
}

fn finding<'a>(dir: &crate::directory::Directory, sessions: &[&'a Session]) -> Finding<'a> {
    // The earliest session that sent it is the one shown and judged.
    let first = sessions
        .iter()
        .min_by_key(|s| s.started.as_str())
        .copied()
        .unwrap_or(sessions[0]);
    let mut connectors: Vec<&str> = sessions.iter().map(|s| s.connector.as_str()).collect();
    connectors.sort_unstable();
    connectors.dedup();
    Finding {
        certificate: &first.certificate,
        sessions: sessions.iter().map(|s| s.id.as_str()).collect(),
        send_connectors: connectors,
        first_seen: sessions
            .iter()
            .map(|s| s.started.as_str())
            .min()
            .unwrap_or_default(),
        last_seen: sessions
            .iter()
            .map(|s| s.started.as_str())
            .max()
            .unwrap_or_default(),
        verdict: verdict::verdict(dir, &first.certificate),
    }
}

fn write_text(read: &Read, findings: &[Finding<'_>], out: &mut dyn Write) -> std::io::Result<()> {
    let formats: Vec<&str> = read
        .versions
        .iter()
        .map(|v| {
            if v.starts_with("14.") {
                "Exchange 2010"
            } else {
                "Exchange 2013 or later"
            }
        })
        .collect();
    writeln!(
        out,
        "{} sessions sent a certificate, {} sent none{}",
        read.sessions.len(),
        read.without_certificate,
        if formats.is_empty() {
            String::new()
        } else {
            format!(" ({})", formats.join(", "))
        }
    )?;
    for f in findings {
        let c = f.certificate;
        writeln!(out)?;
        writeln!(out, "certificate {}", terminal_safe(&c.subject))?;
        writeln!(out, "  issuer:      {}", terminal_safe(&c.issuer))?;
        writeln!(out, "  serial:      {}", terminal_safe(&c.serial))?;
        writeln!(out, "  thumbprint:  {}", terminal_safe(&c.thumbprint))?;
        writeln!(
            out,
            "  names:       {}",
            terminal_safe(&f.verdict.names.join(", "))
        )?;
        writeln!(
            out,
            "  sent:        {} sessions by {}, {} to {}",
            f.sessions.len(),
            terminal_safe(&f.send_connectors.join(", ")),
            terminal_safe(f.first_seen),
            terminal_safe(f.last_seen)
        )?;
        let outcome = match &f.verdict.outcome {
            Outcome::Attributed { tenant, .. } => format!("attributed to tenant {tenant}"),
            Outcome::IdentifiesOnly { tenant, .. } => {
                format!("identifies tenant {tenant}'s server only")
            }
            Outcome::Ambiguous { tenants } => {
                format!("ambiguous between tenants {}", tenants.join(" and "))
            }
            Outcome::NoMatch => "attributed to no tenant".into(),
        };
        writeln!(out, "  verdict:     {outcome}")?;
        writeln!(out, "  why:         {}", terminal_safe(&f.verdict.why))?;
        if !f.verdict.fix.is_empty() {
            writeln!(out, "  fix:         {}", terminal_safe(&f.verdict.fix))?;
        }
        if !f.verdict.note.is_empty() {
            writeln!(out, "  note:        {}", terminal_safe(&f.verdict.note))?;
        }
    }
    if read.without_certificate > 0 {
        writeln!(out)?;
        writeln!(
            out,
            "{} sessions sent no certificate: without STARTTLS and a certificate only an IP connector can identify the server",
            read.without_certificate
        )?;
    }
    if read.skipped > 0 {
        writeln!(
            out,
            "{} lines were not protocol log lines and were skipped",
            read.skipped
        )?;
    }
    if read.unreadable > 0 {
        writeln!(
            out,
            "{} files could not be read to their end",
            read.unreadable
        )?;
    }
    writeln!(out)?;
    writeln!(out, "cannot tell from a log: {UNSEEN}")
}
