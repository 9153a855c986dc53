//! The relay assembled: configuration in, a running SMTP server and delivery
//! queue out. Used by `attrelay serve` and by the integration tests, which
//! run the same assembly in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::Admin;
use crate::config::Config;
use crate::delivery::{self, DeliveryContext};
use crate::metrics::Metrics;
use crate::pem::read_certificates;
use crate::policy::{EngineLimits, PolicyEngine};
use crate::policyd::PolicyServer;
use crate::reload::Reloader;
use crate::smtp::{Server, ServerContext};
use crate::spool::Spool;
use crate::tls::server as tls_server;

/// A running relay.
pub struct RelayHandle {
    /// The addresses the SMTP server listens on.
    pub addrs: Vec<SocketAddr>,
    /// The admin endpoint's address, when enabled.
    pub admin: Option<SocketAddr>,
    /// The TCP addresses of the Postfix policy-delegation service, when
    /// `[policyd]` is configured.
    pub policyd: Vec<SocketAddr>,
    pub shutdown: CancellationToken,
    pub context: Arc<ServerContext>,
    pub reloader: Arc<Reloader>,
    pub metrics: Arc<Metrics>,
    server: tokio::task::JoinHandle<()>,
    queue: tokio::task::JoinHandle<()>,
    policyd_task: Option<tokio::task::JoinHandle<()>>,
}

impl RelayHandle {
    /// Stops accepting, lets sessions finish (within the grace period) and
    /// in-flight deliveries end, and returns when all is done.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Waits until something else (a signal handler) triggers shutdown.
    pub async fn wait(self) {
        let _ = self.server.await;
        if let Some(p) = self.policyd_task {
            let _ = p.await;
        }
        let _ = self.queue.await;
    }
}

/// Policy instances alive at once while a reload validates its candidate:
/// [`crate::reload::build`] loads, probes and runs the scenarios one
/// instance at a time, and reloads run one at a time.
const RELOAD_PROBE_INSTANCES: usize = 1;

/// The size of the policy instance pool: every instance the relay's
/// sessions can hold at the same time, so that an instance is always there
/// for a session that needs one. Without it, sessions that hold instances
/// (anonymous ones included: a session from anywhere may address recipients
/// of several tenants) could exhaust the pool, and an attributed session
/// would be answered `451 4.3.5` for want of an instance.
///
/// The sum of
/// - `[server] max_sessions` × [`MAX_INSTANCES_PER_SESSION`] (base, shadow
///   and tenant policies),
/// - `[policyd] max_connections` × [`MAX_INSTANCES_PER_POLICYD_REQUEST`]
///   (base, shadow and one tenant policy), when policyd is configured,
/// - the instance a reload's validation holds (`RELOAD_PROBE_INSTANCES`),
///
/// and at least `[policy] max_instances`. The shadow and tenant policies are
/// counted even when none is configured: a reload may add them, and the
/// pool is sized only at start. The pool reserves address space, not
/// memory, for its slots. If it runs out all the same (a policy call still
/// running when its session's deadline ends the session holds that
/// session's instances until the call's own budget ends), instantiation
/// fails and the policy answers `451 4.3.5`: fail closed, never an accept.
///
/// [`MAX_INSTANCES_PER_SESSION`]: crate::evaluation::MAX_INSTANCES_PER_SESSION
/// [`MAX_INSTANCES_PER_POLICYD_REQUEST`]: crate::evaluation::MAX_INSTANCES_PER_POLICYD_REQUEST
pub fn policy_pool_size(config: &Config) -> u32 {
    use crate::evaluation::{MAX_INSTANCES_PER_POLICYD_REQUEST, MAX_INSTANCES_PER_SESSION};
    let smtp = config
        .server
        .max_sessions
        .saturating_mul(MAX_INSTANCES_PER_SESSION);
    let policyd = config.policyd.as_ref().map_or(0, |p| {
        p.max_connections
            .saturating_mul(MAX_INSTANCES_PER_POLICYD_REQUEST)
    });
    let needed = smtp
        .saturating_add(policyd)
        .saturating_add(RELOAD_PROBE_INSTANCES);
    u32::try_from(needed)
        .unwrap_or(u32::MAX)
        .max(config.policy.max_instances)
}

/// Starts the relay described by `config`.
pub async fn start(config: &Config) -> anyhow::Result<RelayHandle> {
    start_with(config, CancellationToken::new()).await
}

