//! The reloader of a running relay: what it applied last, what a file
//! change is compared with, and the swap.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tracing::{info, warn};

use super::build::build;
use super::outcome::{ReloadOutcome, provenance_name, restart_required};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::PolicyEngine;
use crate::smtp::ServerContext;

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
    /// What was applied last (at start or by a reload): what a file change
    /// is compared with.
    applied: std::sync::Mutex<Option<Applied>>,
    /// The configuration applied last, for the files it names.
    applied_config: std::sync::Mutex<Option<Config>>,
}

/// The configuration and the files it names, as applied last.
struct Applied {
    /// The configuration file's text: a file rewritten in place that holds
    /// only a beginning of it is a file cut short while being written.
    text: String,
    /// Which file that was (device, inode): a file renamed into place or
    /// reached through a re-pointed link is another file, whole by
    /// construction.
    file: FileId,
    /// Every watched file's content: a notification that changed none of
    /// it (a file renamed over with the same text, a link re-pointed to a
    /// copy) reloads nothing. `None` at start, where the files were read
    /// before this was: the first notification always reloads.
    digest: Option<[u8; 32]>,
}

/// A file's device and inode.
type FileId = (u64, u64);

/// The configuration file read for a reload, with which file it was: one
/// open, so the text and the identity belong together.
struct ReadConfig {
    text: String,
    file: FileId,
}

fn read_config(path: &Path) -> Result<ReadConfig, String> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let fail =
        |e: std::io::Error| format!("{}: cannot read the configuration: {e}", path.display());
    let mut f = std::fs::File::open(path).map_err(fail)?;
    let meta = f.metadata().map_err(fail)?;
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(fail)?;
    Ok(ReadConfig {
        text,
        file: (meta.dev(), meta.ino()),
    })
}

/// The content of `files` (a missing one counted as missing), in order.
fn digest(files: &[PathBuf]) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        match std::fs::read(f) {
            Ok(bytes) => {
                h.update((bytes.len() as u64).to_be_bytes());
                h.update(&bytes);
            }
            Err(_) => h.update(b"\xff missing"),
        }
    }
    h.finalize().into()
}

impl Reloader {
    pub fn new(
        config_path: Option<PathBuf>,
        started_with: Config,
        engine: PolicyEngine,
        ctx: Arc<ServerContext>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        let started_with_copy = started_with.clone();
        let reloader = Reloader {
            started_with,
            engine,
            ctx,
            metrics,
            generation: AtomicU64::new(0),
            lock: std::sync::Mutex::new(()),
            applied: std::sync::Mutex::new(None),
            applied_config: std::sync::Mutex::new(Some(started_with_copy)),
            config_path,
        };
        if let Some(p) = &reloader.config_path
            && let Ok(read) = read_config(p)
        {
            reloader.record(read, None);
        }
        reloader
    }

    fn record(&self, read: ReadConfig, digest: Option<[u8; 32]>) {
        if let Ok(mut applied) = self.applied.lock() {
            *applied = Some(Applied {
                text: read.text,
                file: read.file,
                digest,
            });
        }
    }

    pub fn engine(&self) -> &PolicyEngine {
        &self.engine
    }

    /// Re-reads the configuration, builds and validates a new evaluation, and
    /// swaps it in. Blocking (compiles); one reload at a time. On error the
    /// running evaluation is untouched.
    pub fn reload(&self) -> Result<ReloadOutcome, String> {
        self.reload_checked(false, digest(&self.watched_files()))
    }

    /// A reload after a file notification: `None` when the watched files
    /// hold what was applied last. The file is applied only if it looks
    /// whole: not empty, and, when it is the same file rewritten in place,
    /// not a beginning of the configuration running now — what an editor or
    /// a tool rewriting the file in place leaves between truncating it and
    /// writing the end (every tenant, or a partner restriction, would be
    /// gone). A file renamed into place, or reached through a re-pointed
    /// link, is whole by construction, however short. SIGHUP and `POST
    /// /reload` apply the file as it is: the operator asked.
    pub fn reload_after_change(&self) -> Result<Option<ReloadOutcome>, String> {
        let now = digest(&self.watched_files());
        let same = self
            .applied
            .lock()
            .map(|a| a.as_ref().is_some_and(|a| a.digest == Some(now)))
            .unwrap_or(false);
        if same {
            return Ok(None);
        }
        self.reload_checked(true, now).map(Some)
    }

