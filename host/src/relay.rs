//! The relay assembled: configuration in, a running SMTP server and delivery
//! queue out. Used by `attrelay serve` and by the integration tests, which
//! run the same assembly in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::Admin;
use crate::config::{Config, NextHop};
use crate::delivery::{self, DeliveryConfig, Target};
use crate::metrics::Metrics;
use crate::policy::{EngineLimits, PolicyEngine};
use crate::policyd::PolicyServer;
use crate::reload::Reloader;
use crate::smtp::{Limits, Server, ServerContext};
use crate::spool::Spool;
use crate::tls::{pem::read_certificates, server as tls_server};

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

/// The delivery settings of a configuration.
pub fn delivery_config(config: &Config) -> anyhow::Result<DeliveryConfig> {
    let d = &config.delivery;
    let client_cert = match (&d.tls_cert, &d.tls_key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    let tls = tls_server::client_config(&d.tls_ca, client_cert).context("delivery TLS")?;
    Ok(DeliveryConfig {
        target: match &d.next_hop {
            NextHop::Directory(p) => Target::Directory(p.clone()),
            NextHop::Smarthost { host, port } => Target::Smarthost {
                host: host.clone(),
                port: *port,
            },
            NextHop::Mx => Target::Mx,
        },
        hostname: config.server.hostname.clone(),
        retry_initial: d.retry_initial,
        retry_max: d.retry_max,
        max_queue_age: d.max_queue_age,
        concurrency: d.concurrency,
        timeout: d.timeout,
        tls,
        mx_port: d.mx_port,
        resolver: match d.next_hop {
            NextHop::Mx => Some(std::sync::Arc::new(
                crate::delivery::mx::resolver(&d.dns_servers).map_err(|e| anyhow::anyhow!(e))?,
            )),
            _ => None,
        },
        connections: Default::default(),
        metrics: None,
    })
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
    let s = &config.server;
    let metrics = Arc::new(Metrics::new());
    // One policy instance per session at most (two with a shadow, more with
    // tenant policies), plus the load-time probes.
    let limits = EngineLimits {
        max_instances: config
            .policy
            .max_instances
            .max(s.max_sessions as u32 * 2 + 8),
        ..EngineLimits::from(&config.policy)
    };
    let cache_dir = config.policy.cache.clone().unwrap_or_else(|| {
        config
            .spool
            .parent()
            .map(|p| p.join("policy-cache"))
            .unwrap_or_else(|| "policy-cache".into())
    });
    let engine = PolicyEngine::with_cache(limits, Some(cache_dir))?;
    let (evaluation, report) =
        crate::reload::build(config, &engine, 0).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !report.differing.is_empty() {
        info!(
            differing = report.differing.len(),
            "the policy answers some reference scenarios differently (by design?)"
        );
    }
    let (certs, key) = match (&s.tls_cert, &s.tls_key) {
        (Some(c), Some(k)) => (read_certificates(c)?, tls_server::read_private_key(k)?),
        _ => tls_server::ephemeral_certificate(&s.hostname)?,
    };
    let tls = TlsAcceptor::from(tls_server::server_config(certs, key, &s.client_ca)?);

    let spool = Arc::new(Spool::open(&config.spool)?);
    let (recovered, problems) = spool.recover()?;
    for p in &problems {
        warn!(error = %p, "spool recovery problem");
    }
    if !recovered.is_empty() {
        info!(messages = recovered.len(), spool = %config.spool.display(), "recovered queued messages; delivering now");
    }
    let mut delivery_cfg = delivery_config(config)?;
    delivery_cfg.metrics = Some(metrics.clone());
    let (queue, queue_task) =
        delivery::start(spool.clone(), delivery_cfg, recovered, shutdown.clone());

    let ctx = Arc::new(ServerContext {
        hostname: s.hostname.clone(),
        limits: Limits {
            max_message_size: s.max_message_size,
            max_recipients: s.max_recipients,
            idle_timeout: s.idle_timeout,
            max_errors: s.max_errors,
            bare_line_endings: s.bare_line_endings,
            max_session: s.max_session,
            pregreet_delay: s.pregreet_delay,
            ..Limits::default()
        },
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
        config.clone(),
        engine,
        ctx.clone(),
        metrics.clone(),
    ));
    if config_path.is_some() {
        crate::reload::spawn_triggers(reloader.clone(), shutdown.clone());
    }
    let admin = match config.admin {
        Some(addr) => {
            let admin = Arc::new(Admin {
                ctx: ctx.clone(),
                reloader: reloader.clone(),
                metrics: metrics.clone(),
            });
            Some(admin.serve(addr, shutdown.clone()).await?)
        }
        None => None,
    };
    let server = Server::bind(
        ctx.clone(),
        &s.listen,
        s.max_sessions,
        s.max_sessions_per_ip,
    )
    .await?;
    let addrs = server.local_addrs();
    let (policyd, policyd_task) = match &config.policyd {
        Some(settings) => {
            let p = PolicyServer::bind(ctx.clone(), settings.clone()).await?;
            let addrs = p.local_addrs();
            info!(listen = ?settings.listen, "Postfix policy-delegation service listening");
            (addrs, Some(tokio::spawn(p.run())))
        }
        None => (Vec::new(), None),
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
