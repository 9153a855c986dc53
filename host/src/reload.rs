//! What judges sessions, and swapping it on a live relay.
//!
//! An [`Evaluation`] is everything a decision needs — the policy, the tenant
//! directory, the trust anchors, tenant policies, the shadow candidate — built
//! completely and validated before it replaces the running one in a single
//! atomic pointer swap. A session takes the evaluation current when it
//! starts and keeps it to its end, so a reload never changes the rules under
//! a session in flight, and a broken component or configuration is refused
//! while the running one keeps serving.
//!
//! Reloads are triggered by file notifications on the configuration and the
//! components, by SIGHUP, and by `POST /reload` on the admin endpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::decisions::DecisionLog;
use crate::evaluation::Evaluation;
use crate::metrics::Metrics;
use crate::policy::cache::Provenance;
use crate::policy::{LoadedPolicy, PolicyEngine, PolicySource, TenantBudget};
use crate::smtp::ServerContext;
use crate::tls::TrustAnchors;
use crate::validate::{ScenarioReport, check_scenarios};

/// Loads the policy a configuration names, turning a refusal of its
/// settings into an error that points at the setting's line.
pub fn load_policy(
    config: &Config,
    engine: &PolicyEngine,
    source: &PolicySource,
) -> Result<LoadedPolicy, String> {
    use crate::policy::PolicyError;
    engine
        .load(source, &config.policy.settings)
        .map_err(|e| match &e {
            PolicyError::Settings { message, .. } => {
                let key = config
                    .policy
                    .settings
                    .iter()
                    .map(|(k, _)| k)
                    .find(|k| message.contains(&format!("'{k}'")));
                match key {
                    Some(k) => format!(
                        "{}:{}: policy.settings.{k}: {e}",
                        config.source.display(),
                        config.policy.setting_lines.get(k).copied().unwrap_or(0)
                    ),
                    None => format!("{}: [policy.settings]: {e}", config.source.display()),
                }
            }
            _ => e.to_string(),
        })
}

/// Builds and validates the evaluation a configuration describes: what
/// the relay runs, and what `attrelay check` runs for one session.
pub fn build(
    config: &Config,
    engine: &PolicyEngine,
    generation: u64,
) -> Result<(Evaluation, ScenarioReport), String> {
    let source = PolicySource::from_option(config.policy.component.as_deref());
    let policy = load_policy(config, engine, &source)?;
    let report =
        check_scenarios(&policy).map_err(|e| format!("{}: refused: {e}", policy.origin()))?;
    let directory = Arc::new(config.directory());
    let anchors = TrustAnchors::load(&config.server.client_ca).map_err(|e| e.to_string())?;
    let mut tenant_policies = HashMap::new();
    for t in &config.tenants {
        let Some(p) = &t.policy else { continue };
        let budget = TenantBudget {
            call_timeout: p.timeout,
            memory_limit: p.memory_limit,
        };
        let tp = engine
            .load_tenant(
                &PolicySource::File(p.component.clone()),
                &p.settings,
                &t.id,
                budget,
            )
            .map_err(|e| e.to_string())?;
        tenant_policies.insert(t.id.clone(), tp);
    }
    let shadow = match &config.policy.shadow {
        Some(path) => Some(
            engine
                .load(&PolicySource::File(path.clone()), &config.policy.settings)
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let decision_log = match &config.policy.decision_log {
        Some(path) => Some(Arc::new(
            DecisionLog::open(path, config.policy.decision_log_max_bytes)
                .map_err(|e| format!("{}: {e}", path.display()))?,
        )),
        None => None,
    };
    Ok((
        Evaluation {
            policy,
            directory,
            anchors: Arc::new(anchors),
            tenant_policies,
            shadow,
            decision_log,
            generation,
        },
        report,
    ))
}

/// The result of a reload, as the admin endpoint reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    pub generation: u64,
    pub policy: String,
    pub sha256: String,
    /// "memory", "disk" (precompiled cache) or "compiled".
    pub provenance: String,
    pub tenants: usize,
    pub tenant_policies: usize,
    pub elapsed_ms: f64,
    pub scenarios: ScenarioReport,
    /// Changed settings that a reload cannot apply (listeners, limits, the
    /// spool, delivery, the engine's budgets): they take effect at the next
    /// restart, and until then the running values stay.
    pub restart_required: Vec<&'static str>,
}

/// The settings read only at start that differ between `running` and `new`.
/// Everything else — tenants, connectors, trust anchors, policies and their
/// settings, shadow, decision log — is applied by the reload itself.
pub fn restart_required(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    // Trust anchors (client_ca) are part of the evaluation: reloaded.
    let server = |c: &Config| crate::config::ServerConfig {
        client_ca: Vec::new(),
        ..c.server.clone()
    };
    if server(running) != server(new) {
        out.push("server");
    }
    if running.spool != new.spool || running.spool_min_free_bytes != new.spool_min_free_bytes {
        out.push("spool");
    }
    if running.delivery != new.delivery {
        out.push("delivery");
    }
    if running.admin != new.admin {
        out.push("admin");
    }
    if running.policyd != new.policyd {
        out.push("policyd");
    }
    let engine = |c: &Config| {
        (
            c.policy.timeout,
            c.policy.memory_limit,
            c.policy.max_instances,
            c.policy.cache.clone(),
        )
    };
    if engine(running) != engine(new) {
        out.push("policy.timeout_ms/memory_limit_mib/max_instances/cache");
    }
    out
}

fn provenance_name(p: Provenance) -> &'static str {
    match p {
        Provenance::Memory => "memory",
        Provenance::Disk => "disk",
        Provenance::Compiled => "compiled",
    }
}

