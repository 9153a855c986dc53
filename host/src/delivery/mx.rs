//! Delivery by DNS: each recipient domain's MX hosts in preference order
//! (RFC 5321 5.1), the domain itself when it has no MX, and a permanent
//! failure for a null MX (RFC 7505).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::rdata::MX;

use futures_util::StreamExt as _;

use super::context::DeliveryContext;
use super::outcome::Outcome;
use super::smtp;
use super::smtp::Reach;

/// Domains of one message delivered at once. Each holds a connection (and
/// a DNS query) while it runs, so a message to hundreds of domains takes
/// its share of the connection budget in turns instead of all at once.
pub const DOMAINS_AT_ONCE: usize = 8;

/// MX hosts in the order to try them: lowest preference first; `None` for a
/// null MX (the domain accepts no mail).
pub fn order_hosts(records: &[(u16, String)]) -> Option<Vec<String>> {
    if records.len() == 1 && records[0].1.trim_end_matches('.').is_empty() {
        return None;
    }
    let mut sorted = records.to_vec();
    sorted.sort_by_key(|(pref, _)| *pref);
    Some(
        sorted
            .into_iter()
            .map(|(_, h)| h.trim_end_matches('.').to_string())
            .filter(|h| !h.is_empty())
            .collect(),
    )
}

/// Where a domain's mail goes, per DNS.
enum Route {
    Hosts(Vec<String>),
    /// A reply for every recipient of the domain, without trying any host.
    Fail(Outcome),
}

async fn route(resolver: &TokioResolver, domain: &str) -> Route {
    // A trailing dot: the domain is absolute, whatever the resolver's options.
    match resolver.mx_lookup(format!("{domain}.")).await {
        Ok(lookup) => {
            let records: Vec<(u16, String)> = lookup
                .iter()
                .map(|mx: &MX| (mx.preference(), mx.exchange().to_utf8()))
                .collect();
            if records.is_empty() {
                return Route::Hosts(vec![domain.to_string()]);
            }
            match order_hosts(&records) {
                Some(h) => Route::Hosts(h),
                None => Route::Fail(Outcome::Permanent(format!(
                    "556 5.1.10 {domain} does not accept mail (null MX)"
                ))),
            }
        }
        Err(e) if e.is_nx_domain() => Route::Fail(Outcome::Permanent(format!(
            "550 5.1.2 {domain}: no such domain"
        ))),
        // No MX: the domain itself is the implicit MX (RFC 5321 5.1).
        Err(e) if e.is_no_records_found() => Route::Hosts(vec![domain.to_string()]),
        Err(e) => Route::Fail(Outcome::Temporary(format!(
            "451 4.4.3 MX lookup for {domain} failed: {e}"
        ))),
    }
}

/// A host's addresses, IPv4 first (the order our resolver returns them).
async fn addresses(
    resolver: &TokioResolver,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, String> {
    match resolver.lookup_ip(format!("{host}.")).await {
        Ok(l) => Ok(l.iter().map(|ip| SocketAddr::new(ip, port)).collect()),
        Err(e) => Err(format!("{host}: {e}")),
    }
}

/// The same outcome for every recipient, reached without talking to a host.
fn every(recipients: &[String], outcome: Outcome) -> Vec<(String, Outcome, String)> {
    recipients
        .iter()
        .map(|r| (r.clone(), outcome.clone(), "mx".to_string()))
        .collect()
}

/// Delivers each recipient domain's share to its MX hosts, the domains side
/// by side: a domain whose hosts stall delays no other. Each domain's share
/// ends by `deadline` (its recipients still pending are then deferred).
pub async fn deliver(
    cfg: &DeliveryContext,
    sender: &str,
    recipients: &[String],
    message: &crate::spool::Stored,
    deadline: tokio::time::Instant,
) -> Vec<(String, Outcome, String)> {
    let mut by_domain: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in recipients {
        let domain = r
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        by_domain.entry(domain).or_default().push(r.clone());
    }
    let Some(resolver) = cfg.resolver.as_deref() else {
        return every(
            recipients,
            Outcome::Temporary("451 4.4.3 no DNS resolver configured for MX delivery".into()),
        );
    };
    // Built before they run: a lazy map over borrowed domains is not a
    // future the compiler can prove `Send` for every lifetime.
    let shares: Vec<_> = by_domain
        .iter()
        .map(|(domain, rcpts)| async move {
            let share = deliver_domain(cfg, resolver, domain, sender, rcpts, message);
            tokio::time::timeout_at(deadline, share)
                .await
                .unwrap_or_else(|_| {
                    every(
                        rcpts,
                        super::outcome::attempt_timed_out(cfg.settings.attempt_timeout),
                    )
                })
        })
        .collect();
    futures_util::stream::iter(shares)
        .buffer_unordered(DOMAINS_AT_ONCE)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// One domain's share: every address of every MX host in preference order
/// until one answers, within the attempt's limits — at most
/// `mx_address_limit` addresses, and at most `mx_session_limit` that took
/// the connection and then timed out (Postfix's `smtp_mx_address_limit` and
/// `smtp_mx_session_limit`): forty stalling MX hosts cost two timeouts, not
/// forty.
async fn deliver_domain(
    cfg: &DeliveryContext,
    resolver: &TokioResolver,
    domain: &str,
    sender: &str,
    rcpts: &[String],
    message: &crate::spool::Stored,
) -> Vec<(String, Outcome, String)> {
    let hosts = match route(resolver, domain).await {
        Route::Hosts(h) => h,
        Route::Fail(o) => return every(rcpts, o),
    };
    let mut last: Option<Vec<(String, Outcome, String)>> = None;
    let mut problems = Vec::new();
    let (mut addresses_tried, mut sessions) = (0, 0);
    'hosts: for host in &hosts {
        let addrs = match addresses(resolver, host, cfg.settings.mx_port).await {
            Ok(a) => a,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        for addr in addrs {
            if addresses_tried >= cfg.settings.mx_address_limit
                || sessions >= cfg.settings.mx_session_limit
            {
                problems.push(format!(
                    "gave up after {addresses_tried} addresses ({sessions} stalled sessions)"
                ));
                break 'hosts;
            }
            addresses_tried += 1;
            let hop = smtp::deliver_at(cfg, host, addr, sender, rcpts, message).await;
            // Any reply that decided a recipient, or a message the hop may
            // have, ends the search; only a hop that could not be talked
            // to at all sends it on (RFC 5321 5.1).
            let done = match hop.reach {
                Reach::Decided => true,
                Reach::Untouched { stalled } => {
                    sessions += usize::from(stalled);
                    false
                }
            };
            last = Some(
                hop.outcomes
                    .into_iter()
                    .map(|(r, o)| (r, o, format!("{host}[{}]:{}", addr.ip(), addr.port())))
                    .collect(),
            );
            if done {
                break 'hosts;
            }
        }
    }
    last.unwrap_or_else(|| {
        every(
            rcpts,
            Outcome::Temporary(format!(
                "451 4.4.4 no address for any MX host of {domain}: {}",
                problems.join("; ")
            )),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_order_and_null_mx() {
        let recs = vec![
            (20, "mx2.example.".to_string()),
            (10, "mx1.example.".to_string()),
        ];
        assert_eq!(order_hosts(&recs).unwrap(), ["mx1.example", "mx2.example"]);
        assert_eq!(order_hosts(&[(0, ".".to_string())]), None);
    }
}
