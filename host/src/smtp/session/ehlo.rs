//! EHLO and HELO: the client's name, the capabilities, and a fresh start
//! for everything that depends on the session facts.

use super::{Flow, Session};
use crate::smtp::stream::Io;

impl<S: Io> Session<S> {
    /// Resets what depends on the session facts (RFC 5321 4.1.4: EHLO resets).
    pub(super) fn reset_facts(&mut self) {
        self.tx = None;
        self.policy = None;
    }

    pub(super) async fn hello(&mut self, host: String, esmtp: bool) -> std::io::Result<Flow> {
        let host: String = host
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(255)
            .collect();
        if host.is_empty() {
            return self.error(501, "5.5.4", "Syntax: EHLO hostname").await;
        }
        self.reset_facts();
        self.helo = Some(host.clone());
        self.esmtp = esmtp;
        if !esmtp {
            self.send(format!(
                "250 {} Hello {host} [{}]\r\n",
                self.ctx.hostname,
                self.peer.ip()
            ))
            .await?;
            return Ok(Flow::Continue);
        }
        let mut caps = vec![
            format!("{} Hello {host} [{}]", self.ctx.hostname, self.peer.ip()),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.ctx.limits.max_message_size),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
        ];
        if !self.conn.is_tls() {
            caps.push("STARTTLS".to_string());
        }
        caps.push("HELP".to_string());
        let last = caps.len() - 1;
        let mut out = String::new();
        for (i, c) in caps.iter().enumerate() {
            out.push_str(&format!("250{}{c}\r\n", if i == last { ' ' } else { '-' }));
        }
        self.send(out).await?;
        Ok(Flow::Continue)
    }
}