/// Reloads the configuration and policies into a running relay.
pub struct Reloader {
    /// `None`: the embedded demo configuration (nothing to re-read).
    config_path: Option<PathBuf>,
    /// The configuration the relay started with: what restart-only settings
    /// are compared against.
    started_with: Config,
    engine: PolicyEngine,
    ctx: Arc<ServerContext>,
    metrics: Arc<Metrics>,
    generation: AtomicU64,
    lock: std::sync::Mutex<()>,
    /// The text of the configuration file last applied (at start or by a
    /// reload): a file change that leaves only a beginning of it is a file
    /// cut short while being written, never applied from a notification.
    applied_text: std::sync::Mutex<Option<String>>,
}

impl Reloader {
    pub fn new(
        config_path: Option<PathBuf>,
        started_with: Config,
        engine: PolicyEngine,
        ctx: Arc<ServerContext>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        Reloader {
            started_with,
            engine,
            ctx,
            metrics,
            generation: AtomicU64::new(0),
            lock: std::sync::Mutex::new(()),
            applied_text: std::sync::Mutex::new(
                config_path
                    .as_deref()
                    .and_then(|p| std::fs::read_to_string(p).ok()),
            ),
            config_path,
        }
    }

    pub fn engine(&self) -> &PolicyEngine {
        &self.engine
    }

    /// Re-reads the configuration, builds and validates a new evaluation, and
    /// swaps it in. Blocking (compiles); one reload at a time. On error the
    /// running evaluation is untouched.
    pub fn reload(&self) -> Result<ReloadOutcome, String> {
        self.reload_checked(false)
    }

    /// A reload after a file notification. The file is applied only if it
    /// looks whole: not empty, and not a beginning of the configuration
    /// running now — what an editor or a tool rewriting the file in place
    /// leaves between truncating it and writing the end (every tenant, or a
    /// partner restriction, would be gone). SIGHUP and `POST /reload` apply
    /// the file as it is: the operator asked.
    pub fn reload_after_change(&self) -> Result<ReloadOutcome, String> {
        self.reload_checked(true)
    }

