//! One SMTP session (RFC 5321, with STARTTLS per RFC 3207 and PIPELINING per
//! RFC 2920): the command loop, the policy calls, and durable acceptance.
//!
//! The policy instance is opened at the first MAIL FROM, when the facts it
//! needs (HELO, TLS, client certificate) are known, and dropped whenever they
//! change (STARTTLS, a new EHLO). Policy calls run on the blocking pool: a
//! call may take up to its time budget, and must not stall other sessions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use attrelay_policy::model::{Action, HeaderField, SessionFacts, TlsFacts, Verdict};
use smtp_proto::{Error as ParseError, Request};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::data::{BareLineEndings, DataReader};
use super::server::{Evaluation, ServerContext};
use super::stream::{Connection, Line, Stream};
use crate::directory::canonical_ip;
use crate::judges::{Judges, Stage, ask};
use crate::spool::{Envelope, Recipient, RecipientState, now};
use crate::tls::client_cert::{inspect_chain, unix_time};
use crate::tls::server::{cipher_name, protocol_name};

/// Session limits (`[server]`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest command line accepted, CRLF included.
    pub max_line: usize,
    /// The SIZE limit.
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// Waiting for a command (RFC 5321 4.5.3.2.7 suggests 5 minutes).
    pub idle_timeout: Duration,
    /// Waiting for the next chunk of message data (RFC 5321: 3 minutes).
    pub data_timeout: Duration,
    /// Errors (5xx to bad commands) before the session is ended.
    pub max_errors: u32,
    pub tls_handshake_timeout: Duration,
    pub bare_line_endings: BareLineEndings,
    /// Whole-session deadline.
    pub max_session: Duration,
    /// Delay before the greeting, to catch clients that talk first.
    pub pregreet_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 2048,
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            idle_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            max_errors: 10,
            tls_handshake_timeout: Duration::from_secs(30),
            bare_line_endings: BareLineEndings::Reject,
            max_session: Duration::from_secs(3600),
            pregreet_delay: Duration::ZERO,
        }
    }
}

/// The names of header fields only this relay may write: a client's copies
/// are removed so that nobody can forge an attribution.
const TRUSTED_HEADERS: &[&str] = &["x-attributed-tenant", "x-attrelay-warning"];

struct Accepted {
    address: String,
    tenant: Option<String>,
    headers: Vec<HeaderField>,
}

struct Transaction {
    sender: String,
    recipients: Vec<Accepted>,
}

enum Flow {
    Continue,
    Close,
}

pub struct Session {
    ctx: Arc<ServerContext>,
    conn: Connection,
    peer: SocketAddr,
    /// The policy and directory this session started with: a reload never
    /// changes them under a session in flight.
    eval: Arc<Evaluation>,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsFacts>,
    policy: Option<Judges>,
    tx: Option<Transaction>,
    errors: u32,
}

fn reply(code: u16, enhanced: &str, text: &str) -> String {
    format!("{code} {enhanced} {text}\r\n")
}

impl Session {
    pub fn new(ctx: Arc<ServerContext>, tcp: tokio::net::TcpStream, peer: SocketAddr) -> Session {
        let eval = ctx.evaluation.load_full();
        Session {
            ctx,
            conn: Connection::new(tcp),
            peer: SocketAddr::new(canonical_ip(peer.ip()), peer.port()),
            eval,
            helo: None,
            esmtp: false,
            tls: None,
            policy: None,
            tx: None,
            errors: 0,
        }
    }

    /// Runs the session to its end. I/O errors end it quietly: the client left.
    pub async fn run(mut self) {
        let peer = self.peer;
        let deadline = self.ctx.limits.max_session;
        match timeout(deadline, self.serve()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(client = %peer, error = %e, "session ended by I/O error"),
            Err(_) => {
                info!(client = %peer, "session deadline reached: 421");
                self.conn.queue(&reply(
                    421,
                    "4.4.2",
                    "Session time limit exceeded, closing connection",
                ));
            }
        }
        let _ = self.conn.flush().await;
    }

