//! Delivery to an SMTP next hop with mail-send: STARTTLS when offered (with
//! our client certificate if configured), then one transaction with a result
//! per recipient.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mail_send::smtp::AssertReply;
use mail_send::smtp::message::Parameters;
use mail_send::{Error as SendError, SmtpClient};
use smtp_proto::{EXT_8BIT_MIME, EXT_PIPELINING, EXT_START_TLS};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{DeliveryConfig, Outcome};
use crate::spool::Stored;

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
    message: &Stored,
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
    message: &Stored,
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
    offers: Offers,
}

/// What the next hop offered in its EHLO reply that changes how a
/// transaction is sent.
#[derive(Debug, Clone, Copy)]
struct Offers {
    /// PIPELINING (RFC 2920): MAIL, RCPT and DATA go in one write, their
    /// replies come back together.
    pipelining: bool,
    /// 8BITMIME (RFC 6152): a body with bytes past US-ASCII is announced
    /// with `BODY=8BITMIME`. To a hop without it such a body goes as it is,
    /// unconverted, as most MTAs send it.
    eight_bit_mime: bool,
}

impl Offers {
    fn of(ehlo: &smtp_proto::EhloResponse<String>) -> Offers {
        Offers {
            pipelining: ehlo.has_capability(EXT_PIPELINING),
            eight_bit_mime: ehlo.has_capability(EXT_8BIT_MIME),
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
                offers: Offers::of(&ehlo),
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
                offers: Offers::of(&ehlo),
            })
        }
    }

    async fn transaction(
        &mut self,
        sender: &str,
        recipients: &[String],
        message: &Stored,
    ) -> Result<Vec<(String, Outcome)>, SendError> {
        self.uses += 1;
        self.clean = false;
        let offers = self.offers;
        let (results, clean) = match &mut self.client {
            Client::Plain(c) => transaction(c, offers, sender, recipients, message).await?,
            Client::Tls(c) => transaction(c.as_mut(), offers, sender, recipients, message).await?,
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

/// One transaction: MAIL (whose parameters the relay decides: none the
/// client gave reaches the next hop), RCPT for each recipient, DATA and the
/// message.
/// Returns each recipient's outcome and whether the transaction ended with
/// a reply (the connection can carry another at once).
async fn transaction<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    offers: Offers,
    sender: &str,
    recipients: &[String],
    message: &Stored,
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
    let mail = format!(
        "MAIL FROM:<{sender}>{}\r\n",
        offers.mail_parameters(message)
    );
    let (mut results, clean) = if offers.pipelining {
        pipelined(client, mail, &valid, message).await?
    } else {
        one_by_one(client, mail, &valid, message).await?
    };
    out.append(&mut results);
    Ok((out, clean))
}

/// The end of a transaction whose recipients in `accepted` the next hop
/// took: the message after DATA's 354, and its reply.
async fn send_data<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    accepted: &[String],
    message: &Stored,
    out: &mut Vec<(String, Outcome)>,
) -> bool {
    // Each piece of the message and the final reply have the step's time
    // (Postfix's smtp_data_xfer_timeout and smtp_data_done_timeout); the
    // attempt's deadline bounds the whole.
    let step = client.timeout;
    let sent = async {
        write_message(&mut client.stream, message, step).await?;
        let reply = within(step, client.read()).await.map_err(Unsent::Hop)?;
        reply.assert_positive_completion().map_err(Unsent::Hop)
    }
    .await;
    match sent {
        Ok(()) => {
            out.extend(all(
                accepted,
                Outcome::Delivered("250 2.0.0 accepted by the next hop".into()),
            ));
            true
        }
        Err(Unsent::Spool(e)) => {
            out.extend(all(
                accepted,
                Outcome::Temporary(format!(
                    "451 4.3.0 the spooled message could not be read: {e}"
                )),
            ));
            // The hop waits for the rest of a message that never ends.
            false
        }
        Err(Unsent::Hop(e)) => {
            out.extend(all(accepted, outcome_of(&e)));
            // A reply ends the transaction; anything else leaves it unknown.
            matches!(e, SendError::UnexpectedReply(_))
        }
    }
}

/// Why a message's content did not reach the next hop.
enum Unsent {
    /// Reading it from the spool failed (or found it changed).
    Spool(std::io::Error),
    /// The next hop's connection or reply.
    Hop(SendError),
}

/// Writes `message` as DATA's content, chunk by chunk, then the end of data.
/// The spool hands out each chunk once it is read (and a body that changed
/// since it was checked as an error before its last chunk), so a failure
/// leaves the transaction without its final `.`: the next hop discards it.
async fn write_message<W: AsyncWrite + Unpin>(
    stream: &mut W,
    message: &Stored,
    step: Duration,
) -> Result<(), Unsent> {
    let mut reader = message.reader();
    let mut stuffer = DotStuffer::default();
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(step, reader.next()).await;
        let chunk = match next {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(Unsent::Spool(e)),
            Err(_) => {
                return Err(Unsent::Spool(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the spool's disk did not answer in time",
                )));
            }
        };
        let bytes = stuffer.stuff(&chunk, &mut out);
        write_within(stream, bytes, step).await?;
    }
    write_within(stream, stuffer.end(), step).await?;
    within(step, async { Ok(stream.flush().await?) })
        .await
        .map_err(Unsent::Hop)
}

