//! One delivery attempt of one message, step by step: open the spooled
//! body (checked), deliver to the next hop, record each recipient's
//! outcome, expire what waited too long, report what failed in this
//! attempt (a DSN at once, not when the last recipient is final), then
//! either wait for the next attempt or remove the message.

use std::time::Duration;

use tracing::{info, warn};

use super::context::DeliveryContext;
use super::outcome::Outcome;
use super::routes::Via;
use super::settings::NextHop;
use super::{directory, dsn, mx, smtp};
use crate::clock::now;
use crate::spool::{Envelope, Recipient, RecipientState, Spool, Stored};

/// The backoff after `attempts` failed attempts: initial × 2^(attempts-1), capped.
pub fn backoff(cfg: &DeliveryContext, attempts: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempts.saturating_sub(1).min(20))
        .unwrap_or(u32::MAX);
    cfg.settings
        .retry_initial
        .saturating_mul(factor)
        .min(cfg.settings.retry_max)
}

/// One delivery attempt. Returns the envelopes to queue again: this one if
/// recipients remain, and any DSN it generated.
pub async fn attempt(spool: &Spool, cfg: &DeliveryContext, envelope: Envelope) -> Vec<Envelope> {
    let (mut envelope, message) = match open(spool, cfg, envelope).await {
        Ok(opened) => opened,
        Err(requeued) => return requeued,
    };
    envelope.attempts += 1;
    // After a DSN that could not be spooled, only the report is left to do.
    if envelope.pending().next().is_some() {
        let results = deliver(cfg, &envelope, &message).await;
        record(cfg, &mut envelope, &results);
    }
    expire(cfg, &mut envelope);
    let mut next = Vec::new();
    let reported = match report(spool, cfg, &mut envelope, &message, &mut next).await {
        Ok(()) => true,
        Err(e) => {
            // Kept until the bounce is safely spooled. (The retry asks the
            // limiter again: a disk failure can spend a domain's
            // allowance, never exceed it.)
            warn!(target: "attrelay::delivery", queue_id = %envelope.id, error = %e, "cannot spool the DSN; will retry");
            false
        }
    };
    let pending = envelope.pending().next().is_some();
    if pending && reported {
        warn_if_delayed(spool, cfg, &mut envelope, &message, &mut next).await;
    }
    if !pending && reported {
        spool.remove(&envelope).await;
        return next;
    }
    let wait = if pending && reported {
        backoff(cfg, envelope.attempts)
    } else {
        cfg.settings.retry_initial
    };
    envelope.next_attempt = now() + wait.as_secs() as i64;
    if let Err(e) = spool.update(&envelope) {
        warn!(target: "attrelay::delivery", queue_id = %envelope.id, error = %e, "cannot update the envelope");
    }
    next.push(envelope);
    next
}

/// An operator's bounce (`attrelay queue bounce`): every pending
/// recipient fails now with `reason`, reported in a DSN at once as an
/// attempt's failures are, and the message leaves the queue. `Ok` holds
/// what to queue: the DSN, and the envelope too if the DSN could not be
/// spooled (the next attempt sends it). `Err`: the message could not be
/// read (set aside if damaged), with what stays queued.
pub async fn return_to_sender(
    spool: &Spool,
    cfg: &DeliveryContext,
    mut envelope: Envelope,
    reason: &str,
) -> Result<Vec<Envelope>, (String, Vec<Envelope>)> {
    let message = match spool.open_checked(&envelope).await {
        Ok(m) => m,
        Err(e) if e.is_corrupt() => return Err((e.to_string(), Vec::new())),
        Err(e) => return Err((e.to_string(), vec![envelope])),
    };
    let reply = format!(
        "550 5.0.0 Returned to the sender by the operator of {}: {reason}",
        cfg.hostname
    );
    for r in envelope
        .recipients
        .iter_mut()
        .filter(|r| r.state == RecipientState::Pending)
    {
        r.state = RecipientState::Failed {
            reply: reply.clone(),
            reported: false,
        };
    }
    let mut next = Vec::new();
    if let Err(e) = report(spool, cfg, &mut envelope, &message, &mut next).await {
        warn!(target: "attrelay::delivery", queue_id = %envelope.id, error = %e, "cannot spool the DSN; will retry");
        envelope.next_attempt = now() + cfg.settings.retry_initial.as_secs() as i64;
        if let Err(e) = spool.update(&envelope) {
            warn!(target: "attrelay::delivery", queue_id = %envelope.id, error = %e, "cannot update the envelope");
        }
        next.push(envelope);
        return Ok(next);
    }
    // Failed and reported on disk before it goes: should the removal not
    // last (a crash, a disk error), the message comes back with nothing
    // left to deliver, never delivered after its sender heard it was not.
    if let Err(e) = spool.update(&envelope) {
        warn!(target: "attrelay::delivery", queue_id = %envelope.id, error = %e, "cannot update the envelope");
    }
    spool.remove(&envelope).await;
    Ok(next)
}

