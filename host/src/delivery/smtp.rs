//! Delivery to an SMTP next hop: a session opened (STARTTLS when offered,
//! with our client certificate if configured) or taken from the pool, one
//! transaction with a result per recipient, and the session kept only when
//! its state is known.
//!
//! The rule throughout: a recipient's outcome comes from the reply that
//! answers its own command, or it is temporary. Anything that is not a
//! reply in its place — a timeout, an I/O error, an unparseable reply, a
//! byte the hop sent unasked — ends the transaction: the recipients not yet
//! answered are deferred and the connection is closed, never reused.

use std::net::SocketAddr;
use std::time::Duration;

use super::context::DeliveryContext;
use super::outcome::Outcome;
use super::outcome::{all, hop_outcome, reply_outcome, text_of};
use super::pool::Pooled;
use super::session::{Client, Connections, OpenError, Session};
use super::transaction::Done;
use super::wire::HopError;
use crate::spool::Stored;

/// How far an attempt at one next hop got, which decides whether another
/// MX host may be tried in the same attempt (RFC 5321 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// No reply decided any recipient and no message can have reached the
    /// hop: the next host may be tried. `stalled`: the hop took the
    /// connection and then let a step time out (`mx_session_limit`).
    Untouched { stalled: bool },
    /// A reply decided recipients, or the end of data was sent (the hop may
    /// have the message: trying another would risk a duplicate).
    Decided,
}

/// Each recipient's outcome at one next hop, and how far it got.
pub struct HopResult {
    pub outcomes: Vec<(String, Outcome)>,
    pub reach: Reach,
}

impl HopResult {
    fn untouched(recipients: &[String], e: &HopError) -> HopResult {
        HopResult {
            outcomes: all(recipients, hop_outcome(e)),
            reach: Reach::Untouched {
                stalled: e.is_timeout(),
            },
        }
    }
}

/// Delivers to `hosts` (`host:port` each) in order, by `deadline`: the
/// next when one could not be resolved, reached or talked to (no reply
/// decided any recipient and no message can have reached it), as with MX
/// hosts (RFC 5321 5.1), and at most `mx_session_limit` hosts that take
/// the connection and then stall. Each outcome comes with the hop that gave
/// it, as the log's `relay` names it: `host[address]:port`.
pub async fn deliver_hosts(
    cfg: &DeliveryContext,
    hosts: &[(String, u16)],
    sender: &str,
    recipients: &[String],
    message: &Stored,
    deadline: tokio::time::Instant,
) -> Vec<(String, Outcome, String)> {
    let mut last = Vec::new();
    let mut stalled = 0;
    for (host, port) in hosts {
        let mut relay = super::routes::host_port(host, *port);
        let hop = async {
            match resolve(host, *port, cfg.settings.timeout).await {
                Ok(addr) => {
                    relay = format!("{host}[{}]:{}", addr.ip(), addr.port());
                    deliver_at(cfg, host, addr, sender, recipients, message).await
                }
                Err(e) => HopResult::untouched(recipients, &e),
            }
        };
        let Ok(result) = tokio::time::timeout_at(deadline, hop).await else {
            let outcome = super::outcome::attempt_timed_out(cfg.settings.attempt_timeout);
            return all(recipients, outcome)
                .into_iter()
                .map(|(r, o)| (r, o, relay.clone()))
                .collect();
        };
        last = result
            .outcomes
            .into_iter()
            .map(|(r, o)| (r, o, relay.clone()))
            .collect();
        match result.reach {
            Reach::Decided => break,
            Reach::Untouched { stalled: true } => {
                stalled += 1;
                if stalled >= cfg.settings.mx_session_limit {
                    break;
                }
            }
            Reach::Untouched { stalled: false } => {}
        }
    }
    last
}

/// Delivers to `host` at an address already resolved (MX delivery resolves
/// with its own resolver and tries each address); `host` is the name TLS
/// verifies. An idle connection to the same hop is reused when the pool has
/// a quiet one; a new one waits for room in the pool's budget.
pub async fn deliver_at(
    cfg: &DeliveryContext,
    host: &str,
    addr: SocketAddr,
    sender: &str,
    recipients: &[String],
    message: &Stored,
) -> HopResult {
    let (mut outcomes, valid) = canonical(sender, recipients);
    if valid.is_empty() {
        return HopResult {
            outcomes,
            reach: Reach::Decided,
        };
    }
    let pool = &cfg.connections;
    let hop = (host.to_ascii_lowercase(), addr);
    let mut done = None;
    if let Some(mut cached) = pool.take(&hop) {
        let d = cached.conn.transaction(sender, &valid, message).await;
        // The hop closed the idle connection just now, or answered MAIL
        // with 421 or 503: nothing was accepted, so a fresh connection is
        // no duplicate.
        if !d.stale {
            done = Some(finish(pool, hop.clone(), cached, d));
        }
    }
    let done = match done {
        Some(d) => d,
        None => match open_and_run(cfg, host, addr, sender, &valid, message).await {
            Ok((conn, d)) => finish(pool, hop, conn, d),
            Err(result) => return with_invalid(outcomes, result),
        },
    };
    outcomes.extend(done.outcomes);
    HopResult {
        outcomes,
        reach: if done.decided {
            Reach::Decided
        } else {
            Reach::Untouched {
                stalled: done.stalled,
            }
        },
    }
}

