//! What every delivery attempt shares: the settings, and what is built
//! from them once (the client TLS configuration, the MX resolver, the
//! connection pool, the DSN limiter).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::routes::Routes;
use super::session::Connections;
use super::settings::{DeliverySettings, NextHop};
use super::{dsn, pool, resolver};
use crate::metrics::Metrics;

/// `[delivery]`, resolved: built by [`DeliveryContext::new`], shared by
/// every attempt.
#[derive(Clone)]
pub struct DeliveryContext {
    pub settings: DeliverySettings,
    /// This relay's name, in EHLO and in DSNs.
    pub hostname: String,
    /// At shutdown, how long attempts in flight may go on; the rest stay in
    /// the spool for the next start.
    pub shutdown_grace: Duration,
    /// The client side of STARTTLS to next hops.
    pub client_tls: Arc<rustls::ClientConfig>,
    /// The DNS resolver for MX delivery, shared by all attempts.
    pub resolver: Option<Arc<hickory_resolver::TokioResolver>>,
    /// Connections to next hops (the budget, and the idle ones kept for
    /// reuse), shared by all attempts.
    pub connections: Arc<Connections>,
    pub metrics: Arc<Metrics>,
    /// DSNs per sender domain for unauthenticated senders, shared by all
    /// attempts (`[delivery] dsn_rate_per_domain_per_hour`).
    pub dsn_limiter: Arc<dsn::DsnLimiter>,
    /// Routes by recipient domain, swapped whole by a reload.
    pub routes: Arc<ArcSwap<Routes>>,
}

/// Why delivery could not be set up from its settings.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("delivery TLS: {0}")]
    Tls(#[from] crate::tls::server::TlsConfigError),
    #[error("delivery by MX: {0}")]
    Resolver(String),
}

impl DeliveryContext {
    /// Delivery as `settings` describe it, from this relay (`hostname` in
    /// EHLO), reporting to `metrics`: the client TLS configuration, the
    /// resolver for MX delivery and the connection pool, each built once
    /// and shared by every attempt.
    pub fn new(
        settings: &DeliverySettings,
        hostname: &str,
        shutdown_grace: Duration,
        metrics: &Arc<Metrics>,
    ) -> Result<DeliveryContext, SetupError> {
        let d = settings;
        let client_cert = match (&d.tls_cert, &d.tls_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        // The CA files serve `tls = "verify"` only (the configuration checks).
        let client_tls = crate::tls::client::client_config(&d.tls_ca, client_cert)?;
        // Built even when `[delivery]` does not deliver by MX, so that a
        // reload may add a route that does; only then is a failure an error.
        let resolver = match (resolver::resolver(&d.dns_servers), &d.next_hop) {
            (Ok(r), _) => Some(Arc::new(r)),
            (Err(e), NextHop::Mx) => return Err(SetupError::Resolver(e)),
            (Err(e), _) => {
                tracing::debug!(error = %e, "no DNS resolver: routes by MX will be deferred");
                None
            }
        };
        let connections = Connections::new(
            d.connections,
            pool::PoolMetrics {
                open: metrics.connections_open.clone(),
                idle: metrics.connections_idle.clone(),
                opened: metrics.connections_opened.clone(),
                reused: metrics.connections_reused.clone(),
                evicted: metrics.connections_evicted.clone(),
            },
        );
        Ok(DeliveryContext {
            settings: d.clone(),
            hostname: hostname.to_string(),
            shutdown_grace,
            client_tls,
            resolver,
            connections: Arc::new(connections),
            metrics: metrics.clone(),
            dsn_limiter: Arc::new(dsn::DsnLimiter::new(d.dsn_rate_per_domain_per_hour)),
            routes: Arc::default(),
        })
    }

    /// Delivers by `routes` from now on (at start, and at each reload).
    pub fn set_routes(&self, routes: Routes) {
        self.routes.store(Arc::new(routes));
    }
}