/// The spooled message, checked. `Err`: what to queue again — nothing for
/// a damaged message (set aside, never delivered), the envelope after
/// `retry_max` for one that cannot be read now.
async fn open(
    spool: &Spool,
    cfg: &DeliveryContext,
    mut envelope: Envelope,
) -> Result<(Envelope, Stored), Vec<Envelope>> {
    match spool.open_checked(&envelope).await {
        Ok(m) => Ok((envelope, m)),
        Err(e @ crate::spool::SpoolError::Corrupt { .. }) => {
            tracing::error!(target: "attrelay::delivery", queue_id = %envelope.id, error = %e, "spooled message is damaged");
            cfg.metrics.spool_set_aside.inc();
            Err(Vec::new())
        }
        Err(e) => {
            warn!(target: "attrelay::delivery", queue_id = %envelope.id, error = %e, "cannot read spooled message; will retry");
            envelope.next_attempt = now() + cfg.settings.retry_max.as_secs() as i64;
            Err(vec![envelope])
        }
    }
}

/// Each pending recipient's outcome and the next hop that gave it, within
/// the attempt's deadline: a next hop that accepts and then stalls at every
/// step cannot hold a delivery slot for long. Recipients are delivered by
/// their domain's route (`routes.rs`, read now: a reload applies to mail
/// already queued), the rest by `[delivery]`'s next hop; the routes side by
/// side, so that one whose hosts stall delays no other.
async fn deliver(
    cfg: &DeliveryContext,
    envelope: &Envelope,
    message: &Stored,
) -> Vec<(String, Outcome, String)> {
    let pending: Vec<String> = envelope.pending().map(|r| r.address.clone()).collect();
    let deadline = tokio::time::Instant::now() + cfg.settings.attempt_timeout;
    let routes = cfg.routes.load_full();
    // Built before they run (see `mx::deliver`: a lazy map over borrowed
    // groups is not a future the compiler can prove `Send`).
    let shares: Vec<_> = routes
        .split(&pending)
        .into_iter()
        .map(|(route, rcpts)| {
            deliver_group(
                cfg,
                route.map(|r| r.via.clone()),
                envelope,
                rcpts,
                message,
                deadline,
            )
        })
        .collect();
    futures_util::future::join_all(shares)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// One route's recipients: by `via`, or by `[delivery]` for `None`.
async fn deliver_group(
    cfg: &DeliveryContext,
    via: Option<Via>,
    envelope: &Envelope,
    rcpts: Vec<String>,
    message: &Stored,
    deadline: tokio::time::Instant,
) -> Vec<(String, Outcome, String)> {
    let via = match (via, &cfg.settings.next_hop) {
        (Some(via), _) => via,
        (None, NextHop::Directory(dir)) => {
            return directory::deliver(dir, envelope, &rcpts, message)
                .await
                .into_iter()
                .map(|(r, o)| (r, o, format!("dir:{}", dir.display())))
                .collect();
        }
        (None, NextHop::Smarthost { host, port }) => Via::Hosts(vec![(host.clone(), *port)]),
        (None, NextHop::Mx) => Via::Mx,
    };
    match via {
        Via::Mx => mx::deliver(cfg, &envelope.sender, &rcpts, message, deadline).await,
        Via::Hosts(hosts) => {
            smtp::deliver_hosts(cfg, &hosts, &envelope.sender, &rcpts, message, deadline).await
        }
    }
}

/// Logs and counts each outcome, and writes it into the recipient's state
/// (a temporary one as the envelope's last error).
fn record(cfg: &DeliveryContext, envelope: &mut Envelope, results: &[(String, Outcome, String)]) {
    for (rcpt, outcome, hop) in results {
        let (result, reply) = match outcome {
            Outcome::Delivered(r) => ("delivered", r),
            Outcome::Temporary(r) => ("deferred", r),
            Outcome::Permanent(r) => ("failed", r),
        };
        info!(
            target: "attrelay::delivery",
            queue_id = %envelope.id,
            attempt = envelope.attempts,
            delay_secs = now() - envelope.received_at,
            recipient = ?rcpt,
            relay = %hop,
            tenant = envelope.tenant.as_deref().unwrap_or("-"),
            result,
            reply = ?reply,
            "delivery attempt"
        );
        crate::metrics::Metrics::outcome(&cfg.metrics.deliveries, result);
        let Some(r) = envelope
            .recipients
            .iter_mut()
            .find(|r| &r.address == rcpt && r.state == RecipientState::Pending)
        else {
            continue;
        };
        match outcome {
            Outcome::Delivered(reply) => {
                r.state = RecipientState::Delivered {
                    reply: reply.clone(),
                }
            }
            Outcome::Permanent(reply) => {
                r.state = RecipientState::Failed {
                    reply: reply.clone(),
                    reported: false,
                }
            }
            Outcome::Temporary(reply) => envelope.last_error = Some(reply.clone()),
        }
    }
}

/// A message older than `max_queue_age`: its pending recipients fail, with
/// the last error.
fn expire(cfg: &DeliveryContext, envelope: &mut Envelope) {
    if envelope.age(now()) <= cfg.settings.max_queue_age.as_secs() as i64 {
        return;
    }
    let age = cfg.settings.max_queue_age.as_secs() / 3600;
    let last = envelope.last_error.clone().unwrap_or_default();
    for r in envelope
        .recipients
        .iter_mut()
        .filter(|r| r.state == RecipientState::Pending)
    {
        r.state = RecipientState::Failed {
            reply: format!(
                "554 4.4.7 Message expired after {age} hours in the queue; last error: {last}"
            ),
            reported: false,
        };
    }
}

/// Tells the sender of the recipients that failed since the last report:
/// a DSN for them (into `next`, to be queued), or none where none is due
/// (the null sender, a DSN, the backscatter limit); either way they are
/// marked reported. `Err`: the DSN could not be spooled, and they stay
/// unreported for the next try.
async fn report(
    spool: &Spool,
    cfg: &DeliveryContext,
    envelope: &mut Envelope,
    message: &Stored,
    next: &mut Vec<Envelope>,
) -> Result<(), String> {
    if !envelope
        .recipients
        .iter()
        .any(|r| r.state.unreported_failure())
    {
        return Ok(());
    }
    match bounce(cfg, envelope) {
        Bounce::Send(returned) => {
            // What a DSN can carry back: the header section, bounded.
            let original = message
                .prefix(dsn::MAX_RETURNED_HEADERS + 4)
                .await
                .map_err(|e| format!("the spooled message could not be read: {e}"))?;
            let d = make_dsn(
                spool,
                cfg,
                envelope,
                &original,
                returned,
                dsn::Notice::Failed,
            )
            .await
            .map_err(|e| e.to_string())?;
            next.push(d);
        }
        Bounce::Never => {
            info!(target: "attrelay::delivery", queue_id = %envelope.id, "failed recipients of a message with a null sender: no DSN");
        }
        Bounce::Suppressed => {
            info!(
                target: "attrelay::delivery",
                queue_id = %envelope.id,
                sender = ?envelope.sender,
                suppressed_total = cfg.dsn_limiter.suppressed(),
                "DSN suppressed: unauthenticated sender whose domain has used up its DSNs for the hour (dsn_rate_per_domain_per_hour)"
            );
        }
    }
    for r in &mut envelope.recipients {
        if let RecipientState::Failed { reported, .. } = &mut r.state {
            *reported = true;
        }
    }
    Ok(())
}

/// Tells the sender, once, that `envelope` is still being retried after
/// `[delivery] delay_warning_secs`, within the same limits as a bounce. A
/// DSN that cannot be spooled now is tried again at the next attempt.
async fn warn_if_delayed(
    spool: &Spool,
    cfg: &DeliveryContext,
    envelope: &mut Envelope,
    message: &Stored,
    next: &mut Vec<Envelope>,
) {
    let after = cfg.settings.delay_warning.as_secs() as i64;
    if envelope.delay_warned || after == 0 || envelope.age(now()) < after {
        return;
    }
    if let Bounce::Send(returned) = bounce(cfg, envelope) {
        let original = match message.prefix(dsn::MAX_RETURNED_HEADERS + 4).await {
            Ok(o) => o,
            Err(e) => {
                warn!(target: "attrelay::delivery", queue_id = %envelope.id, error = %e, "cannot read the message for its delay warning; will retry");
                return;
            }
        };
        match make_dsn(
            spool,
            cfg,
            envelope,
            &original,
            returned,
            dsn::Notice::Delayed,
        )
        .await
        {
            Ok(d) => next.push(d),
            Err(e) => {
                warn!(target: "attrelay::delivery", queue_id = %envelope.id, error = %e, "cannot spool the delay warning; will retry");
                return;
            }
        }
    }
    envelope.delay_warned = true;
}

/// What the sender of a message with newly failed recipients gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bounce {
    /// A DSN returning what [`dsn::Returned`] allows of the message.
    Send(dsn::Returned),
    /// No DSN, ever: the null sender, or a DSN itself (RFC 5321 4.5.5 and
    /// 6.1: notifications go out with the null sender so that none is ever
    /// answered with another).
    Never,
    /// None: the sender was not authenticated and its domain has had its
    /// DSNs for the hour (backscatter).
    Suppressed,
}