/// A session opened in a slot of the pool's budget, and its first transaction.
async fn open_and_run(
    cfg: &DeliveryContext,
    host: &str,
    addr: SocketAddr,
    sender: &str,
    recipients: &[String],
    message: &Stored,
) -> Result<(Pooled<Session>, Done), HopResult> {
    let Some(slot) = cfg.connections.slot(cfg.settings.timeout).await else {
        // Local, not the hop's fault: no other MX host is tried for it.
        return Err(HopResult {
            outcomes: all(
                recipients,
                Outcome::Temporary(format!(
                    "451 4.4.5 the relay's {} connections to next hops are all in use (max_connections)",
                    cfg.connections.limits().max_connections
                )),
            ),
            reach: Reach::Decided,
        });
    };
    let client = Client {
        hostname: &cfg.hostname,
        tls: &cfg.client_tls,
        policy: cfg.settings.tls,
        timeout: cfg.settings.timeout,
    };
    let session = Session::open(&client, host, addr)
        .await
        .map_err(|e| open_failed(e, recipients))?;
    cfg.connections.opened();
    let mut conn = Pooled {
        conn: session,
        uses: 0,
        slot,
    };
    let done = conn.conn.transaction(sender, recipients, message).await;
    Ok((conn, done))
}

/// Keeps `conn` in the pool if its transaction left it reusable.
fn finish(
    pool: &Connections,
    hop: (String, SocketAddr),
    mut conn: Pooled<Session>,
    done: Done,
) -> Done {
    conn.uses += 1;
    if done.reusable {
        pool.put_back(hop, conn);
    }
    done
}

fn with_invalid(mut outcomes: Vec<(String, Outcome)>, mut result: HopResult) -> HopResult {
    outcomes.append(&mut result.outcomes);
    result.outcomes = outcomes;
    result
}

/// Sender and recipients as spooled are canonical mailboxes (intake made
/// them so); one that is not never reaches the wire, where it could be
/// syntax. Returns the refusals and the recipients to send.
fn canonical(sender: &str, recipients: &[String]) -> (Vec<(String, Outcome)>, Vec<String>) {
    if !sender.is_empty() && crate::address::canonical(sender).is_err() {
        let refused = all(
            recipients,
            Outcome::Permanent("553 5.1.7 the queued sender is not a canonical mailbox".into()),
        );
        return (refused, Vec::new());
    }
    let (valid, invalid): (Vec<String>, Vec<String>) = recipients
        .iter()
        .cloned()
        .partition(|r| crate::address::canonical(r).is_ok());
    let refused = all(
        &invalid,
        Outcome::Permanent("553 5.1.3 the queued recipient is not a canonical mailbox".into()),
    );
    (refused, valid)
}

async fn resolve(host: &str, port: u16, timeout: Duration) -> Result<SocketAddr, HopError> {
    let lookup = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| HopError::Timeout)??;
    lookup.into_iter().next().ok_or_else(|| {
        HopError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host} has no address"),
        ))
    })
}

/// What a session that could not be opened means for `recipients`.
fn open_failed(e: OpenError, recipients: &[String]) -> HopResult {
    let (outcome, reach) = match e {
        OpenError::Hop(e) => return HopResult::untouched(recipients, &e),
        // A hop that refuses the session decided no recipient: the
        // next MX host is tried, as Postfix does (its answer stands if
        // it was the last).
        OpenError::Refused(r) => (reply_outcome(&r), Reach::Untouched { stalled: false }),
        OpenError::StartTls(r) => (
            Outcome::Temporary(format!(
                "451 4.7.0 the next hop refused STARTTLS: {}",
                text_of(&reply_outcome(&r))
            )),
            Reach::Untouched { stalled: false },
        ),
        OpenError::NoStartTls => (
            Outcome::Temporary(
                "451 4.7.5 the next hop does not offer STARTTLS, which [delivery] tls requires"
                    .into(),
            ),
            Reach::Untouched { stalled: false },
        ),
    };
    HopResult {
        outcomes: all(recipients, outcome),
        reach,
    }
}
