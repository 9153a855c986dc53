//! STARTTLS (RFC 3207): the handshake, the client certificate as facts,
//! and a session that starts over inside TLS.

use tokio::time::timeout;
use tracing::info;

use super::{Flow, Session, reply};
use crate::smtp::stream::{Io, Stream};
use crate::tls::facts::tls_facts;

impl<S: Io> Session<S> {
    pub(super) async fn starttls(&mut self) -> std::io::Result<Flow> {
        if self.conn.is_tls() {
            return self.error(503, "5.5.1", "TLS already active").await;
        }
        if !self.esmtp {
            return self.error(503, "5.5.1", "Send EHLO first").await;
        }
        self.conn.queue(&reply(220, "2.0.0", "Ready to start TLS"));
        self.conn.flush().await?;
        // Anything pipelined after STARTTLS was sent in clear text and must
        // not be executed inside the TLS session (CVE-2011-0411 class).
        self.conn.rbuf.clear();
        let Stream::Plain(tcp) = std::mem::replace(&mut self.conn.stream, Stream::Upgrading) else {
            return Ok(Flow::Close);
        };
        let handshake = timeout(
            self.ctx.limits.tls_handshake_timeout,
            self.ctx.tls.accept(tcp),
        )
        .await;
        let tls = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                info!(client = %self.peer, error = %e, "TLS handshake failed");
                return Ok(Flow::Close);
            }
            Err(_) => {
                info!(client = %self.peer, "TLS handshake timed out");
                return Ok(Flow::Close);
            }
        };
        // Off the runtime's workers, and bounded (see `tls::facts`).
        let anchors = self.eval.anchors.clone();
        let (facts, chain) = tls_facts(tls.get_ref().1, anchors, self.peer).await;
        self.chain = chain;
        self.conn.stream = Stream::Tls(Box::new(tls));
        self.tls = Some(facts);
        // RFC 3207: the session starts over; the client must EHLO again.
        self.helo = None;
        self.esmtp = false;
        self.reset_facts();
        Ok(Flow::Continue)
    }
}
