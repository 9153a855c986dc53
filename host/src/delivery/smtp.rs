//! Delivery to an SMTP next hop with mail-send: STARTTLS when offered (with
//! our client certificate if configured), then one transaction with a result
//! per recipient.

use std::time::Duration;

use mail_send::smtp::message::Parameters;
use mail_send::{Error as SendError, SmtpClient};
use smtp_proto::EXT_START_TLS;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

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
        other => Outcome::Temporary(format!("451 4.4.0 {other:?}").chars().take(300).collect()),
    }
}

fn all(recipients: &[String], outcome: Outcome) -> Vec<(String, Outcome)> {
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
    let result = match resolve(host, port, cfg.timeout).await {
        Ok(addr) => try_deliver(cfg, host, addr, sender, recipients, message).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(v) => v,
        Err(e) => all(recipients, outcome_of(&e)),
    }
}

/// Delivers to `host` at an address already resolved (MX delivery resolves
/// with its own resolver and tries each address); `host` is the name TLS
/// verifies.
pub async fn deliver_at(
    cfg: &DeliveryConfig,
    host: &str,
    addr: std::net::SocketAddr,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Vec<(String, Outcome)> {
    match try_deliver(cfg, host, addr, sender, recipients, message).await {
        Ok(v) => v,
        Err(e) => all(recipients, outcome_of(&e)),
    }
}

async fn resolve(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<std::net::SocketAddr, SendError> {
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

async fn try_deliver(
    cfg: &DeliveryConfig,
    host: &str,
    addr: std::net::SocketAddr,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Result<Vec<(String, Outcome)>, SendError> {
    let mut client = SmtpClient::<TcpStream>::connect(addr, cfg.timeout).await?;
    // Without TCP_NODELAY, the small last write of a message (".\r\n") waits
    // for the ACK of the body, which the next hop delays by up to 40 ms:
    // that alone capped delivery at ~25 messages/s per connection.
    client.stream.set_nodelay(true).map_err(SendError::Io)?;
    let greeting = client.read().await?;
    if greeting.code != 220 {
        return Err(SendError::UnexpectedReply(greeting));
    }
    let ehlo = client.ehlo(&cfg.hostname).await?;
    if ehlo.has_capability(EXT_START_TLS) {
        let connector = TlsConnector::from(cfg.tls.clone());
        let mut tls = client.start_tls(&connector, host).await?;
        tls.ehlo(&cfg.hostname).await?;
        transaction(&mut tls, sender, recipients, message).await
    } else {
        transaction(&mut client, sender, recipients, message).await
    }
}

async fn transaction<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Result<Vec<(String, Outcome)>, SendError> {
    let params = Parameters::default();
    client.mail_from(sender, &params).await?;
    let mut out = Vec::new();
    let mut accepted = Vec::new();
    for r in recipients {
        match client.rcpt_to(r, &params).await {
            Ok(()) => accepted.push(r.clone()),
            Err(e) => {
                out.push((r.clone(), outcome_of(&e)));
            }
        }
    }
    if accepted.is_empty() {
        let _ = client.rset().await;
        return Ok(out);
    }
    // mail-send ends the data with CRLF . CRLF itself; the message's own
    // final CRLF is that first CRLF, so it must not be sent twice.
    let body = message.strip_suffix(b"\r\n").unwrap_or(message);
    match client.data(body).await {
        Ok(()) => out.extend(all(
            &accepted,
            Outcome::Delivered("250 2.0.0 accepted by the next hop".into()),
        )),
        Err(e) => {
            out.extend(all(&accepted, outcome_of(&e)));
        }
    }
    let _ = client.cmd(b"QUIT\r\n").await;
    Ok(out)
}