    fn reload_checked(&self, from_notification: bool) -> Result<ReloadOutcome, String> {
        let _one_at_a_time = self
            .lock
            .lock()
            .map_err(|_| "reload lock poisoned".to_string())?;
        let started = Instant::now();
        let result = (|| {
            let (config, text) = match &self.config_path {
                Some(p) => {
                    let text = std::fs::read_to_string(p).map_err(|e| {
                        format!("{}: cannot read the configuration: {e}", p.display())
                    })?;
                    if from_notification {
                        self.looks_whole(p, &text)?;
                    }
                    let config = Config::parse(p, &text).map_err(|e| e.to_string())?;
                    (config, Some(text))
                }
                None => (Config::embedded_default(), None),
            };
            for w in &config.warnings {
                warn!(config = %config.source.display(), "{w}");
            }
            let generation = self.generation.load(Ordering::SeqCst) + 1;
            let (evaluation, scenarios) = build(&config, &self.engine, generation)?;
            let outcome = ReloadOutcome {
                generation,
                policy: evaluation.policy.origin().to_string(),
                sha256: evaluation.policy.sha256().to_string(),
                provenance: provenance_name(evaluation.policy.provenance()).to_string(),
                tenants: evaluation.directory.tenant_count(),
                tenant_policies: evaluation.tenant_policies.len(),
                elapsed_ms: 0.0,
                scenarios,
                restart_required: restart_required(&self.started_with, &config),
            };
            self.ctx.evaluation.store(Arc::new(evaluation));
            self.generation.store(generation, Ordering::SeqCst);
            if let Ok(mut applied) = self.applied_text.lock() {
                *applied = text;
            }
            Ok(outcome)
        })();
        match result {
            Ok(mut o) => {
                o.elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
                Metrics::outcome(&self.metrics.reloads, "success");
                info!(
                    target: "attrelay::reload",
                    generation = o.generation,
                    policy = %o.policy,
                    sha256 = %o.sha256,
                    provenance = %o.provenance,
                    tenants = o.tenants,
                    elapsed_ms = o.elapsed_ms,
                    "reloaded"
                );
                if !o.restart_required.is_empty() {
                    warn!(
                        target: "attrelay::reload",
                        changed = ?o.restart_required,
                        "these settings changed but apply only at the next restart; the running values stay"
                    );
                }
                Ok(o)
            }
            Err(e) => {
                Metrics::outcome(&self.metrics.reloads, "failure");
                warn!(target: "attrelay::reload", error = %e, "reload refused; the running policy keeps serving");
                Err(e)
            }
        }
    }

    /// Refuses a configuration file that is empty or only a beginning of
    /// the one applied last (see [`Reloader::reload_after_change`]).
    fn looks_whole(&self, path: &Path, text: &str) -> Result<(), String> {
        let advice = "write the new configuration to a temporary file and rename it over this one (an atomic replace); SIGHUP or POST /reload applies the file as it is";
        if text.trim().is_empty() {
            return Err(format!(
                "{}: the file is empty, as while it is being rewritten: not applied; {advice}",
                path.display()
            ));
        }
        let applied = self.applied_text.lock().map_err(|_| "lock poisoned")?;
        if let Some(applied) = applied.as_deref()
            && text.len() < applied.len()
            && applied.starts_with(text)
        {
            return Err(format!(
                "{}: the file holds only the first {} of the {} bytes of the running configuration, as a file cut short while being written: not applied; {advice}",
                path.display(),
                text.len(),
                applied.len()
            ));
        }
        Ok(())
    }

    /// The files whose changes trigger a reload.
    fn watched_files(&self) -> Vec<PathBuf> {
        let Some(path) = &self.config_path else {
            return Vec::new();
        };
        let mut files = vec![path.clone()];
        if let Ok(c) = Config::load(path) {
            files.extend(c.policy.component);
            files.extend(c.policy.shadow);
            files.extend(
                c.tenants
                    .iter()
                    .filter_map(|t| t.policy.as_ref().map(|p| p.component.clone())),
            );
            files.extend(c.tenants.iter().filter_map(|t| t.recipients_file.clone()));
        }
        files
    }
}

