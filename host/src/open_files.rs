//! The open-file budget, planned as a whole at start.
//!
//! Every socket and file is a descriptor, and the process has a fixed
//! number (`RLIMIT_NOFILE`). Spent without a plan, one part starves the
//! others: idle delivery connections to domains an attacker chose once left
//! MX look-ups, connects and DSN spooling failing with `EMFILE`. So each part
//! of the relay that opens descriptors has a bound in the configuration,
//! this module adds them up, and the soft limit is raised to the sum when
//! the hard limit allows it. When it does not, the bounds that scale —
//! `max_sessions`, delivery `concurrency` and `max_connections` — are
//! lowered together until the plan fits ([`fit`]), with a warning naming
//! each part: the relay serves less, never more than it can open. Within
//! the plan each part degrades by its own bound: a session past
//! `max_sessions` gets `421 4.3.2`, a delivery past `max_connections` waits
//! or is deferred with `451 4.4.5`.

use crate::config::Config;
use crate::delivery::mx::DOMAINS_AT_ONCE;

/// What the process holds whatever the load: the runtime (epoll, event
/// and signal descriptors), the listeners, logs, the spool's directory
/// handles, the decision log, the configuration watcher, the policy
/// engine's pool, standard streams, and a connection being refused at a
/// full listener. 17 measured on an idle relay on its default
/// configuration; the rest is margin for more listeners and files.
pub const BASE: u64 = 32;
/// One SMTP session: its socket, and its message's body file while it
/// is being written and committed.
pub const PER_SESSION: u64 = 2;
/// One connection to the Postfix policy service.
pub const PER_POLICYD_CONNECTION: u64 = 1;
/// One admin connection: its socket, and a file read for `GET /queue`.
pub const PER_ADMIN_CONNECTION: u64 = 2;
/// One delivery attempt, besides its SMTP connections (counted by
/// `max_connections`): the spooled body it reads, the envelope it
/// rewrites, a DSN it spools, and two DNS sockets (UDP, TCP after a
/// truncated answer) for each domain delivered at once.
pub const PER_DELIVERY: u64 = 3 + 2 * DOMAINS_AT_ONCE as u64;

/// One part of the budget: what it is, how it is bounded, and what it may
/// hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub what: &'static str,
    pub bound: String,
    pub files: u64,
}

/// The parts of `config`'s budget.
pub fn plan(config: &Config) -> Vec<Part> {
    let d = &config.delivery;
    let mut parts = vec![
        Part {
            what: "the process itself",
            bound: "fixed".into(),
            files: BASE,
        },
        Part {
            what: "SMTP sessions",
            bound: format!("[server] max_sessions = {}", config.server.max_sessions),
            files: PER_SESSION * config.server.max_sessions as u64,
        },
        Part {
            what: "delivery attempts",
            bound: format!("[delivery] concurrency = {}", d.concurrency),
            files: PER_DELIVERY * d.concurrency as u64,
        },
        Part {
            what: "connections to next hops",
            bound: format!(
                "[delivery] max_connections = {}",
                d.connections.max_connections
            ),
            files: d.connections.max_connections as u64,
        },
    ];
    if config.admin.is_some() {
        parts.push(Part {
            what: "admin connections",
            bound: format!("fixed at {}", crate::admin::MAX_CONNECTIONS),
            files: PER_ADMIN_CONNECTION * crate::admin::MAX_CONNECTIONS as u64,
        });
    }
    if let Some(p) = &config.policyd {
        parts.push(Part {
            what: "policy service connections",
            bound: format!("[policyd] max_connections = {}", p.max_connections),
            files: PER_POLICYD_CONNECTION * p.max_connections as u64,
        });
    }
    parts
}

/// Raises the soft open-file limit to what `parts` need, as far as the
/// hard limit allows. Returns the soft limit now in force.
pub fn reserve(parts: &[Part]) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let needed: u64 = parts.iter().map(|p| p.files).sum();
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if soft >= needed {
        return soft;
    }
    let target = needed.min(hard);
    let raised = Rlimit {
        current: Some(target),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => target,
        Err(_) => soft,
    }
}

