//! Prometheus metrics, served by the admin endpoint.
//!
//! Counters are updated where things happen (sessions, decisions, deliveries,
//! reloads); the queue's size and age are read from the delivery queue's own
//! index when scraped, so they are never stale and a scrape never touches the
//! spool's files.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub stage: String,
    pub reason: String,
    pub tenant: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

pub struct Metrics {
    registry: Registry,
    pub sessions: Counter,
    pub sessions_active: Gauge,
    /// Connections closed before their session for their PROXY header: not
    /// from a configured balancer, malformed, too slow.
    pub proxy_refused: Counter,
    pub decisions: Family<DecisionLabels, Counter>,
    pub policy_latency: Histogram,
    pub policy_failures: Counter,
    pub shadow_differences: Counter,
    pub deliveries: Family<OutcomeLabels, Counter>,
    pub reloads: Family<OutcomeLabels, Counter>,
    pub queue_size: Gauge,
    pub queue_held: Gauge,
    pub queue_oldest_age: Gauge,
    pub policyd_requests: Counter,
    pub policyd_errors: Counter,
    pub policyd_evicted: Counter,
    pub connections_open: Gauge,
    pub connections_idle: Gauge,
    pub connections_opened: Counter,
    pub connections_reused: Counter,
    pub connections_evicted: Family<OutcomeLabels, Counter>,
    pub spool_set_aside: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("attrelay");
        let m = Metrics {
            sessions: Counter::default(),
            sessions_active: Gauge::default(),
            proxy_refused: Counter::default(),
            decisions: Family::default(),
            // 10 µs to ~2.6 s.
            policy_latency: Histogram::new(exponential_buckets(0.00001, 4.0, 10)),
            policy_failures: Counter::default(),
            shadow_differences: Counter::default(),
            deliveries: Family::default(),
            reloads: Family::default(),
            queue_size: Gauge::default(),
            queue_held: Gauge::default(),
            queue_oldest_age: Gauge::default(),
            policyd_requests: Counter::default(),
            policyd_errors: Counter::default(),
            policyd_evicted: Counter::default(),
            connections_open: Gauge::default(),
            connections_idle: Gauge::default(),
            connections_opened: Counter::default(),
            connections_reused: Counter::default(),
            connections_evicted: Family::default(),
            spool_set_aside: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("sessions", "SMTP sessions accepted", m.sessions.clone());
        registry.register(
            "sessions_active",
            "SMTP sessions in progress",
            m.sessions_active.clone(),
        );
        registry.register(
            "proxy_refused",
            "Connections closed before their session for their PROXY header (not from a configured balancer, malformed or too slow)",
            m.proxy_refused.clone(),
        );
        registry.register(
            "decisions",
            "Policy decisions by stage, reason, tenant and reply code",
            m.decisions.clone(),
        );
        registry.register(
            "policy_latency_seconds",
            "Time of one policy call, instantiation included",
            m.policy_latency.clone(),
        );
        registry.register(
            "policy_failures",
            "Policy calls that failed closed (451 4.3.5)",
            m.policy_failures.clone(),
        );
        registry.register(
            "shadow_differences",
            "Verdicts of the shadow policy that differ from the active one",
            m.shadow_differences.clone(),
        );
        registry.register(
            "deliveries",
            "Delivery attempts per recipient by outcome",
            m.deliveries.clone(),
        );
        registry.register(
            "reloads",
            "Policy and configuration reloads by result",
            m.reloads.clone(),
        );
        registry.register("queue_size", "Messages in the spool", m.queue_size.clone());
        registry.register(
            "queue_held",
            "Messages held by an operator (not attempted until released)",
            m.queue_held.clone(),
        );
        registry.register(
            "queue_oldest_age_seconds",
            "Age of the oldest message in the spool",
            m.queue_oldest_age.clone(),
        );
        registry.register(
            "policyd_requests",
            "Postfix policy-delegation requests answered",
            m.policyd_requests.clone(),
        );
        registry.register(
            "policyd_errors",
            "Postfix policy-delegation connections closed on a bad request",
            m.policyd_errors.clone(),
        );
        registry.register(
            "policyd_evicted",
            "Policy-service connections closed, least recently active first, to make room for a new one",
            m.policyd_evicted.clone(),
        );
        registry.register(
            "delivery_connections_open",
            "Connections to next hops open now, busy and idle (at most [delivery] max_connections)",
            m.connections_open.clone(),
        );
        registry.register(
            "delivery_connections_idle",
            "Idle connections to next hops kept for reuse now",
            m.connections_idle.clone(),
        );
        registry.register(
            "delivery_connections_opened",
            "Connections to next hops opened",
            m.connections_opened.clone(),
        );
        registry.register(
            "delivery_connections_reused",
            "Idle connections to next hops taken for another message",
            m.connections_reused.clone(),
        );
        registry.register(
            "delivery_connections_evicted",
            "Idle connections closed, by reason (expired, lru, hop_cap, stale, used_up, wanted)",
            m.connections_evicted.clone(),
        );
        registry.register(
            "spool_set_aside",
            "Queued messages moved to corrupt/ (body missing or damaged), never delivered",
            m.spool_set_aside.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn decision(&self, stage: &str, reason: Option<&str>, tenant: Option<&str>, code: u16) {
        self.decisions
            .get_or_create(&DecisionLabels {
                stage: stage.to_string(),
                reason: reason.unwrap_or("none").to_string(),
                tenant: tenant.unwrap_or("none").to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    pub fn outcome(family: &Family<OutcomeLabels, Counter>, outcome: &str) {
        family
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
