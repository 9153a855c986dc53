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
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::outcome::{all, hop_outcome, reply_outcome, text_of};
use super::pool::{Pool, Pooled, Reusable, Slot};
use super::transaction::{self, Done};
use super::wire::{HopError, Reply, Wire, capabilities};
use super::{DeliveryConfig, Outcome};
use crate::spool::Stored;

/// The connections to next hops, shared by every attempt.
pub type Connections = Pool<Session>;

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

/// Delivers to `host:port`; connection-level failures are temporary for all.
pub async fn deliver(
    cfg: &DeliveryConfig,
    host: &str,
    port: u16,
    sender: &str,
    recipients: &[String],
    message: &Stored,
) -> Vec<(String, Outcome)> {
    match resolve(host, port, cfg.timeout).await {
        Ok(addr) => {
            deliver_at(cfg, host, addr, sender, recipients, message)
                .await
                .outcomes
        }
        Err(e) => all(recipients, hop_outcome(&e)),
    }
}

/// Delivers to `host` at an address already resolved (MX delivery resolves
/// with its own resolver and tries each address); `host` is the name TLS
/// verifies. An idle connection to the same hop is reused when the pool has
/// a quiet one; a new one waits for room in the pool's budget.
pub async fn deliver_at(
    cfg: &DeliveryConfig,
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
    cfg: &DeliveryConfig,
    host: &str,
    addr: SocketAddr,
    sender: &str,
    recipients: &[String],
    message: &Stored,
) -> Result<(Pooled<Session>, Done), HopResult> {
    let Some(slot) = cfg.connections.slot(cfg.timeout).await else {
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
    let session = Session::open(cfg, host, addr)
        .await
        .map_err(|e| e.result(recipients))?;
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

/// An SMTP session with a next hop, after EHLO (and STARTTLS when offered).
pub struct Session {
    wire: Wire,
    offers: Offers,
}

impl Reusable for Session {
    fn is_quiet(&mut self) -> bool {
        self.wire.is_quiet()
    }

    fn retire(self, slot: Slot) {
        self.wire.retire(slot);
    }
}

/// What the next hop offered in its EHLO reply that changes how a
/// transaction is sent.
#[derive(Debug, Clone, Copy, Default)]
struct Offers {
    /// PIPELINING (RFC 2920): MAIL, RCPT and DATA go in one write, their
    /// replies come back together.
    pipelining: bool,
    /// 8BITMIME (RFC 6152): a body with bytes past US-ASCII is announced
    /// with `BODY=8BITMIME`. To a hop without it such a body goes as it is,
    /// unconverted, as most MTAs send it.
    eight_bit_mime: bool,
    starttls: bool,
}

impl Offers {
    fn of(ehlo: &Reply) -> Offers {
        let caps = capabilities(ehlo);
        let has = |k: &str| caps.iter().any(|c| c == k);
        Offers {
            pipelining: has("PIPELINING"),
            eight_bit_mime: has("8BITMIME"),
            starttls: has("STARTTLS"),
        }
    }

    /// MAIL's parameters for `message`: only what the relay itself decides
    /// (none the client gave can reach the next hop).
    fn mail_parameters(&self, message: &Stored) -> &'static str {
        if self.eight_bit_mime && message.eight_bit() {
            " BODY=8BITMIME"
        } else {
            ""
        }
    }
}

/// Why a session could not be opened.
enum OpenError {
    Hop(HopError),
    /// The greeting or EHLO was a refusal: the hop's answer.
    Refused(Reply),
    /// STARTTLS was offered and then refused.
    StartTls(Reply),
    /// `[delivery] tls` requires STARTTLS and the hop does not offer it.
    NoStartTls,
}

impl From<HopError> for OpenError {
    fn from(e: HopError) -> Self {
        OpenError::Hop(e)
    }
}

impl OpenError {
    fn result(self, recipients: &[String]) -> HopResult {
        let (outcome, reach) = match self {
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
}

impl Session {
    /// One transaction on this session.
    async fn transaction(&mut self, sender: &str, recipients: &[String], message: &Stored) -> Done {
        let parameters = self.offers.mail_parameters(message);
        let pipelining = self.offers.pipelining;
        transaction::run(
            &mut self.wire,
            pipelining,
            parameters,
            sender,
            recipients,
            message,
        )
        .await
    }

    async fn open(
        cfg: &DeliveryConfig,
        host: &str,
        addr: SocketAddr,
    ) -> Result<Session, OpenError> {
        let tcp = tokio::time::timeout(cfg.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| HopError::Timeout)?
            .map_err(HopError::Io)?;
        // Without TCP_NODELAY, the small last write of a message (".\r\n")
        // waits for the ACK of the body, which the next hop delays by up to
        // 40 ms: that alone capped delivery at ~25 messages/s per connection.
        tcp.set_nodelay(true).map_err(HopError::Io)?;
        let socket = tcp.as_raw_fd();
        let mut wire = Wire::new(tcp, socket, cfg.timeout);
        let greeting = wire.reply().await?;
        wire.in_step()?;
        if greeting.code != 220 {
            return Err(OpenError::Refused(greeting));
        }
        let offers = hello(&mut wire, &cfg.hostname).await?;
        if offers.starttls {
            let reply = wire.command(b"STARTTLS\r\n").await?;
            if reply.code != 220 {
                return Err(OpenError::StartTls(reply));
            }
            // Nothing may follow the 220 in clear text (RFC 3207).
            wire.in_step()?;
            let stream = wire.into_stream()?;
            let name = rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
                HopError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?;
            let connector = TlsConnector::from(cfg.tls.clone());
            let tls = tokio::time::timeout(cfg.timeout, connector.connect(name, stream))
                .await
                .map_err(|_| HopError::Timeout)?
                .map_err(HopError::Tls)?;
            let mut wire = Wire::new(tls, socket, cfg.timeout);
            // Only what the hop says after STARTTLS counts (RFC 3207).
            let offers = hello(&mut wire, &cfg.hostname).await?;
            Ok(Session { wire, offers })
        } else if cfg.tls_policy.requires_tls() {
            // Nothing goes in clear text to a hop the operator wants
            // encrypted: a stripped STARTTLS is a temporary failure.
            wire.quit().await;
            Err(OpenError::NoStartTls)
        } else {
            Ok(Session { wire, offers })
        }
    }
}

/// EHLO, or HELO from a hop that refuses EHLO (RFC 5321 3.2): what it
/// offers. A reply followed by anything unasked ends the session.
async fn hello(wire: &mut Wire, hostname: &str) -> Result<Offers, OpenError> {
    let ehlo = wire
        .command(format!("EHLO {hostname}\r\n").as_bytes())
        .await?;
    wire.in_step()?;
    if ehlo.code == 250 {
        return Ok(Offers::of(&ehlo));
    }
    if ehlo.code >= 500 && ehlo.code != 554 {
        let helo = wire
            .command(format!("HELO {hostname}\r\n").as_bytes())
            .await?;
        wire.in_step()?;
        if helo.code == 250 {
            return Ok(Offers::default());
        }
        return Err(OpenError::Refused(helo));
    }
    Err(OpenError::Refused(ehlo))
}
