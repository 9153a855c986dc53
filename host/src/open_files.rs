//! The open-file budget, planned as a whole at start.
//!
//! Every socket and file is a descriptor, and the process has a fixed
//! number (`RLIMIT_NOFILE`). Spent without a plan, one part starves the
//! others: idle delivery connections to domains an attacker chose once left
//! MX look-ups, connects and DSN spooling failing with `EMFILE`. So each part
//! of the relay that opens descriptors has a bound in the configuration,
//! this module adds them up, the soft limit is raised to the sum when the
//! hard limit allows it, and the relay refuses to start when it does not —
//! naming each part, so that the operator knows what to lower or raise.
//! Within the plan each part degrades by its own bound: a session past
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
pub const BASE: u64 = 64;
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

/// The budget does not fit the process's limit.
#[derive(Debug, thiserror::Error)]
#[error(
    "the open-file limit is {hard} (hard) and the configuration may need {needed}: {parts}; raise the limit (LimitNOFILE= in a systemd unit, ulimit -n) or lower these bounds"
)]
pub struct TooFewFiles {
    pub hard: u64,
    pub needed: u64,
    pub parts: String,
}

/// Raises the soft open-file limit to what `parts` need, if it is lower
/// and the hard limit allows it. Returns the soft limit now in force.
pub fn reserve(parts: &[Part]) -> Result<u64, TooFewFiles> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let needed: u64 = parts.iter().map(|p| p.files).sum();
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if soft >= needed {
        return Ok(soft);
    }
    let too_few = || TooFewFiles {
        hard,
        needed,
        parts: parts
            .iter()
            .map(|p| format!("{} {} ({})", p.files, p.what, p.bound))
            .collect::<Vec<_>>()
            .join(", "),
    };
    if hard < needed {
        return Err(too_few());
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(needed),
            maximum: limit.maximum,
        },
    )
    .map_err(|_| too_few())?;
    Ok(needed)
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
    fn a_plan_past_the_hard_limit_names_its_parts() {
        let parts = vec![Part {
            what: "SMTP sessions",
            bound: "[server] max_sessions = 1000000000".into(),
            files: u64::MAX / 2,
        }];
        let e = reserve(&parts).unwrap_err().to_string();
        assert!(e.contains("max_sessions = 1000000000"), "{e}");
        assert!(e.contains("LimitNOFILE"), "{e}");
    }
}