/// Starts the relay; cancelling `shutdown` stops it gracefully.
pub async fn start_with(
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<RelayHandle> {
    let files = crate::open_files::plan(config);
    let limit = crate::open_files::reserve(&files);
    info!(
        open_file_limit = limit,
        planned = files.iter().map(|p| p.files).sum::<u64>(),
        "open-file budget"
    );
    // A limit below the plan lowers the bounds that scale; the reloader
    // still compares later files with the configuration as written.
    let written = config;
    let fitted_config;
    let config = match crate::open_files::fit(config, limit) {
        None => config,
        Some(fitted) => {
            warn!("{}", crate::open_files::describe(&files, limit, &fitted));
            let mut c = config.clone();
            c.server.max_sessions = fitted.max_sessions;
            c.delivery.concurrency = fitted.concurrency;
            c.delivery.connections.max_connections = fitted.max_connections;
            c.delivery.connections.max_idle =
                c.delivery.connections.max_idle.min(fitted.max_connections);
            fitted_config = c;
            &fitted_config
        }
    };
    let s = &config.server;
    // What the directory lint finds (the configuration's own warnings were
    // printed when it was loaded).
    for w in crate::lint::findings(config) {
        warn!(config = %config.source.display(), "{w}");
    }
    // The files it names, each problem with the configuration's file, line
    // and key, before anything is bound or written.
    let problems = crate::preflight::files(config);
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }
    // Every listener first: a relay whose port is taken has written
    // nothing, and port 25 needs root, which the relay may give up next.
    let listeners = Listeners::bind(config).await?;
    let (certs, key) = match (&s.tls_cert, &s.tls_key) {
        (Some(c), Some(k)) => (read_certificates(c)?, tls_server::read_private_key(k)?),
        _ => tls_server::ephemeral_certificate(&s.hostname)?,
    };
    let tls = TlsAcceptor::from(tls_server::server_config(certs, key, &s.client_ca)?);
    let metrics = Arc::new(Metrics::new());
    // The delivery client's key too is read before the relay gives up root.
    let delivery_cfg = DeliveryContext::new(
        &config.delivery,
        &config.server.hostname,
        config.server.shutdown_grace,
        &metrics,
    )?;
    settle_user(config)?;
    let limits = EngineLimits {
        max_instances: policy_pool_size(config),
        ..EngineLimits::from(&config.policy)
    };
    let engine = PolicyEngine::with_cache(limits, Some(config.policy_cache()))?;
    let (evaluation, report) =
        crate::reload::build(config, &engine, 0).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !report.differing.is_empty() {
        info!(
            differing = report.differing.len(),
            "the policy answers some reference scenarios differently (by design?)"
        );
    }

    let spool = Arc::new(Spool::open_owned(
        &config.spool,
        config.spool_min_free_bytes,
    )?);
    if let Err(e) = spool.ensure_room(0) {
        warn!(error = %e, "the spool is short of free space: new mail gets 452 4.3.1 until some is freed");
    }
    let (recovered, problems) = spool.recover()?;
    for p in &problems {
        warn!(error = %p, "spool recovery problem");
        if p.is_corrupt() {
            metrics.spool_set_aside.inc();
        }
    }
    if !recovered.is_empty() {
        info!(messages = recovered.len(), spool = %config.spool.display(), "recovered queued messages; delivering now");
    }
    delivery_cfg.set_routes(config.routes.clone());
    let (queue, queue_task) =
        delivery::queue::start(spool.clone(), delivery_cfg, recovered, shutdown.clone());

    let ctx = Arc::new(ServerContext {
        hostname: s.hostname.clone(),
        postmaster: s.postmaster.clone(),
        limits: s.limits.clone(),
        evaluation: ArcSwap::from_pointee(evaluation),
        tls,
        metrics: metrics.clone(),
        spool,
        queue,
        shutdown: shutdown.clone(),
    });
    let config_path = Some(config.source.clone()).filter(|p| p.is_file());
    let reloader = Arc::new(Reloader::new(
        config_path.clone(),
        written.clone(),
        engine,
        ctx.clone(),
        metrics.clone(),
    ));
    // Also for the embedded configuration, which watches no file: SIGHUP
    // must reload (a rebuild that says so), never take the default action
    // of ending the process.
    crate::reload::spawn_triggers(reloader.clone(), shutdown.clone());
    let admin = match &config.admin {
        Some(settings) => {
            let r = reloader.clone();
            let admin = Arc::new(Admin {
                ctx: ctx.clone(),
                reload: Arc::new(move || {
                    r.reload()
                        .map(|outcome| serde_json::to_value(outcome).unwrap_or_default())
                }),
                metrics: metrics.clone(),
                settings: settings.clone(),
                user: crate::privileges::current_user(),
            });
            listeners
                .admin
                .map(|l| admin.serve(l, shutdown.clone()))
                .transpose()?
        }
        None => None,
    };
    let server = Server::new(
        ctx.clone(),
        listeners.smtp,
        s.max_sessions,
        s.max_sessions_per_ip,
        s.ipv6_prefix_length,
    )
    .with_proxy(s.proxy.clone());
    let addrs = server.local_addrs();
    let (policyd, policyd_task) = match (&config.policyd, listeners.policyd) {
        (Some(settings), Some(bound)) => {
            let p = PolicyServer::new(ctx.clone(), settings.clone(), bound);
            let addrs = p.local_addrs();
            info!(listen = ?settings.listen, "Postfix policy-delegation service listening");
            (addrs, Some(tokio::spawn(p.run())))
        }
        _ => (Vec::new(), None),
    };
    let grace = s.shutdown_grace;
    let server_task = tokio::spawn(server.run(grace));
    Ok(RelayHandle {
        addrs,
        admin,
        policyd,
        policyd_task,
        shutdown,
        context: ctx,
        reloader,
        metrics,
        server: server_task,
        queue: queue_task,
    })
}