/// Decides the bounce of `envelope`. Authenticated senders (a tenant's own
/// mail) get their header section back, unlimited; any other sender may be
/// forged, so gets the status only, within its domain's hourly allowance,
/// which this call spends.
fn bounce(cfg: &DeliveryContext, envelope: &Envelope) -> Bounce {
    if envelope.sender.is_empty() || envelope.is_dsn {
        Bounce::Never
    } else if envelope.authenticated {
        Bounce::Send(dsn::Returned::Headers)
    } else if cfg.dsn_limiter.allow(&envelope.sender) {
        Bounce::Send(dsn::Returned::StatusOnly)
    } else {
        Bounce::Suppressed
    }
}

async fn make_dsn(
    spool: &Spool,
    cfg: &DeliveryContext,
    original: &Envelope,
    message: &[u8],
    returned: dsn::Returned,
    notice: dsn::Notice,
) -> Result<Envelope, crate::spool::SpoolError> {
    let id = spool.new_id();
    let id_text = id.to_string();
    let date = crate::intake::rfc2822_now();
    // No X-Attributed-Tenant: a DSN goes to a reverse-path anyone can
    // forge, possibly another tenant's address, and must not carry one
    // tenant's attribution to another.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&dsn::build(
        &cfg.hostname,
        original,
        message,
        returned,
        notice,
        id.as_str(),
        &date,
    ));
    let to_sender = vec![Recipient {
        address: original.sender.clone(),
        state: RecipientState::Pending,
    }];
    // No tenant (the reverse-path may be anyone's) and not authenticated
    // (ours, not the sender's); and a DSN is never bounced.
    let envelope = Envelope {
        is_dsn: true,
        ..Envelope::new(id, String::new(), to_sender)
    };
    let mut queued = None;
    crate::intake::accept(
        spool,
        crate::intake::Message {
            envelopes: vec![envelope],
            message_id: Some(format!("<{id_text}@{}>", cfg.hostname)),
            body: spool.body_of(&bytes),
        },
        |e| queued = Some(e),
    )
    .await?;
    let envelope = queued.expect("accept hands over every copy it stored");
    info!(target: "attrelay::delivery", queue_id = %envelope.id, original = %original.id, to = ?original.sender, returned = ?returned, notice = ?notice, "DSN queued");
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::super::settings::DeliverySettings;
    use super::*;
    use crate::spool::SpoolId;
    use std::sync::Arc;

    fn config(target: NextHop, dsn_rate_per_domain_per_hour: u32) -> DeliveryContext {
        let settings = DeliverySettings {
            next_hop: target,
            max_queue_age: Duration::from_secs(86400),
            concurrency: 1,
            timeout: Duration::from_secs(1),
            dsn_rate_per_domain_per_hour,
            // A resolver of its own: the tests read no /etc/resolv.conf.
            dns_servers: vec!["127.0.0.1:53".parse().unwrap()],
            ..DeliverySettings::default()
        };
        let metrics = Arc::new(crate::metrics::Metrics::new());
        DeliveryContext::new(&settings, "h", Duration::from_secs(1), &metrics).unwrap()
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let cfg = config(NextHop::Mx, 10);
        let secs: Vec<u64> = (1..=8).map(|a| backoff(&cfg, a).as_secs()).collect();
        assert_eq!(secs, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(&cfg, 1000).as_secs(), 3600);
    }

    fn envelope(sender: &str, authenticated: bool, is_dsn: bool) -> Envelope {
        let failed = vec![Recipient {
            address: "nobody@contoso.com".into(),
            state: RecipientState::Failed {
                reply: "550 5.1.1 User unknown".into(),
                reported: false,
            },
        }];
        Envelope {
            tenant: Some("contoso".into()),
            attempts: 1,
            is_dsn,
            client: "192.0.2.1".into(),
            authenticated,
            ..Envelope::new(SpoolId::default(), sender.into(), failed)
        }
    }

    #[test]
    fn bounces_of_unauthenticated_senders_are_status_only_and_limited() {
        let cfg = config(NextHop::Mx, 2);
        let forged = envelope("victim@forged.example", false, false);
        let returned = |e: &Envelope| bounce(&cfg, e);
        assert_eq!(returned(&forged), Bounce::Send(dsn::Returned::StatusOnly));
        assert_eq!(returned(&forged), Bounce::Send(dsn::Returned::StatusOnly));
        assert_eq!(returned(&forged), Bounce::Suppressed);
        // Another domain has its own allowance.
        let other = envelope("someone@other.example", false, false);
        assert_eq!(returned(&other), Bounce::Send(dsn::Returned::StatusOnly));
        // A tenant's own mail: headers, and no limit.
        let tenant = envelope("john@forged.example", true, false);
        for _ in 0..5 {
            assert_eq!(returned(&tenant), Bounce::Send(dsn::Returned::Headers));
        }
        assert_eq!(returned(&envelope("", true, false)), Bounce::Never);
        assert_eq!(returned(&envelope("", false, false)), Bounce::Never);
        assert_eq!(
            returned(&envelope("a@b.example", true, true)),
            Bounce::Never
        );
        assert_eq!(cfg.dsn_limiter.suppressed(), 1);

        let none = config(NextHop::Mx, 0);
        assert_eq!(bounce(&none, &forged), Bounce::Suppressed);
        assert_eq!(bounce(&none, &tenant), Bounce::Send(dsn::Returned::Headers));
    }

    /// A next hop that refuses connections: every attempt is a temporary
    /// failure, and a message past the queue age then bounces.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// Spools a message past the queue age for `nobody@contoso.com` and
    /// runs one attempt: what comes back is its DSN, if any.
    async fn expire(
        spool: &Spool,
        cfg: &DeliveryContext,
        sender: &str,
        auth: bool,
    ) -> Vec<Envelope> {
        let mut e = envelope(sender, auth, false);
        e.id = spool.new_id();
        e.received_at = 0;
        e.recipients[0].state = RecipientState::Pending;
        let message = b"Subject: BUY NOW at attacker.example\r\nFrom: x\r\n\r\nattacker body\r\n";
        spool.store(&mut e, message).unwrap();
        attempt(spool, cfg, e).await
    }

    #[tokio::test]
    async fn an_expired_message_bounces_by_the_sender_policy() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let target = NextHop::Smarthost {
            host: "127.0.0.1".into(),
            port: closed_port(),
        };
        let cfg = config(target, 1);

        let forged = expire(&spool, &cfg, "victim@forged.example", false).await;
        assert_eq!(forged.len(), 1, "one DSN: {forged:?}");
        assert!(forged[0].is_dsn);
        assert_eq!(forged[0].recipients[0].address, "victim@forged.example");
        let text = String::from_utf8(spool.read_checked(&forged[0]).unwrap()).unwrap();
        assert!(text.contains("Status: 4.4.7"), "{text}");
        assert!(
            !text.contains("attacker"),
            "nothing of the original: {text}"
        );
        assert!(!text.contains("text/rfc822-headers"), "{text}");

        // The domain's allowance is spent: the next bounce is suppressed,
        // and the original leaves the spool all the same.
        assert!(
            expire(&spool, &cfg, "other@forged.example", false)
                .await
                .is_empty()
        );
        assert_eq!(spool.len(), 1, "only the first DSN is queued");

        let own = expire(&spool, &cfg, "john@contoso.com", true).await;
        assert_eq!(own.len(), 1);
        let text = String::from_utf8(spool.read_checked(&own[0]).unwrap()).unwrap();
        assert!(text.contains("Content-Type: text/rfc822-headers"), "{text}");
        assert!(
            text.contains("Subject: BUY NOW at attacker.example"),
            "{text}"
        );
        assert!(!text.contains("attacker body"), "never the body: {text}");
    }
}