    /// A client that sends before the greeting is not a real MTA waiting
    /// for the banner (RFC 5321 4.3.1): refuse it.
    async fn talked_first(&mut self) -> std::io::Result<bool> {
        let delay = self.ctx.limits.pregreet_delay;
        if delay.is_zero() {
            return Ok(false);
        }
        match timeout(delay, self.conn.fill()).await {
            Err(_) => Ok(false),
            Ok(Ok(0)) => Ok(true),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) => Err(e),
        }
    }

    async fn send(&mut self, line: String) -> std::io::Result<()> {
        self.conn.queue(&line);
        if !self.conn.has_buffered_line() {
            self.conn.flush().await?;
        }
        Ok(())
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        if self.talked_first().await? {
            info!(client = %self.peer.ip(), "client talked before the greeting: 554");
            self.conn.rbuf.clear();
            self.conn.queue(&reply(
                554,
                "5.5.0",
                "SMTP protocol violation: talked before the greeting",
            ));
            self.conn.flush().await?;
            return Ok(());
        }
        let banner = format!("220 {} ESMTP attrelay ready\r\n", self.ctx.hostname);
        self.send(banner).await?;
        loop {
            let Some(line) = self.next_line().await? else {
                return Ok(());
            };
            match self.command(&line).await? {
                Flow::Continue => {}
                Flow::Close => return Ok(()),
            }
            if self.errors >= self.ctx.limits.max_errors {
                self.conn.queue(&reply(
                    421,
                    "4.7.0",
                    &format!("{} Too many errors, closing connection", self.ctx.hostname),
                ));
                self.conn.flush().await?;
                info!(client = %self.peer, errors = self.errors, "session ended after too many errors");
                return Ok(());
            }
        }
    }

    /// The next command line, or `None` when the session must end (client
    /// gone, idle timeout, shutdown: the last two answered with 421).
    ///
    /// The idle timeout is a deadline for the whole command: it runs from
    /// when we start waiting to the end of the line, so a client that
    /// trickles a byte at a time cannot stretch one command past it.
    async fn next_line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let deadline = tokio::time::Instant::now() + self.ctx.limits.idle_timeout;
        loop {
            match self.conn.take_line(self.ctx.limits.max_line) {
                Line::Complete(l) => {
                    if self.ctx.shutdown.is_cancelled() {
                        self.late_command().await?;
                        return Ok(None);
                    }
                    return Ok(Some(l));
                }
                Line::TooLong => {
                    self.errors += 1;
                    self.send(reply(500, "5.5.2", "Line too long")).await?;
                    continue;
                }
                Line::Incomplete => {}
            }
            self.conn.flush().await?;
            let shutdown = self.ctx.shutdown.clone();
            tokio::select! {
                r = tokio::time::timeout_at(deadline, self.conn.fill()) => match r {
                    Ok(Ok(0)) => return Ok(None),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        self.conn.queue(&reply(421, "4.4.2", &format!("{} Idle timeout, closing connection", self.ctx.hostname)));
                        self.conn.flush().await?;
                        return Ok(None);
                    }
                },
                _ = shutdown.cancelled() => {
                    self.late_command().await?;
                    return Ok(None);
                }
            }
        }
    }

    async fn late_command(&mut self) -> std::io::Result<()> {
        self.conn.queue(&reply(
            421,
            "4.3.2",
            &format!(
                "{} Service shutting down, try again later",
                self.ctx.hostname
            ),
        ));
        self.conn.flush().await
    }

    async fn error(&mut self, code: u16, enhanced: &str, text: &str) -> std::io::Result<Flow> {
        self.errors += 1;
        self.send(reply(code, enhanced, text)).await?;
        Ok(Flow::Continue)
    }

    async fn command(&mut self, line: &[u8]) -> std::io::Result<Flow> {
        let request = Request::parse(&mut line.iter()).map(|r| r.into_owned());
        let request = match request {
            Ok(r) => r,
            Err(e) => return self.parse_error(e).await,
        };
        match request {
            Request::Ehlo { host } => self.hello(host, true).await,
            Request::Helo { host } => self.hello(host, false).await,
            Request::StartTls => self.starttls().await,
            Request::Mail { from } => {
                if from.size > self.ctx.limits.max_message_size {
                    return self
                        .error(
                            552,
                            "5.3.4",
                            &format!(
                                "Message size exceeds the limit of {} bytes",
                                self.ctx.limits.max_message_size
                            ),
                        )
                        .await;
                }
                self.mail(from.address).await
            }
            Request::Rcpt { to } => self.rcpt(to.address).await,
            Request::Data => self.data().await,
            Request::Rset => {
                self.tx = None;
                self.send(reply(250, "2.0.0", "OK")).await?;
                Ok(Flow::Continue)
            }
            Request::Noop { .. } => {
                self.send(reply(250, "2.0.0", "OK")).await?;
                Ok(Flow::Continue)
            }
            Request::Vrfy { .. } => {
                self.send(reply(
                    252,
                    "2.5.0",
                    "Cannot VRFY user, but will accept message and attempt delivery",
                ))
                .await?;
                Ok(Flow::Continue)
            }
            Request::Help { .. } => {
                self.send(format!(
                    "214-2.0.0 attrelay: EHLO HELO STARTTLS MAIL RCPT DATA RSET NOOP VRFY HELP QUIT\r\n214 2.0.0 {} relays mail for its tenants only\r\n",
                    self.ctx.hostname
                ))
                .await?;
                Ok(Flow::Continue)
            }
            Request::Quit => {
                self.conn.queue(&reply(
                    221,
                    "2.0.0",
                    &format!("{} closing connection", self.ctx.hostname),
                ));
                self.conn.flush().await?;
                Ok(Flow::Close)
            }
            other => {
                self.error(502, "5.5.1", &format!("{} not implemented", other.name()))
                    .await
            }
        }
    }

    async fn parse_error(&mut self, e: ParseError) -> std::io::Result<Flow> {
        match e {
            ParseError::UnknownCommand => self.error(500, "5.5.1", "Command unrecognized").await,
            ParseError::InvalidSenderAddress => {
                self.error(501, "5.1.7", "Bad sender address syntax").await
            }
            ParseError::InvalidRecipientAddress => {
                self.error(501, "5.1.3", "Bad recipient address syntax")
                    .await
            }
            ParseError::SyntaxError { syntax } => {
                self.error(501, "5.5.4", &format!("Syntax: {syntax}")).await
            }
            ParseError::InvalidParameter { param } => {
                self.error(501, "5.5.4", &format!("Invalid parameter {param}"))
                    .await
            }
            ParseError::UnsupportedParameter { param } => {
                let p: String = param
                    .chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(32)
                    .collect();
                self.error(555, "5.5.4", &format!("Unsupported parameter {p}"))
                    .await
            }
            ParseError::NeedsMoreData { .. }
            | ParseError::ResponseTooLong
            | ParseError::InvalidResponse { .. } => self.error(500, "5.5.2", "Syntax error").await,
        }
    }

    /// Resets what depends on the session facts (RFC 5321 4.1.4: EHLO resets).
    fn reset_facts(&mut self) {
        self.tx = None;
        self.policy = None;
    }

    async fn hello(&mut self, host: String, esmtp: bool) -> std::io::Result<Flow> {
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

    async fn starttls(&mut self) -> std::io::Result<Flow> {
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
        let (_, conn) = tls.get_ref();
        let chain = conn.peer_certificates().map(|c| c.to_vec());
        let protocol = conn
            .protocol_version()
            .map(protocol_name)
            .unwrap_or_default();
        let cipher = conn
            .negotiated_cipher_suite()
            .map(cipher_name)
            .unwrap_or_default();
        let client_certificate = match chain {
            Some(chain) if !chain.is_empty() => {
                match inspect_chain(&chain, &self.eval.anchors, unix_time(now())) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        // Unparsable: never authentication; the policy sees no certificate.
                        info!(client = %self.peer, error = %e, "client certificate ignored");
                        None
                    }
                }
            }
            _ => None,
        };
        self.conn.stream = Stream::Tls(Box::new(tls));
        self.tls = Some(TlsFacts {
            protocol,
            cipher,
            client_certificate,
        });
        // RFC 3207: the session starts over; the client must EHLO again.
        self.helo = None;
        self.esmtp = false;
        self.reset_facts();
        Ok(Flow::Continue)
    }

    fn facts(&self) -> SessionFacts {
        SessionFacts {
            client_ip: self.peer.ip(),
            helo: self.helo.clone().unwrap_or_default(),
            server_hostname: self.ctx.hostname.clone(),
            time: now(),
            tls: self.tls.clone(),
        }
    }

    /// Runs a policy call for this session (see [`crate::judges::ask`]).
    async fn ask(&mut self, stage: Stage) -> Verdict {
        let judges = match self.policy.take() {
            Some(j) => j,
            None => Judges::new(self.eval.clone(), self.facts(), &self.peer.to_string()),
        };
        let sender = self
            .tx
            .as_ref()
            .map(|t| t.sender.clone())
            .unwrap_or_default();
        let (judges, v) = ask(judges, stage, sender, &self.ctx.metrics, self.peer.ip()).await;
        self.policy = judges;
        v
    }

    fn cert_names(&self) -> Vec<String> {
        self.tls
            .as_ref()
            .and_then(|t| t.client_certificate.as_ref())
            .map(|c| c.names())
            .unwrap_or_default()
    }

    fn log_decision(&self, stage: &str, address: &str, v: &Verdict) {
        self.ctx
            .metrics
            .decision(stage, v.reason.as_deref(), v.tenant.as_deref(), v.code);
        let verified = self
            .tls
            .as_ref()
            .and_then(|t| t.client_certificate.as_ref())
            .map(|c| c.verified);
        info!(
            target: "attrelay::decision",
            client = %self.peer.ip(),
            helo = self.helo.as_deref().unwrap_or(""),
            tls = self.tls.as_ref().map(|t| t.protocol.as_str()).unwrap_or("none"),
            cert_names = ?self.cert_names(),
            cert_verified = ?verified,
            stage,
            address,
            tenant = v.tenant.as_deref().unwrap_or("-"),
            reply = %v.reply_line(),
            reason = v.reason.as_deref().unwrap_or("-"),
            policy = self.eval.policy.origin(),
            "decision"
        );
        if v.reason.as_deref() == Some("policy-failure") {
            warn!(client = %self.peer.ip(), why = ?v.explanation, "policy failure");
        }
    }

    async fn mail(&mut self, address: String) -> std::io::Result<Flow> {
        if self.helo.is_none() {
            return self.error(503, "5.5.1", "Send EHLO or HELO first").await;
        }
        if self.tx.is_some() {
            return self.error(503, "5.5.1", "Nested MAIL command").await;
        }
        let v = self.ask(Stage::Mail(address.clone())).await;
        self.log_decision("mail-from", &address, &v);
        if v.action == Action::Accept {
            self.tx = Some(Transaction {
                sender: address,
                recipients: Vec::new(),
            });
        }
        self.send(format!("{}\r\n", v.reply_line())).await?;
        Ok(Flow::Continue)
    }

    async fn rcpt(&mut self, address: String) -> std::io::Result<Flow> {
        let Some(count) = self.tx.as_ref().map(|t| t.recipients.len()) else {
            return self.error(503, "5.5.1", "Send MAIL first").await;
        };
        if count >= self.ctx.limits.max_recipients {
            self.send(reply(452, "4.5.3", "Too many recipients"))
                .await?;
            return Ok(Flow::Continue);
        }
        let v = self.ask(Stage::Rcpt(address.clone())).await;
        self.log_decision("rcpt-to", &address, &v);
        if v.action == Action::Accept
            && let Some(tx) = self.tx.as_mut()
        {
            tx.recipients.push(Accepted {
                address,
                tenant: v.tenant.clone(),
                headers: v.headers.clone(),
            });
        }
        self.send(format!("{}\r\n", v.reply_line())).await?;
        Ok(Flow::Continue)
    }

    async fn data(&mut self) -> std::io::Result<Flow> {
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
        let mut reader = DataReader::new(
            self.ctx.limits.max_message_size,
            self.ctx.limits.bare_line_endings,
        );
        loop {
            if let Some(n) = reader.feed(&self.conn.rbuf) {
                self.conn.rbuf.drain(..n);
                break;
            }
            self.conn.rbuf.clear();
            match timeout(self.ctx.limits.data_timeout, self.conn.fill()).await {
                Ok(Ok(0)) => return Ok(Flow::Close),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    self.conn.queue(&reply(
                        421,
                        "4.4.2",
                        "Timeout waiting for message data, closing connection",
                    ));
                    self.conn.flush().await?;
                    return Ok(Flow::Close);
                }
            }
        }
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
        let message = reader.into_message();
        let ctx = self.ctx.clone();
        let mut prepared = self.prepare(&tx, &message);
        // Durable before the reply: fsyncs run on the blocking pool.
        let stored = tokio::task::spawn_blocking(move || {
            let mut done: Vec<Envelope> = Vec::new();
            for (envelope, bytes) in &mut prepared {
                if let Err(e) = ctx.spool.store(envelope, bytes) {
                    for d in &done {
                        let _ = ctx.spool.remove(&d.id);
                    }
                    return Err(e);
                }
                done.push(envelope.clone());
            }
            Ok(done)
        })
        .await;
        match stored {
            Ok(Ok(envelopes)) => {
                let ids: Vec<String> = envelopes.iter().map(|e| e.id.clone()).collect();
                for e in envelopes {
                    info!(
                        target: "attrelay::queue",
                        queue_id = %e.id,
                        client = %self.peer.ip(),
                        sender = %e.sender,
                        recipients = e.recipients.len(),
                        tenant = e.tenant.as_deref().unwrap_or("-"),
                        size = message.len(),
                        "queued"
                    );
                    self.ctx.queue.enqueue(e);
                }
                self.send(reply(
                    250,
                    "2.0.0",
                    &format!("Ok: queued as {}", ids.join(" ")),
                ))
                .await?;
            }
            Ok(Err(e)) => {
                warn!(client = %self.peer.ip(), error = %e, "spool write failed: message refused with 451");
                self.send(reply(
                    451,
                    "4.3.0",
                    "Local error in processing; try again later",
                ))
                .await?;
            }
            Err(e) => {
                warn!(client = %self.peer.ip(), error = %e, "spool task failed: message refused with 451");
                self.send(reply(
                    451,
                    "4.3.0",
                    "Local error in processing; try again later",
                ))
                .await?;
            }
        }
        Ok(Flow::Continue)
    }

    /// One spool entry per attributed tenant, each with its trace headers.
    fn prepare(&self, tx: &Transaction, message: &[u8]) -> Vec<(Envelope, Vec<u8>)> {
        let mut groups: BTreeMap<Option<String>, Vec<&Accepted>> = BTreeMap::new();
        for r in &tx.recipients {
            groups.entry(r.tenant.clone()).or_default().push(r);
        }
        let body = strip_header_fields(message, TRUSTED_HEADERS);
        let mut out = Vec::new();
        for (tenant, recipients) in groups {
            let id = self.ctx.spool.new_id();
            let mut headers = String::new();
            let for_clause = match recipients.as_slice() {
                [one] => format!("\r\n\tfor <{}>", one.address),
                _ => String::new(),
            };
            headers.push_str(&format!(
                "Received: from {} ([{}])\r\n\tby {} (attrelay) with {}{}\r\n\tid {id}{for_clause};\r\n\t{}\r\n",
                self.helo.as_deref().unwrap_or("unknown"),
                self.peer.ip(),
                self.ctx.hostname,
                if self.tls.is_some() { "ESMTPS" } else if self.esmtp { "ESMTP" } else { "SMTP" },
                self.tls_comment(),
                rfc2822_now()
            ));
            if let Some(t) = &tenant {
                headers.push_str(&format!("X-Attributed-Tenant: {t}\r\n"));
            }
            let mut seen: Vec<&HeaderField> = Vec::new();
            for h in recipients.iter().flat_map(|r| &r.headers) {
                if !seen.contains(&h) {
                    headers.push_str(&format!("{}: {}\r\n", h.name, h.value));
                    seen.push(h);
                }
            }
            let mut bytes = headers.into_bytes();
            bytes.extend_from_slice(&body);
            let envelope = Envelope {
                id,
                sender: tx.sender.clone(),
                recipients: recipients
                    .iter()
                    .map(|r| Recipient {
                        address: r.address.clone(),
                        state: RecipientState::Pending,
                    })
                    .collect(),
                tenant,
                received_at: now(),
                attempts: 0,
                next_attempt: now(),
                last_error: None,
                is_dsn: false,
                client: self.peer.ip().to_string(),
                message_sha256: String::new(),
                message_len: 0,
            };
            out.push((envelope, bytes));
        }
        out
    }

    fn tls_comment(&self) -> String {
        let Some(t) = &self.tls else {
            return String::new();
        };
        let mut s = format!("\r\n\t(version={} cipher={}", t.protocol, t.cipher);
        match &t.client_certificate {
            Some(c) => s.push_str(&format!(
                "\r\n\tclient certificate \"{}\" {})",
                c.subject.replace(['"', '\\'], ""),
                if c.verified {
                    "verified"
                } else {
                    "not verified"
                }
            )),
            None => s.push_str(" no client certificate)"),
        }
        s
    }
}

