//! Delivery to an SMTP next hop with mail-send: STARTTLS when offered (with
//! our client certificate if configured), then one transaction with a result
//! per recipient.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mail_send::smtp::AssertReply;
use mail_send::smtp::message::Parameters;
use mail_send::{Error as SendError, SmtpClient};
use smtp_proto::{EXT_PIPELINING, EXT_START_TLS};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{DeliveryConfig, Outcome};

/// The outcome an error means for a recipient: a 5xx reply is permanent,
/// anything else (4xx, timeouts, connection failures) temporary.
fn outcome_of(e: &SendError) -> Outcome {
    match e {
        SendError::UnexpectedReply(r) | SendError::AuthenticationFailed(r) => {
            let esc = if r.esc[0] > 0 {
                format!("{}.{}.{} ", r.esc[0], r.esc[1], r.esc[2])
            } else {
                String::new()
            };
            let text: String = r
                .message
                .chars()
                .filter(|c| !c.is_control())
                .take(300)
                .collect();
            let text = format!("{} {esc}{text}", r.code);
            if r.code >= 500 {
                Outcome::Permanent(text)
            } else {
                Outcome::Temporary(text)
            }
        }
        SendError::Timeout => {
            Outcome::Temporary("451 4.4.1 timeout talking to the next hop".into())
        }
        SendError::MissingStartTls => Outcome::Temporary(
            "451 4.7.5 the next hop does not offer STARTTLS, which [delivery] tls requires".into(),
        ),
        other => Outcome::Temporary(format!("451 4.4.0 {other:?}").chars().take(300).collect()),
    }
}

/// The same outcome for each of `recipients`.
pub(crate) fn all(recipients: &[String], outcome: Outcome) -> Vec<(String, Outcome)> {
    recipients
        .iter()
        .map(|r| (r.clone(), outcome.clone()))
        .collect()
}

/// Delivers to `host:port`; connection-level failures are temporary for all.
pub async fn deliver(
    cfg: &DeliveryConfig,
    host: &str,
    port: u16,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Vec<(String, Outcome)> {
    match resolve(host, port, cfg.timeout).await {
        Ok(addr) => deliver_at(cfg, host, addr, sender, recipients, message).await,
        Err(e) => all(recipients, outcome_of(&e)),
    }
}

/// Delivers to `host` at an address already resolved (MX delivery resolves
/// with its own resolver and tries each address); `host` is the name TLS
/// verifies. An idle connection to the same next hop is reused when there is
/// one (see [`ConnectionCache`]).
pub async fn deliver_at(
    cfg: &DeliveryConfig,
    host: &str,
    addr: SocketAddr,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Vec<(String, Outcome)> {
    let key = (host.to_ascii_lowercase(), addr);
    if let Some(mut conn) = cfg.connections.take(&key) {
        match conn.transaction(sender, recipients, message).await {
            Ok(results) => {
                cfg.connections.put_back(key, conn).await;
                return results;
            }
            // The next hop closed the idle connection (its timeout, a
            // restart; or said so with 421), or still holds a transaction
            // open (503 to MAIL): nothing was accepted, so a fresh
            // connection is no duplicate. Any other reply to MAIL FROM is an
            // answer, not staleness.
            Err(SendError::UnexpectedReply(r)) if r.code != 421 && r.code != 503 => {
                conn.quit().await;
                return all(recipients, outcome_of(&SendError::UnexpectedReply(r)));
            }
            Err(_) => {}
        }
    }
    let mut conn = match Connection::open(cfg, host, addr).await {
        Ok(c) => c,
        Err(e) => return all(recipients, outcome_of(&e)),
    };
    match conn.transaction(sender, recipients, message).await {
        Ok(results) => {
            cfg.connections.put_back(key, conn).await;
            results
        }
        Err(e) => {
            conn.quit().await;
            all(recipients, outcome_of(&e))
        }
    }
}

/// `step` within `limit`, a timeout being [`SendError::Timeout`].
async fn within<T>(
    limit: Duration,
    step: impl std::future::Future<Output = Result<T, SendError>>,
) -> Result<T, SendError> {
    tokio::time::timeout(limit, step)
        .await
        .map_err(|_| SendError::Timeout)?
}

async fn resolve(host: &str, port: u16, timeout: Duration) -> Result<SocketAddr, SendError> {
    let lookup = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| SendError::Timeout)?
        .map_err(SendError::Io)?;
    lookup.into_iter().next().ok_or_else(|| {
        SendError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host} has no address"),
        ))
    })
}

/// An SMTP session with a next hop, after EHLO (and STARTTLS when offered),
/// with the number of transactions it has carried.
struct Connection {
    client: Client,
    uses: u32,
    /// The last transaction ended with a reply from the next hop (to the
    /// end of data, or to RSET): the connection may carry another at once,
    /// without a RSET round trip. Not after an I/O error or a timeout,
    /// where the next hop's state is unknown.
    clean: bool,
    /// The next hop offered PIPELINING (RFC 2920): MAIL, RCPT and DATA go
    /// in one write, their replies come back together.
    pipelining: bool,
}

