//! `attrelay queue delete|hold|release|flush|bounce`: through the running
//! relay's admin endpoint when a relay owns the spool (so that no attempt
//! undoes the change), directly on the spool when none does.

use std::io::Write;
use std::path::PathBuf;

use hyper::{Method, StatusCode};

use super::super::{EXIT_OK, EXIT_REFUSED, UsageError, load_config};
use super::filter::Filter;
use super::remote::Endpoint;
use crate::clock::now;
use crate::config::Config;
use crate::delivery::DeliveryContext;
use crate::delivery::control::{self, Action, Done, Report};
use crate::metrics::Metrics;
use crate::spool::{Spool, SpoolError, SpoolId, SpoolLock};

/// The messages an action is for: ids, or every message the filters match.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Targets {
    /// Queue ids, as `attrelay queue list` shows them.
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// Every queued message the filters match (at least one filter).
    #[arg(long)]
    pub all_matching: bool,
    #[command(flatten)]
    pub filter: Filter,
}

impl Targets {
    /// The ids meant, read from the spool at `root` for `--all-matching`.
    /// `None`: no message named, which only a flush allows (all of them).
    fn resolve(&self, root: &std::path::Path) -> Result<Option<Vec<SpoolId>>, UsageError> {
        if !self.all_matching {
            if !self.filter.is_empty() {
                return Err(UsageError(
                    "filters select messages only with --all-matching".into(),
                ));
            }
            if self.ids.is_empty() {
                return Ok(None);
            }
            return Ok(Some(
                self.ids
                    .iter()
                    .map(|id| SpoolId::from(id.as_str()))
                    .collect(),
            ));
        }
        if !self.ids.is_empty() {
            return Err(UsageError("give ids or --all-matching, not both".into()));
        }
        if self.filter.is_empty() {
            return Err(UsageError(
                "--all-matching needs at least one filter (every message: --older-than 0)".into(),
            ));
        }
        let listing = crate::spool::list(root).map_err(UsageError::new)?;
        let at = now();
        Ok(Some(
            listing
                .envelopes
                .into_iter()
                .map(crate::spool::QueueEntry::from)
                .filter(|e| self.filter.matches(e, at))
                .map(|e| e.id)
                .collect(),
        ))
    }
}