/// The current time in RFC 5322 form.
fn rfc2822_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default()
}

/// Removes header fields named `names` (lower case) from the header section
/// of `message`, continuation lines included; the body is untouched.
pub fn strip_header_fields(message: &[u8], names: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len());
    let mut pos = 0;
    let mut dropping = false;
    while pos < message.len() {
        let end = message[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| pos + i + 1)
            .unwrap_or(message.len());
        let line = &message[pos..end];
        if line == b"\r\n" || line == b"\n" {
            // End of the header section: copy the rest verbatim.
            out.extend_from_slice(&message[pos..]);
            return out;
        }
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            let name = line.iter().position(|&b| b == b':').map(|i| &line[..i]);
            dropping = name
                .map(|n| names.iter().any(|x| n.eq_ignore_ascii_case(x.as_bytes())))
                .unwrap_or(false);
        }
        if !dropping {
            out.extend_from_slice(line);
        }
        pos = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_trace_headers_are_removed_from_the_header_section_only() {
        let m = b"X-Attributed-Tenant: forged\r\n\tcontinued\r\nSubject: hi\r\nx-attrelay-warning: no\r\n\r\nX-Attributed-Tenant: body text\r\n";
        assert_eq!(
            strip_header_fields(m, TRUSTED_HEADERS),
            b"Subject: hi\r\n\r\nX-Attributed-Tenant: body text\r\n".to_vec()
        );
    }
}
