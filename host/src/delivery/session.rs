//! An SMTP session with a next hop: connected, greeted, EHLO (and
//! STARTTLS when offered, with our client certificate if configured), and
//! then one transaction at a time. What the session offers and how it may
//! fail to open; which session to use and what its failures mean for the
//! recipients is `smtp.rs`.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::pool::{Pool, Reusable, Slot};
use super::settings::TlsPolicy;
use super::transaction::{self, Done};
use super::wire::{HopError, Reply, Wire, capabilities};
use crate::spool::Stored;

/// The connections to next hops, shared by every attempt.
pub type Connections = Pool<Session>;

/// Who opens a session, and how.
pub(super) struct Client<'a> {
    /// This relay's name, in EHLO.
    pub(super) hostname: &'a str,
    pub(super) tls: &'a Arc<rustls::ClientConfig>,
    pub(super) policy: TlsPolicy,
    /// The deadline on each step.
    pub(super) timeout: Duration,
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
pub(super) enum OpenError {
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

impl Session {
    /// One transaction on this session.
    pub(super) async fn transaction(
        &mut self,
        sender: &str,
        recipients: &[String],
        message: &Stored,
    ) -> Done {
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

    /// Connects to `addr` (named `host`, the name its certificate is
    /// checked against) and says hello as `client`.
    pub(super) async fn open(
        client: &Client<'_>,
        host: &str,
        addr: SocketAddr,
    ) -> Result<Session, OpenError> {
        let tcp = tokio::time::timeout(client.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| HopError::Timeout)?
            .map_err(|source| HopError::Connect { addr, source })?;
        // Without TCP_NODELAY, the small last write of a message (".\r\n")
        // waits for the ACK of the body, which the next hop delays by up to
        // 40 ms: that alone capped delivery at ~25 messages/s per connection.
        tcp.set_nodelay(true).map_err(HopError::Io)?;
        let socket = tcp.as_raw_fd();
        let mut wire = Wire::new(tcp, socket, client.timeout);
        let greeting = wire.reply().await?;
        wire.in_step()?;
        if greeting.code != 220 {
            return Err(OpenError::Refused(greeting));
        }
        let offers = hello(&mut wire, client.hostname).await?;
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
            let connector = TlsConnector::from(client.tls.clone());
            let tls = tokio::time::timeout(client.timeout, connector.connect(name, stream))
                .await
                .map_err(|_| HopError::Timeout)?
                .map_err(HopError::Tls)?;
            let mut wire = Wire::new(tls, socket, client.timeout);
            // Only what the hop says after STARTTLS counts (RFC 3207).
            let offers = hello(&mut wire, client.hostname).await?;
            Ok(Session { wire, offers })
        } else if client.policy.requires_tls() {
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