/// The bounds that scale with the open-file limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scaled {
    pub max_sessions: usize,
    pub concurrency: usize,
    pub max_connections: usize,
}

/// `config`'s scaling bounds lowered, all by one factor and then sessions
/// one at a time, until its plan fits `limit`; each at least 1. `None` when
/// the plan fits as it is.
pub fn fit(config: &Config, limit: u64) -> Option<Scaled> {
    let parts = plan(config);
    let needed: u64 = parts.iter().map(|p| p.files).sum();
    if needed <= limit {
        return None;
    }
    let d = &config.delivery;
    let configured = Scaled {
        max_sessions: config.server.max_sessions,
        concurrency: d.concurrency,
        max_connections: d.connections.max_connections,
    };
    let scaling = |s: &Scaled| {
        PER_SESSION * s.max_sessions as u64
            + PER_DELIVERY * s.concurrency as u64
            + s.max_connections as u64
    };
    let fixed = needed - scaling(&configured);
    let room = limit.saturating_sub(fixed) as f64;
    let factor = room / scaling(&configured) as f64;
    let scale = |n: usize| ((n as f64 * factor).floor() as usize).max(1);
    let mut fitted = Scaled {
        max_sessions: scale(configured.max_sessions),
        concurrency: scale(configured.concurrency),
        max_connections: scale(configured.max_connections),
    };
    while fixed + scaling(&fitted) > limit && fitted.max_sessions > 1 {
        fitted.max_sessions -= 1;
    }
    Some(fitted)
}

/// What `fit` lowered, for the warning.
pub fn describe(parts: &[Part], limit: u64, fitted: &Scaled) -> String {
    let needed: u64 = parts.iter().map(|p| p.files).sum();
    let listed: Vec<String> = parts
        .iter()
        .map(|p| format!("{} {} ({})", p.files, p.what, p.bound))
        .collect();
    format!(
        "the open-file limit is {limit} and the configuration may need {needed} ({}); serving with max_sessions = {}, delivery concurrency = {} and max_connections = {} instead; raise the limit (LimitNOFILE= in a systemd unit, ulimit -n) or lower these bounds",
        listed.join(", "),
        fitted.max_sessions,
        fitted.concurrency,
        fitted.max_connections
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(std::path::Path::new("relay.toml"), text).unwrap()
    }

    #[test]
    fn every_part_that_opens_files_is_counted_by_its_bound() {
        let c = config(
            "[server]\nmax_sessions = 10\n\n[delivery]\nconcurrency = 2\nmax_connections = 30\n\n[policyd]\nlisten = [\"127.0.0.1:0\"]\nmax_connections = 4\n",
        );
        let parts = plan(&c);
        let files = |what: &str| parts.iter().find(|p| p.what == what).unwrap().files;
        assert_eq!(files("SMTP sessions"), 20);
        assert_eq!(files("delivery attempts"), 2 * PER_DELIVERY);
        assert_eq!(files("connections to next hops"), 30);
        assert_eq!(files("policy service connections"), 4);
    }

    #[test]
    fn a_plan_past_the_limit_is_scaled_down_to_fit_it() {
        let c = config("");
        assert_eq!(fit(&c, 1_000_000), None, "the defaults fit a large limit");
        for limit in [128u64, 256, 512] {
            let fitted = fit(&c, limit).expect("the defaults need more");
            let mut smaller = c.clone();
            smaller.server.max_sessions = fitted.max_sessions;
            smaller.delivery.concurrency = fitted.concurrency;
            smaller.delivery.connections.max_connections = fitted.max_connections;
            let needed: u64 = plan(&smaller).iter().map(|p| p.files).sum();
            assert!(needed <= limit, "{limit}: {fitted:?} needs {needed}");
            assert!(fitted.max_sessions >= 1 && fitted.concurrency >= 1);
            let text = describe(&plan(&c), limit, &fitted);
            assert!(
                text.contains("max_sessions = 256") && text.contains("LimitNOFILE"),
                "{text}"
            );
        }
    }
}