enum Client {
    Plain(SmtpClient<TcpStream>),
    Tls(Box<SmtpClient<TlsStream<TcpStream>>>),
}

impl Connection {
    async fn open(
        cfg: &DeliveryConfig,
        host: &str,
        addr: SocketAddr,
    ) -> Result<Connection, SendError> {
        let mut client = SmtpClient::<TcpStream>::connect(addr, cfg.timeout).await?;
        // Without TCP_NODELAY, the small last write of a message (".\r\n")
        // waits for the ACK of the body, which the next hop delays by up to
        // 40 ms: that alone capped delivery at ~25 messages/s per connection.
        client.stream.set_nodelay(true).map_err(SendError::Io)?;
        // mail-send reads the greeting and completes the TLS handshake
        // without a deadline of its own: a next hop that accepts and then
        // says nothing must not hold a delivery slot.
        let greeting = within(cfg.timeout, client.read()).await?;
        if greeting.code != 220 {
            return Err(SendError::UnexpectedReply(greeting));
        }
        let ehlo = client.ehlo(&cfg.hostname).await?;
        if ehlo.has_capability(EXT_START_TLS) {
            let connector = TlsConnector::from(cfg.tls.clone());
            let mut tls = within(cfg.timeout, client.start_tls(&connector, host)).await?;
            // Only what the hop says after STARTTLS counts (RFC 3207).
            let ehlo = tls.ehlo(&cfg.hostname).await?;
            Ok(Connection {
                client: Client::Tls(Box::new(tls)),
                uses: 0,
                clean: true,
                pipelining: ehlo.has_capability(EXT_PIPELINING),
            })
        } else if cfg.tls_policy.requires_tls() {
            // Nothing goes in clear text to a hop the operator wants
            // encrypted: a stripped STARTTLS is a temporary failure.
            let _ = client.cmd(b"QUIT\r\n").await;
            Err(SendError::MissingStartTls)
        } else {
            Ok(Connection {
                client: Client::Plain(client),
                uses: 0,
                clean: true,
                pipelining: ehlo.has_capability(EXT_PIPELINING),
            })
        }
    }

    async fn transaction(
        &mut self,
        sender: &str,
        recipients: &[String],
        message: &[u8],
    ) -> Result<Vec<(String, Outcome)>, SendError> {
        self.uses += 1;
        self.clean = false;
        let pipelining = self.pipelining;
        let (results, clean) = match &mut self.client {
            Client::Plain(c) => transaction(c, pipelining, sender, recipients, message).await?,
            Client::Tls(c) => {
                transaction(c.as_mut(), pipelining, sender, recipients, message).await?
            }
        };
        self.clean = clean;
        Ok(results)
    }

    async fn quit(self) {
        let _ = match self.client {
            Client::Plain(mut c) => c.cmd(b"QUIT\r\n").await,
            Client::Tls(mut c) => c.cmd(b"QUIT\r\n").await,
        };
    }
}

/// Idle connections to next hops, reused by later deliveries to the same
/// host and address — as production MTAs do: a relay sending everything to
/// one smarthost would otherwise pay a TCP and TLS handshake per message, and
/// so would the smarthost. A connection is kept for [`ConnectionCache::IDLE`]
/// after its last transaction and used for at most
/// [`ConnectionCache::MAX_USES`] messages; a stale one (closed by the next
/// hop meanwhile) is noticed at MAIL FROM and replaced by a fresh connection.
#[derive(Default)]
pub struct ConnectionCache {
    idle: std::sync::Mutex<HashMap<(String, SocketAddr), Vec<Idle>>>,
}

struct Idle {
    conn: Connection,
    since: Instant,
}

impl ConnectionCache {
    /// How long an idle connection is kept (Postfix keeps its own 2 s).
    pub const IDLE: Duration = Duration::from_secs(5);
    /// Messages one connection carries at most.
    pub const MAX_USES: u32 = 100;
    /// Idle connections kept per next hop.
    pub const MAX_IDLE_PER_HOP: usize = 16;