/// One write to the next hop, which must take it within `step`: a hop that
/// reads slowly gets each piece's time, not the message's.
async fn write_within<W: AsyncWrite + Unpin>(
    stream: &mut W,
    bytes: &[u8],
    step: Duration,
) -> Result<(), Unsent> {
    within(step, async { Ok(stream.write_all(bytes).await?) })
        .await
        .map_err(Unsent::Hop)
}

/// SMTP's transparency (RFC 5321 4.5.2) over a message sent in pieces: a
/// `.` that begins a line is doubled. A line begins at the message's start
/// and after a CR or an LF, a bare one included: intake refuses bare ones
/// (SMTP smuggling), and should one be spooled all the same, a lenient hop
/// must not read `LF . CR LF` as the end of the data (a strict hop keeps one
/// extra dot, as with mail-send's own transparency).
struct DotStuffer {
    at_line_start: bool,
    /// The message so far ends with CRLF (or is empty).
    ends_with_crlf: bool,
    last: u8,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
            ends_with_crlf: true,
            last: 0,
        }
    }
}

impl DotStuffer {
    /// `chunk` as it goes on the wire: itself when no line in it starts
    /// with a dot (the usual case: no copy), else a copy in `out` with the
    /// dots doubled.
    #[must_use]
    fn stuff<'a>(&mut self, chunk: &'a [u8], out: &'a mut Vec<u8>) -> &'a [u8] {
        let first = self.at_line_start;
        let needs = (first && chunk.first() == Some(&b'.'))
            || chunk
                .windows(2)
                .any(|w| (w[0] == b'\r' || w[0] == b'\n') && w[1] == b'.');
        if let Some(&b) = chunk.last() {
            let before = if chunk.len() > 1 {
                chunk[chunk.len() - 2]
            } else {
                self.last
            };
            self.at_line_start = b == b'\r' || b == b'\n';
            self.ends_with_crlf = before == b'\r' && b == b'\n';
            self.last = b;
        }
        if !needs {
            return chunk;
        }
        out.clear();
        out.reserve(chunk.len() + chunk.len() / 64);
        let mut line_start = first;
        for &b in chunk {
            if b == b'.' && line_start {
                out.push(b'.');
            }
            out.push(b);
            line_start = b == b'\r' || b == b'\n';
        }
        out
    }

    /// The end of data: CRLF . CRLF, whose first CRLF is the message's own
    /// last line end when it has one.
    fn end(&self) -> &'static [u8] {
        if self.ends_with_crlf {
            b".\r\n"
        } else {
            b"\r\n.\r\n"
        }
    }
}

/// MAIL, each RCPT and DATA in one write (RFC 2920), then the message:
/// two round trips whatever the number of recipients.
async fn pipelined<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    mail: String,
    recipients: &[String],
    message: &Stored,
) -> Result<(Vec<(String, Outcome)>, bool), SendError> {
    let mut cmds = vec![mail];
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
    mail: String,
    recipients: &[String],
    message: &Stored,
) -> Result<(Vec<(String, Outcome)>, bool), SendError> {
    client
        .cmd(mail.as_bytes())
        .await?
        .assert_positive_completion()?;
    // RCPT without parameters: none the client gave can reach the next hop.
    let params = Parameters::default();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(chunks: &[&[u8]]) -> Vec<u8> {
        let mut stuffer = DotStuffer::default();
        let (mut wire, mut scratch) = (Vec::new(), Vec::new());
        for c in chunks {
            wire.extend_from_slice(stuffer.stuff(c, &mut scratch));
        }
        wire.extend_from_slice(stuffer.end());
        wire
    }

    #[test]
    fn dots_at_line_starts_are_doubled_wherever_the_chunks_split() {
        let message: &[u8] = b".first\r\nmiddle.\r\n.\r\n..two\r\nbare\n.lf\r\nend\r\n";
        let expected: &[u8] = b"..first\r\nmiddle.\r\n..\r\n...two\r\nbare\n..lf\r\nend\r\n.\r\n";
        assert_eq!(stuffed(&[message]), expected);
        for split in 0..=message.len() {
            let (a, b) = message.split_at(split);
            assert_eq!(stuffed(&[a, b]), expected, "split at {split}");
        }
    }

    #[test]
    fn a_chunk_without_a_dot_at_a_line_start_goes_out_uncopied() {
        let mut stuffer = DotStuffer::default();
        let mut scratch = Vec::new();
        let chunk: &[u8] = b"a line.\r\nanother. line\r\n";
        assert!(std::ptr::eq(stuffer.stuff(chunk, &mut scratch), chunk));
        assert!(scratch.is_empty());
    }

    #[test]
    fn the_end_of_data_adds_a_line_end_only_when_the_message_lacks_one() {
        assert_eq!(stuffed(&[b"x\r\n"]), b"x\r\n.\r\n");
        assert_eq!(stuffed(&[b"x\r", b"\n"]), b"x\r\n.\r\n");
        assert_eq!(stuffed(&[b"x"]), b"x\r\n.\r\n");
        assert_eq!(stuffed(&[b"x\n"]), b"x\n\r\n.\r\n");
    }
}