/// Applies `action` to the messages `targets` name in the queue of the
/// relay configured by `config`, printing one report per message; exit 1
/// if any message was not queued or could not be changed.
pub fn act(
    config: Option<&PathBuf>,
    action: Action,
    targets: &Targets,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, UsageError> {
    let config = load_config(config.map(PathBuf::as_path))?;
    crate::spool::list(&config.spool).map_err(UsageError::new)?;
    let ids = targets.resolve(&config.spool)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(UsageError::new)?;
    let running = SpoolLock::is_held(&config.spool);
    let Some(ids) = ids else {
        if !matches!(action, Action::Flush) {
            return Err(UsageError(format!(
                "name the messages to {}: queue ids, or --all-matching with filters",
                action.name()
            )));
        }
        return runtime.block_on(flush_all(&config, running, out));
    };
    let reports = if running {
        runtime.block_on(through_relay(&config, &action, &ids))?
    } else {
        runtime.block_on(on_spool(&config, &action, &ids))?
    };
    print(&reports, json, out).map_err(UsageError::new)?;
    Ok(if reports.iter().all(|r| r.result.is_success()) {
        EXIT_OK
    } else {
        EXIT_REFUSED
    })
}

fn endpoint(config: &Config) -> Result<Endpoint, UsageError> {
    let settings = config.admin.as_ref().ok_or_else(|| {
        UsageError(format!(
            "the relay runs on spool {} (it holds the spool's lock) and has no [admin] endpoint to act through; enable [admin] or stop the relay",
            config.spool.display()
        ))
    })?;
    Endpoint::new(settings)
}

/// Each action sent to the running relay.
async fn through_relay(
    config: &Config,
    action: &Action,
    ids: &[SpoolId],
) -> Result<Vec<Report>, UsageError> {
    let endpoint = endpoint(config)?;
    let mut reports = Vec::new();
    for id in ids {
        if !id.is_sound() {
            reports.push(Report::new(id, action, Done::NotQueued, "not a queue id"));
            continue;
        }
        let (method, path) = match action {
            Action::Delete => (Method::DELETE, format!("/queue/{id}")),
            Action::Bounce(reason) => (
                Method::POST,
                format!(
                    "/queue/{id}/bounce?{}",
                    form_urlencoded::Serializer::new(String::new())
                        .append_pair("reason", reason)
                        .finish()
                ),
            ),
            other => (Method::POST, format!("/queue/{id}/{}", other.name())),
        };
        let (status, answer) = endpoint.request(method, &path).await?;
        reports.push(serde_json::from_str(&answer).map_err(|_| refused(status, &answer))?);
    }
    Ok(reports)
}

/// The admin endpoint's refusal (no token, a wrong one...), in its words.
fn refused(status: StatusCode, answer: &str) -> UsageError {
    UsageError(format!(
        "the admin endpoint answered {status}: {}",
        super::super::terminal::terminal_safe(answer.trim())
    ))
}

/// Each action applied to the spool of a relay that is not running, which
/// this command owns meanwhile.
async fn on_spool(
    config: &Config,
    action: &Action,
    ids: &[SpoolId],
) -> Result<Vec<Report>, UsageError> {
    let spool =
        Spool::open_owned(&config.spool, config.spool_min_free_bytes).map_err(|e| match e {
            SpoolError::Locked { .. } => UsageError(format!(
                "{e}: the relay started meanwhile; run the command again"
            )),
            e => UsageError::new(e),
        })?;
    let (recovered, _) = spool.recover().map_err(UsageError::new)?;
    let mut queued: std::collections::HashMap<SpoolId, crate::spool::Envelope> =
        recovered.into_iter().map(|e| (e.id.clone(), e)).collect();
    let metrics = std::sync::Arc::new(Metrics::new());
    let delivery = DeliveryContext::new(
        &config.delivery,
        &config.server.hostname,
        config.server.shutdown_grace,
        &metrics,
    )
    .map_err(UsageError::new)?;
    let mut reports = Vec::new();
    for id in ids {
        let Some(envelope) = queued.remove(id) else {
            reports.push(Report::new(id, action, Done::NotQueued, ""));
            continue;
        };
        let (report, next) = control::apply(&spool, &delivery, envelope, action, now()).await;
        queued.extend(next.into_iter().map(|e| (e.id.clone(), e)));
        reports.push(report);
    }
    Ok(reports)
}

/// `queue flush` with no id: every waiting message due now.
async fn flush_all(config: &Config, running: bool, out: &mut dyn Write) -> Result<u8, UsageError> {
    if !running {
        let queued = crate::spool::list(&config.spool)
            .map_err(UsageError::new)?
            .envelopes
            .len();
        writeln!(
            out,
            "the relay is not running: its {queued} queued messages are attempted when it starts"
        )
        .map_err(UsageError::new)?;
        return Ok(EXIT_OK);
    }
    let (status, answer) = endpoint(config)?
        .request(Method::POST, "/queue/flush")
        .await?;
    if status != StatusCode::OK {
        return Err(refused(status, &answer));
    }
    write!(out, "{answer}").map_err(UsageError::new)?;
    Ok(EXIT_OK)
}

fn print(reports: &[Report], json: bool, out: &mut dyn Write) -> std::io::Result<()> {
    if json {
        return writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(reports).unwrap_or_default()
        );
    }
    for r in reports {
        let result = serde_json::to_value(r.result)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        write!(
            out,
            "{}  {} {result}",
            super::super::terminal::terminal_safe(&r.id),
            r.action
        )?;
        if !r.detail.is_empty() {
            write!(
                out,
                ": {}",
                super::super::terminal::terminal_safe(&r.detail)
            )?;
        }
        writeln!(out)?;
    }
    Ok(())
}
