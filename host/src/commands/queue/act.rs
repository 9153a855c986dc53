//! `attrelay queue delete|hold|release|flush|bounce`: through the running
//! relay's admin endpoint when a relay owns the spool (so that no attempt
//! undoes the change), directly on the spool when none does.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use hyper::{Method, StatusCode};

use super::super::terminal::terminal_safe;
use super::super::{EXIT_OK, EXIT_REFUSED, UsageError, load_config};
use super::filter::Filter;
use super::remote::Endpoint;
use crate::clock::now;
use crate::config::Config;
use crate::delivery::DeliveryContext;
use crate::delivery::control::{self, Action, Done, Report};
use crate::metrics::Metrics;
use crate::spool::{Envelope, Spool, SpoolError, SpoolId, SpoolLock};

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
/// relay configured by `config`, printing one report per message as it
/// comes; exit 1 if any message was not queued or could not be changed.
///
/// Whoever owns the spool decides the way: the command takes the spool's
/// lock itself (as the spool's owner, when run as root, so that what it
/// writes stays the relay's) and acts on the spool, or, when the running
/// relay holds the lock, acts through its admin endpoint.
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
    if ids.is_none() && !matches!(action, Action::Flush) {
        return Err(UsageError(format!(
            "name the messages to {}: queue ids, or --all-matching with filters",
            action.name()
        )));
    }
    // The token may be root's to read: read before becoming the spool's owner.
    let endpoint = config.admin.as_ref().map(Endpoint::new);
    crate::privileges::become_owner_of(&config.spool).map_err(UsageError::new)?;
    let lock = match SpoolLock::acquire(&config.spool) {
        Ok(lock) => Some(lock),
        Err(SpoolError::Locked { .. }) => None,
        Err(e) => return Err(UsageError::new(e)),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(UsageError::new)?;
    let mut printer = Printer {
        json,
        out,
        reports: Vec::new(),
    };
    let done = match (ids, lock) {
        (None, Some(_)) => {
            let queued = crate::spool::list(&config.spool)
                .map_err(UsageError::new)?
                .envelopes
                .len();
            writeln!(printer.out, "the relay is not running: its {queued} queued messages are attempted when it starts")
                .map_err(UsageError::new)?;
            return Ok(EXIT_OK);
        }
        (None, None) => return runtime.block_on(flush_all(&config, endpoint, printer.out)),
        (Some(ids), Some(lock)) => {
            runtime.block_on(on_spool(&config, lock, &action, &ids, &mut printer))
        }
        (Some(ids), None) => runtime.block_on(through_relay(
            &config,
            endpoint,
            &action,
            &ids,
            &mut printer,
        )),
    };
    printer.finish().map_err(UsageError::new)?;
    done?;
    Ok(if printer.reports.iter().all(|r| r.result.is_success()) {
        EXIT_OK
    } else {
        EXIT_REFUSED
    })
}

/// The running relay's endpoint, or why there is none to act through.
fn endpoint(
    config: &Config,
    endpoint: Option<Result<Endpoint, UsageError>>,
) -> Result<Endpoint, UsageError> {
    endpoint.unwrap_or_else(|| {
        Err(UsageError(format!(
            "the relay runs on spool {} (it holds the spool's lock) and has no [admin] endpoint to act through; enable [admin] or stop the relay",
            config.spool.display()
        )))
    })
}

/// Each action sent to the running relay, each report printed as it comes
/// (so that a failure midway leaves no doubt about what was done).
async fn through_relay(
    config: &Config,
    endpoint: Option<Result<Endpoint, UsageError>>,
    action: &Action,
    ids: &[SpoolId],
    printer: &mut Printer<'_>,
) -> Result<(), UsageError> {
    let mut endpoint = self::endpoint(config, endpoint)?;
    for id in ids {
        if !id.is_sound() {
            printer.report(Report::new(id, action, Done::NotQueued, "not a queue id"))?;
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
        printer.report(serde_json::from_str(&answer).map_err(|_| refused(status, &answer))?)?;
    }
    Ok(())
}

/// The admin endpoint's refusal (no token, a wrong one...), in its words.
fn refused(status: StatusCode, answer: &str) -> UsageError {
    UsageError(format!(
        "the admin endpoint answered {status}: {}",
        terminal_safe(answer.trim())
    ))
}

/// Each action applied to the spool of a relay that is not running, which
/// this command owns meanwhile (`lock`).
async fn on_spool(
    config: &Config,
    lock: SpoolLock,
    action: &Action,
    ids: &[SpoolId],
    printer: &mut Printer<'_>,
) -> Result<(), UsageError> {
    let spool = Spool::open_locked(&config.spool, config.spool_min_free_bytes, lock)
        .map_err(UsageError::new)?;
    let (recovered, _) = spool.recover().map_err(UsageError::new)?;
    let mut queued: HashMap<SpoolId, Envelope> =
        recovered.into_iter().map(|e| (e.id.clone(), e)).collect();
    let metrics = std::sync::Arc::new(Metrics::new());
    let delivery = DeliveryContext::new(
        &config.delivery,
        &config.server.hostname,
        config.server.shutdown_grace,
        &metrics,
    )
    .map_err(UsageError::new)?;
    for id in ids {
        let Some(envelope) = queued.remove(id) else {
            printer.report(Report::new(id, action, Done::NotQueued, ""))?;
            continue;
        };
        let (report, next) = control::apply(&spool, &delivery, envelope, action, now()).await;
        queued.extend(next.into_iter().map(|e| (e.id.clone(), e)));
        printer.report(report)?;
    }
    Ok(())
}

/// `queue flush` with no id, the relay running: every waiting message due now.
async fn flush_all(
    config: &Config,
    endpoint: Option<Result<Endpoint, UsageError>>,
    out: &mut dyn Write,
) -> Result<u8, UsageError> {
    let (status, answer) = self::endpoint(config, endpoint)?
        .request(Method::POST, "/queue/flush")
        .await?;
    if status != StatusCode::OK {
        return Err(refused(status, &answer));
    }
    write!(out, "{answer}").map_err(UsageError::new)?;
    Ok(EXIT_OK)
}

/// Prints reports: each line as it comes, or one JSON array at the end.
struct Printer<'a> {
    json: bool,
    out: &'a mut dyn Write,
    reports: Vec<Report>,
}

impl Printer<'_> {
    fn report(&mut self, r: Report) -> Result<(), UsageError> {
        if !self.json {
            let result = serde_json::to_value(r.result)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let mut line = format!("{}  {} {result}", terminal_safe(&r.id), r.action);
            if !r.detail.is_empty() {
                line.push_str(&format!(": {}", terminal_safe(&r.detail)));
            }
            writeln!(self.out, "{line}").map_err(UsageError::new)?;
            self.out.flush().map_err(UsageError::new)?;
        }
        self.reports.push(r);
        Ok(())
    }

    /// The JSON array, with whatever was done (also after a failure).
    fn finish(&mut self) -> std::io::Result<()> {
        if self.json {
            writeln!(
                self.out,
                "{}",
                serde_json::to_string_pretty(&self.reports).unwrap_or_default()
            )?;
        }
        Ok(())
    }
}
