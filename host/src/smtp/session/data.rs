//! DATA: the message read up to `CRLF.CRLF` within its bounds and streamed
//! to the spool as it arrives ([`Incoming`]), an envelope with the relay's
//! trace and trust fields composed per attributed tenant, and the body and
//! every envelope committed durably (all or none) before `250`.

use std::sync::Arc;

use tokio::time::{Instant, timeout_at};
use tracing::{Instrument as _, info, warn};

use super::{Flow, Session, reply};
use crate::intake::{self, HeaderTooBig, Incoming, Message, Origin};
use crate::smtp::context::ServerContext;
use crate::smtp::data::{BareLineEndings, DataReader};
use crate::smtp::stream::Io;

impl<S: Io> Session<S> {
    pub(super) async fn data(&mut self) -> std::io::Result<Flow> {
        match &self.tx {
            None => return self.error(503, "5.5.1", "Send MAIL first").await,
            Some(tx) if tx.recipients.is_empty() => {
                return self.error(554, "5.5.1", "No valid recipients").await;
            }
            Some(_) => {}
        }
        self.conn
            .queue("354 Start mail input; end with <CRLF>.<CRLF>\r\n");
        self.conn.flush().await?;
        let incoming = Incoming::new(self.ctx.spool.body(), self.ctx.limits.max_header_size);
        let Some((reader, incoming)) = self.read_data(incoming).await? else {
            return Ok(Flow::Close);
        };
        let tx = self.tx.take().expect("checked above");
        if reader.too_big {
            let text = format!(
                "Message size exceeds the limit of {} bytes",
                self.ctx.limits.max_message_size
            );
            return self.error(552, "5.3.4", &text).await;
        }
        if reader.bare_line_ending && self.ctx.limits.bare_line_endings == BareLineEndings::Reject {
            info!(client = %self.peer.ip(), "message refused: bare CR or LF in DATA");
            return self
                .error(
                    550,
                    "5.6.0",
                    "Bare CR or LF in message data; lines must end with CRLF",
                )
                .await;
        }
        let received = match incoming.finish().await {
            Ok(r) => r,
            Err(HeaderTooBig(limit)) => {
                info!(client = %self.peer.ip(), limit, "message refused: header section too large");
                let text = format!("Message header section exceeds the limit of {limit} bytes");
                return self.error(552, "5.3.4", &text).await;
            }
        };
        if received.hops > self.ctx.limits.max_hops {
            let hops = received.hops;
            info!(client = %self.peer.ip(), hops, "message refused: mail loop (too many Received fields)");
            let text = format!("Too many hops ({hops} Received fields): mail loop?");
            return self.error(554, "5.4.6", &text).await;
        }
        let with = if self.tls.is_some() {
            "ESMTPS"
        } else if self.esmtp {
            "ESMTP"
        } else {
            "SMTP"
        };
        let origin = Origin {
            helo: self.helo.as_deref().unwrap_or("unknown"),
            client_ip: self.peer.ip(),
            hostname: &self.ctx.hostname,
            with,
            tls: self.tls.as_ref(),
        };
        let prepared = Message {
            message_id: received.message_id,
            ..Message::from_client(
                &self.ctx.spool,
                &origin,
                &tx.sender,
                &tx.recipients,
                received.body,
            )
        };
        let line = store(self.ctx.clone(), self.peer.ip(), prepared).await;
        if line.starts_with("250") {
            self.messages += 1;
        }
        self.send(line).await?;
        Ok(Flow::Continue)
    }

    /// Reads the message data up to `CRLF.CRLF` into `incoming`, a chunk
    /// at a time; `None` when the session must end (client gone, data
    /// timeout or session deadline: 421), and the body is dropped.
    pub(super) async fn read_data(
        &mut self,
        mut incoming: Incoming,
    ) -> std::io::Result<Option<(DataReader, Incoming)>> {
        let mut reader = DataReader::new(
            self.ctx.limits.max_message_size,
            self.ctx.limits.bare_line_endings,
        );
        let mut chunk = Vec::with_capacity(8192);
        loop {
            chunk.clear();
            let end = reader.feed(&self.conn.rbuf, &mut chunk);
            // Past the size limit the rest is only read, never stored.
            if !reader.too_big {
                incoming.write(&chunk).await;
            }
            if let Some(n) = end {
                self.conn.rbuf.drain(..n);
                return Ok(Some((reader, incoming)));
            }
            self.conn.rbuf.clear();
            let wait = (Instant::now() + self.ctx.limits.data_timeout).min(self.deadline);
            match timeout_at(wait, self.conn.fill()).await {
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    let text = "Timeout waiting for message data, closing connection";
                    self.timed_out(wait, text).await?;
                    return Ok(None);
                }
            }
        }
    }
}

/// Accepts the message ([`crate::intake::accept`]: committed, then
/// queued); returns the reply line. It runs as a task of its own: if the
/// session is cut off meanwhile, a message that reached the spool is still
/// queued, never left committed but undelivered until a restart.
async fn store(ctx: Arc<ServerContext>, client: std::net::IpAddr, message: Message) -> String {
    let accepted = async move {
        let accepted = intake::accept(&ctx.spool, message, |e| ctx.queue.enqueue(e)).await;
        match accepted {
            Ok(ids) => reply(
                250,
                "2.0.0",
                &format!(
                    "Ok: queued as {}",
                    ids.iter()
                        .map(|id| id.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            ),
            Err(e) if e.is_full() => {
                warn!(client = %client, error = %e, "spool full: message refused with 452");
                reply(452, "4.3.1", "Insufficient system storage")
            }
            Err(e) => {
                warn!(client = %client, error = %e, "spool write failed: message refused with 451");
                reply(451, "4.3.0", "Local error in processing; try again later")
            }
        }
    }
    // Its lines (`queued`) belong to the session too.
    .in_current_span();
    let task = tokio::spawn(accepted);
    task.await
        .unwrap_or_else(|_| reply(451, "4.3.0", "Local error in processing; try again later"))
}