    /// Reloads, recording `digest` — the watched files' content, taken
    /// before anything is read: a change made after it is seen again.
    fn reload_checked(
        &self,
        from_notification: bool,
        digest: [u8; 32],
    ) -> Result<ReloadOutcome, String> {
        let _one_at_a_time = self
            .lock
            .lock()
            .map_err(|_| "reload lock poisoned".to_string())?;
        let started = Instant::now();
        let result = (|| {
            let (config, read) = match &self.config_path {
                Some(p) => {
                    let read = read_config(p)?;
                    if from_notification {
                        self.looks_whole(p, &read)?;
                    }
                    let config = Config::parse(p, &read.text).map_err(|e| e.to_string())?;
                    (config, Some(read))
                }
                None => {
                    info!(target: "attrelay::reload", "the embedded configuration has no file to re-read: rebuilt as it was");
                    (Config::embedded_default(), None)
                }
            };
            for w in crate::lint::report(&config) {
                warn!(config = %config.source.display(), "{w}");
            }
            // What the next start would refuse (restart-only settings
            // included) is refused now, while the running configuration
            // still serves.
            let problems = crate::preflight::files(&config);
            if !problems.is_empty() {
                // Each names the file, line and key itself.
                return Err(problems.join("; "));
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
            self.ctx.queue.set_routes(config.routes.clone());
            self.generation.store(generation, Ordering::SeqCst);
            if let Some(read) = read {
                self.record(read, Some(digest));
            }
            if let Ok(mut applied) = self.applied_config.lock() {
                *applied = Some(config);
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

    /// Refuses a configuration file that is empty, or that is the file
    /// applied last rewritten in place and holding only a beginning of it
    /// (see [`Reloader::reload_after_change`]).
    fn looks_whole(&self, path: &Path, read: &ReadConfig) -> Result<(), String> {
        let advice = "write the new configuration to a temporary file and rename it over this one (an atomic replace); SIGHUP or POST /reload applies the file as it is";
        if read.text.trim().is_empty() {
            return Err(format!(
                "{}: the file is empty, as while it is being rewritten: not applied; {advice}",
                path.display()
            ));
        }
        let applied = self.applied.lock().map_err(|_| "lock poisoned")?;
        if let Some(applied) = applied.as_ref()
            && applied.file == read.file
            && read.text.len() < applied.text.len()
            && applied.text.starts_with(&read.text)
        {
            return Err(format!(
                "{}: the file, rewritten in place, holds only the first {} of the {} bytes of the running configuration, as a file cut short while being written: not applied; {advice}",
                path.display(),
                read.text.len(),
                applied.text.len()
            ));
        }
        Ok(())
    }

    /// The files whose changes trigger a reload: the configuration and
    /// every file a reload reads from it (components, recipient lists,
    /// trust anchors) — as the file on disk names them and, while that one
    /// does not load, as the configuration applied last did, so that a
    /// broken edit never stops the watch on the others.
    pub(super) fn watched_files(&self) -> Vec<PathBuf> {
        let Some(path) = &self.config_path else {
            return Vec::new();
        };
        let mut files = vec![path.clone()];
        let named = |c: &Config| {
            let mut f: Vec<PathBuf> = Vec::new();
            f.extend(c.policy.component.clone());
            f.extend(c.policy.shadow.clone());
            f.extend(
                c.tenants
                    .iter()
                    .filter_map(|t| t.policy.as_ref().map(|p| p.component.clone())),
            );
            f.extend(c.tenants.iter().filter_map(|t| t.recipients_file.clone()));
            f.extend(c.server.client_ca.iter().cloned());
            f
        };
        match Config::load(path) {
            Ok(c) => files.extend(named(&c)),
            Err(_) => {
                if let Ok(applied) = self.applied_config.lock()
                    && let Some(c) = applied.as_ref()
                {
                    files.extend(named(c));
                }
            }
        }
        files
    }
}