    fn take(&self, key: &(String, SocketAddr)) -> Option<Connection> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        // Expired connections are dropped (closing the socket).
        list.retain(|i| i.since.elapsed() < Self::IDLE);
        list.pop().map(|i| i.conn)
    }

    /// Keeps `conn` for the next message to the same hop, if it can carry
    /// one. No network I/O here (it would run inside the attempt's deadline
    /// and could turn a delivered message into a timed-out one): a
    /// connection in an unknown state is dropped without a word — a RSET
    /// there could read a late reply as its own and shift every reply
    /// after it — and one that is used up says QUIT from a task of its own.
    async fn put_back(&self, key: (String, SocketAddr), conn: Connection) {
        if !conn.clean {
            return;
        }
        if conn.uses >= Self::MAX_USES {
            tokio::spawn(conn.quit());
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let list = idle.entry(key).or_default();
        if list.len() < Self::MAX_IDLE_PER_HOP {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

/// One transaction: MAIL, RCPT for each recipient, DATA and the message.
/// Returns each recipient's outcome and whether the transaction ended with
/// a reply (the connection can carry another at once).
async fn transaction<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    pipelining: bool,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Result<(Vec<(String, Outcome)>, bool), SendError> {
    if !sender.is_empty() && crate::address::canonical(sender).is_err() {
        return Ok((
            all(
                recipients,
                Outcome::Permanent("553 5.1.7 the queued sender is not a canonical mailbox".into()),
            ),
            true,
        ));
    }
    let mut out = Vec::new();
    let mut valid = Vec::new();
    for r in recipients {
        if crate::address::canonical(r).is_err() {
            out.push((
                r.clone(),
                Outcome::Permanent(
                    "553 5.1.3 the queued recipient is not a canonical mailbox".into(),
                ),
            ));
        } else {
            valid.push(r.clone());
        }
    }
    if valid.is_empty() {
        return Ok((out, true));
    }
    let (mut results, clean) = if pipelining {
        pipelined(client, sender, &valid, message).await?
    } else {
        one_by_one(client, sender, &valid, message).await?
    };
    out.append(&mut results);
    Ok((out, clean))
}

/// The end of a transaction whose recipients in `accepted` the next hop
/// took: the message after DATA's 354, and its reply.
async fn send_data<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    accepted: &[String],
    message: &[u8],
    out: &mut Vec<(String, Outcome)>,
) -> bool {
    // mail-send ends the data with CRLF . CRLF itself; the message's own
    // final CRLF is that first CRLF, so it must not be sent twice.
    let body = message.strip_suffix(b"\r\n").unwrap_or(message);
    let timeout = client.timeout;
    let sent = tokio::time::timeout(timeout, async {
        client.write_message(body).await?;
        client.read().await
    })
    .await
    .map_err(|_| SendError::Timeout)
    .and_then(|r| r)
    .and_then(|r| r.assert_positive_completion());
    match sent {
        Ok(()) => {
            out.extend(all(
                accepted,
                Outcome::Delivered("250 2.0.0 accepted by the next hop".into()),
            ));
            true
        }
        Err(e) => {
            out.extend(all(accepted, outcome_of(&e)));
            // A reply ends the transaction; anything else leaves it unknown.
            matches!(e, SendError::UnexpectedReply(_))
        }
    }
}

/// MAIL, each RCPT and DATA in one write (RFC 2920), then the message:
/// two round trips whatever the number of recipients.
async fn pipelined<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Result<(Vec<(String, Outcome)>, bool), SendError> {
    // No parameters: none the client gave can reach the next hop.
    let mut cmds = vec![format!("MAIL FROM:<{sender}>\r\n")];
    cmds.extend(recipients.iter().map(|r| format!("RCPT TO:<{r}>\r\n")));
    cmds.push("DATA\r\n".to_string());
    let mut replies = client.cmds(cmds).await?.into_iter();
    let (Some(mail), Some(data)) = (replies.next(), replies.next_back()) else {
        return Err(SendError::UnparseableReply);
    };
    if !mail.is_positive_completion() {
        // As without pipelining: the answer to MAIL is everyone's.
        return Err(SendError::UnexpectedReply(mail));
    }
    let mut out = Vec::new();
    let mut accepted = Vec::new();
    for (r, reply) in recipients.iter().zip(replies) {
        if reply.is_positive_completion() {
            accepted.push(r.clone());
        } else {
            out.push((r.clone(), outcome_of(&SendError::UnexpectedReply(reply))));
        }
    }
    if data.code() != 354 {
        // No recipient taken (the hop refuses DATA then), or DATA refused:
        // the transaction is still open at the hop (RFC 5321 ends it only
        // with the reply to the end of data), so it is reset before the
        // connection carries another.
        out.extend(all(
            &accepted,
            outcome_of(&SendError::UnexpectedReply(data)),
        ));
        let reset = client.rset().await.is_ok();
        return Ok((out, reset));
    }
    if accepted.is_empty() {
        // A hop that says 354 with no recipient: the connection is in the
        // middle of a message nobody wants, and is dropped.
        return Ok((out, false));
    }
    let clean = send_data(client, &accepted, message, &mut out).await;
    Ok((out, clean))
}

/// MAIL, each RCPT and DATA, each waiting for its reply: for a next hop
/// without PIPELINING.
async fn one_by_one<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Result<(Vec<(String, Outcome)>, bool), SendError> {
    // No parameters: none the client gave can reach the next hop.
    let params = Parameters::default();
    client.mail_from(sender, &params).await?;
    let mut out = Vec::new();
    let mut accepted = Vec::new();
    for r in recipients {
        match client.rcpt_to(r, &params).await {
            Ok(()) => accepted.push(r.clone()),
            Err(e) => out.push((r.clone(), outcome_of(&e))),
        }
    }
    if accepted.is_empty() {
        let reset = client.rset().await.is_ok();
        return Ok((out, reset));
    }
    if let Err(e) = client
        .cmd(b"DATA\r\n")
        .await
        .and_then(|r| r.assert_code(354))
    {
        out.extend(all(&accepted, outcome_of(&e)));
        return Ok((out, matches!(e, SendError::UnexpectedReply(_))));
    }
    let clean = send_data(client, &accepted, message, &mut out).await;
    Ok((out, clean))
}