/// Absolute form of a path, for comparing with notification paths.
fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    })
}

/// Reloads on SIGHUP and on changes to the watched files, until shutdown.
/// The trigger of a file notification.
const FILE_CHANGE: &str = "file change";
/// How long the watched files must stay unchanged before a notification's
/// reload reads them.
pub const SETTLE: Duration = Duration::from_millis(500);
/// How long at most to wait for them to settle (a file rewritten without
/// end is read anyway, and still checked by [`Reloader::reload_after_change`]).
const SETTLE_AT_MOST: Duration = Duration::from_secs(10);

/// Each file's length and modification time, to tell when writing stopped.
fn snapshot(files: &[PathBuf]) -> Vec<Option<(u64, std::time::SystemTime)>> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .map(|m| (m.len(), m.modified().unwrap_or(std::time::UNIX_EPOCH)))
        })
        .collect()
}

/// Waits until no notification arrived and no watched file changed for
/// [`SETTLE`], or [`SETTLE_AT_MOST`] passed.
async fn settle(rx: &mut tokio::sync::mpsc::UnboundedReceiver<&'static str>, files: &[PathBuf]) {
    let started = Instant::now();
    loop {
        let before = snapshot(files);
        tokio::time::sleep(SETTLE).await;
        let mut quiet = true;
        while rx.try_recv().is_ok() {
            quiet = false;
        }
        if (quiet && snapshot(files) == before) || started.elapsed() >= SETTLE_AT_MOST {
            return;
        }
    }
}

pub fn spawn_triggers(reloader: Arc<Reloader>, shutdown: CancellationToken) {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let file_tx = tx.clone();
    let files = std::sync::Arc::new(std::sync::Mutex::new(Vec::<PathBuf>::new()));
    let watched = files.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(ev) = event {
            let ours = watched
                .lock()
                .map(|f| ev.paths.iter().any(|p| f.contains(&absolute(p))))
                .unwrap_or(false);
            if ours && !ev.kind.is_access() {
                let _ = file_tx.send(FILE_CHANGE);
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, "file notifications unavailable; reload with SIGHUP or the admin endpoint");
            None
        }
    };
    let mut rewatch = move |reloader: &Reloader| {
        let list: Vec<PathBuf> = reloader
            .watched_files()
            .iter()
            .map(|p| absolute(p))
            .collect();
        if let Some(w) = watcher.as_mut() {
            for dir in list.iter().filter_map(|p| p.parent()) {
                let _ = w.watch(dir, RecursiveMode::NonRecursive);
            }
        }
        if let Ok(mut f) = files.lock() {
            *f = list;
        }
    };
    rewatch(&reloader);
    #[cfg(unix)]
    {
        let hup_tx = tx.clone();
        let hup_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            loop {
                tokio::select! {
                    _ = hup.recv() => { let _ = hup_tx.send("SIGHUP"); }
                    _ = hup_shutdown.cancelled() => return,
                }
            }
        });
    }
    tokio::spawn(async move {
        loop {
            let why = tokio::select! {
                Some(why) = rx.recv() => why,
                _ = shutdown.cancelled() => return,
            };
            // Editors and tools write in several steps: wait until the
            // files have stopped changing.
            if why == FILE_CHANGE {
                settle(&mut rx, &reloader.watched_files()).await;
            } else {
                while rx.try_recv().is_ok() {}
            }
            info!(target: "attrelay::reload", trigger = why, "reloading");
            let r = reloader.clone();
            if let Ok((r, Ok(_))) = tokio::task::spawn_blocking(move || {
                let out = if why == FILE_CHANGE {
                    r.reload_after_change()
                } else {
                    r.reload()
                };
                (r, out)
            })
            .await
            {
                rewatch(&r);
            }
        }
    });
}