/// The relay's sockets, bound before anything else is done.
struct Listeners {
    smtp: Vec<tokio::net::TcpListener>,
    admin: Option<tokio::net::TcpListener>,
    policyd: Option<crate::policyd::PolicydListeners>,
}

impl Listeners {
    async fn bind(config: &Config) -> std::io::Result<Listeners> {
        Ok(Listeners {
            smtp: Server::listen(&config.server.listen).await?,
            admin: match &config.admin {
                Some(settings) => Some(Admin::listen(settings).await?),
                None => None,
            },
            policyd: match &config.policyd {
                Some(settings) => Some(PolicyServer::listen(settings).await?),
                None => None,
            },
        })
    }
}

/// Becomes `[server] user` (its spool, policy cache and decision log made
/// its own first), or says that the relay runs as root.
fn settle_user(config: &Config) -> anyhow::Result<()> {
    match &config.server.run_as {
        Some(run_as) => {
            let files: Vec<std::path::PathBuf> = config
                .policy
                .decision_log
                .iter()
                .flat_map(|log| [log.clone(), crate::decisions::rotated(log)])
                .collect();
            let files: Vec<&std::path::Path> = files.iter().map(|f| f.as_path()).collect();
            let cache = config.policy_cache();
            crate::privileges::become_user(run_as, &[&config.spool, &cache], &files)?;
            info!(user = %run_as.user, uid = run_as.uid, gid = run_as.gid, "listeners bound; running as {}", run_as.user);
        }
        None if crate::privileges::is_root() => {
            warn!(
                "running as root: set [server] user to a dedicated user (docs/OPERATIONS.md, \"Port 25 and the service\")"
            );
        }
        None => {}
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The grace period is part of the config; exposed for the binary's messages.
pub fn grace(config: &Config) -> Duration {
    config.server.shutdown_grace
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluation::{MAX_INSTANCES_PER_POLICYD_REQUEST, MAX_INSTANCES_PER_SESSION};

    fn pool(text: &str) -> usize {
        let config = Config::parse(std::path::Path::new("relay.toml"), text).unwrap();
        policy_pool_size(&config) as usize
    }

    #[test]
    fn the_pool_holds_every_session_at_its_most_whatever_max_instances_says() {
        assert_eq!(
            pool("[server]\nmax_sessions = 6\n\n[policy]\nmax_instances = 1\n"),
            6 * MAX_INSTANCES_PER_SESSION + RELOAD_PROBE_INSTANCES
        );
        assert_eq!(
            pool(
                "[server]\nmax_sessions = 6\n\n[policy]\nmax_instances = 1\n\n[policyd]\nlisten = [\"127.0.0.1:0\"]\nmax_connections = 4\n"
            ),
            6 * MAX_INSTANCES_PER_SESSION
                + 4 * MAX_INSTANCES_PER_POLICYD_REQUEST
                + RELOAD_PROBE_INSTANCES
        );
        assert_eq!(
            pool("[server]\nmax_sessions = 1\n\n[policy]\nmax_instances = 5000\n"),
            5000,
            "an operator may ask for more"
        );
    }
}
