//! One SMTP session (RFC 5321, with STARTTLS per RFC 3207 and PIPELINING per
//! RFC 2920): the command loop, the policy calls, and durable acceptance.
//!
//! The policy instance is opened at the first MAIL FROM, when the facts it
//! needs (HELO, TLS, client certificate) are known, and dropped whenever they
//! change (STARTTLS, a new EHLO) or a reload reaches the session (at its next
//! MAIL FROM). Policy calls run on the blocking pool: a call may take up to
//! its time budget, and must not stall other sessions.
//!
//! MAIL and RCPT arguments are parsed by [`crate::address`], whose canonical
//! mailbox is what the policy judges and what is spooled and written onward;
//! trace headers are composed by [`super::trace`], the one place facts
//! become header text.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use attrelay_policy::model::{Action, HeaderField, SessionFacts, TlsFacts, Verdict};
use rustls_pki_types::CertificateDer;
use smtp_proto::{Error as ParseError, Request};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, info, warn};

use super::context::{Evaluation, ServerContext};
use super::data::{BareLineEndings, DataReader};
use super::stream::{Connection, Line, Stream};
use super::trace;
use crate::address::{self, ArgumentError, ForwardPath, MailArgs, RcptArgs};
use crate::directory::canonical_ip;
use crate::judges::{Judges, Stage, ask};
use crate::spool::{Envelope, Recipient, RecipientState, now};
use crate::tls::client_cert::{inspect_chain, unix_time};
use crate::tls::server::{cipher_name, protocol_name};

/// Tenants one message may be attributed to: it is spooled once per tenant.
pub const MAX_TENANTS_PER_MESSAGE: usize = 8;

struct Accepted {
    /// The canonical mailbox (see [`crate::address`]): judged, spooled and
    /// written onward in exactly this form.
    address: String,
    tenant: Option<String>,
    /// The verdict's reason, which says whether a connector vouched for the
    /// sender (for the DSN policy).
    reason: Option<String>,
    /// The grace-period warning the relay writes for this recipient
    /// ([`attrelay_policy::replies::grace_warning`]).
    warning: Option<String>,
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
    /// The client's certificate chain, kept to verify it again against the
    /// trust anchors of a reloaded evaluation.
    chain: Option<Vec<CertificateDer<'static>>>,
    policy: Option<Judges>,
    /// The decision-log allowance of the whole connection, shared by every
    /// `Judges` it makes (a new EHLO must not renew it).
    decisions: crate::decisions::DecisionBudget,
    tx: Option<Transaction>,
    errors: u32,
    /// When the session must end (`max_session`): every wait for the client
    /// stops here, but work already under way (a message being spooled)
    /// finishes first.
    deadline: Instant,
}

fn reply(code: u16, enhanced: &str, text: &str) -> String {
    format!("{code} {enhanced} {text}\r\n")
}

impl Session {
    pub fn new(ctx: Arc<ServerContext>, tcp: tokio::net::TcpStream, peer: SocketAddr) -> Session {
        let eval = ctx.evaluation.load_full();
        let deadline = Instant::now() + ctx.limits.max_session;
        Session {
            ctx,
            conn: Connection::new(tcp),
            peer: SocketAddr::new(canonical_ip(peer.ip()), peer.port()),
            eval,
            helo: None,
            esmtp: false,
            tls: None,
            chain: None,
            policy: None,
            decisions: Default::default(),
            tx: None,
            errors: 0,
            deadline,
        }
    }

    /// Runs the session to its end. I/O errors end it quietly: the client left.
    ///
    /// The session deadline is enforced where the session waits for the
    /// client (commands, message data), so that a message being spooled when
    /// it passes is still queued and answered. The hard stop here, a little
    /// later, only catches a client that stops reading our replies; even
    /// then a spooled message is queued (see [`store`]).
    pub async fn run(mut self) {
        let peer = self.peer;
        let backstop = self.deadline + Self::BACKSTOP;
        match timeout_at(backstop, self.serve()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(client = %peer, error = %e, "session ended by I/O error"),
            Err(_) => {
                info!(client = %peer, "session hard deadline reached: closing");
                return;
            }
        }
        let _ = timeout(Self::BACKSTOP, self.conn.flush()).await;
    }

    /// How long past its deadline a session that does not read its replies
    /// may last.
    const BACKSTOP: Duration = Duration::from_secs(30);

    /// Ends the session with `421 4.4.2` when a wait for the client that
    /// ended at `at` timed out: the session deadline's text when `at` was
    /// the session deadline, `text` (which timeout it was) otherwise.
    async fn timed_out(&mut self, at: Instant, text: &str) -> std::io::Result<()> {
        let text = if at == self.deadline {
            info!(client = %self.peer, "session deadline reached: 421");
            "Session time limit exceeded, closing connection"
        } else {
            text
        };
        self.conn.queue(&reply(421, "4.4.2", text));
        self.conn.flush().await
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
        let idle = Instant::now() + self.ctx.limits.idle_timeout;
        let deadline = idle.min(self.deadline);
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
                        let text = format!("{} Idle timeout, closing connection", self.ctx.hostname);
                        self.timed_out(deadline, &text).await?;
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
        self.count_error().await;
        self.send(reply(code, enhanced, text)).await?;
        Ok(Flow::Continue)
    }

    /// Counts an error (a bad command, a refused or deferred recipient)
    /// and, past the soft limit, waits before the reply: longer with every
    /// further error. The hard limit ends the session (see [`Self::serve`]).
    async fn count_error(&mut self) {
        self.errors += 1;
        let limits = &self.ctx.limits;
        let over = self.errors.saturating_sub(limits.soft_errors);
        if over > 0 && self.errors < limits.max_errors {
            let delay = limits.error_delay.saturating_mul(over);
            tokio::time::sleep_until((Instant::now() + delay).min(self.deadline)).await;
        }
    }

    async fn command(&mut self, line: &[u8]) -> std::io::Result<Flow> {
        // MAIL and RCPT never go through smtp-proto, whose parser unquotes
        // local parts lossily: their paths are parsed by `crate::address`,
        // whose canonical form is what the policy judges and what is
        // written onward.
        match envelope_command(line) {
            Some(EnvelopeCommand::Mail(Ok(args))) => return self.mail(args).await,
            Some(EnvelopeCommand::Rcpt(Ok(args))) => return self.rcpt(args).await,
            Some(EnvelopeCommand::Mail(Err(e))) => return self.argument_error(e, true).await,
            Some(EnvelopeCommand::Rcpt(Err(e))) => return self.argument_error(e, false).await,
            None => {}
        }
        let request = Request::parse(&mut line.iter()).map(|r| r.into_owned());
        let request = match request {
            Ok(r) => r,
            Err(e) => return self.parse_error(e).await,
        };
        match request {
            Request::Ehlo { host } => self.hello(host, true).await,
            Request::Helo { host } => self.hello(host, false).await,
            Request::StartTls => self.starttls().await,
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

    /// The reply to a MAIL (`sender`) or RCPT argument that was refused.
    async fn argument_error(&mut self, e: ArgumentError, sender: bool) -> std::io::Result<Flow> {
        let detail = if sender { "5.1.7" } else { "5.1.3" };
        let who = if sender { "sender" } else { "recipient" };
        match e {
            ArgumentError::Address(a) if a == address::AddressError::EightBit => {
                self.error(553, "5.6.7", &format!("Bad {who} address: {a}"))
                    .await
            }
            ArgumentError::Address(a) if a.is_unacceptable() => {
                self.error(553, detail, &format!("Bad {who} address: {a}"))
                    .await
            }
            ArgumentError::Address(a) => {
                self.error(501, detail, &format!("Bad {who} address syntax: {a}"))
                    .await
            }
            ArgumentError::Unsupported(p) => {
                self.error(555, "5.5.4", &format!("Unsupported parameter {p}"))
                    .await
            }
            other => {
                self.error(501, "5.5.4", &format!("Syntax error: {other}"))
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
        let chain = chain.filter(|c| !c.is_empty());
        let client_certificate = chain
            .as_ref()
            .and_then(|c| certificate_facts(c, &self.eval, self.peer));
        self.chain = chain;
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
            None => Judges::new(self.eval.clone(), self.facts(), &self.peer.to_string())
                .with_decision_budget(self.decisions.clone()),
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
            reply = ?v.reply_line(),
            reason = v.reason.as_deref().unwrap_or("-"),
            policy = self.eval.policy.origin(),
            "decision"
        );
        if v.reason.as_deref() == Some("policy-failure") {
            warn!(client = %self.peer.ip(), why = ?v.explanation, "policy failure");
        }
    }

    /// A reload reaches an open session here, at the start of its next
    /// transaction: a removed connector, tenant or trust anchor stops
    /// authorising from this MAIL FROM on. The client certificate is
    /// verified again against the new anchors. A transaction under way
    /// finished under the evaluation that judged it.
    fn refresh_evaluation(&mut self) {
        let current = self.ctx.evaluation.load();
        if current.generation == self.eval.generation {
            return;
        }
        self.eval = arc_swap::Guard::into_inner(current);
        self.policy = None;
        if let (Some(tls), Some(chain)) = (self.tls.as_mut(), self.chain.as_ref()) {
            tls.client_certificate = certificate_facts(chain, &self.eval, self.peer);
        }
        debug!(client = %self.peer, generation = self.eval.generation, "session moved to the reloaded evaluation");
    }

    async fn mail(&mut self, args: MailArgs) -> std::io::Result<Flow> {
        if self.helo.is_none() {
            return self.error(503, "5.5.1", "Send EHLO or HELO first").await;
        }
        if self.tx.is_some() {
            return self.error(503, "5.5.1", "Nested MAIL command").await;
        }
        let max = self.ctx.limits.max_message_size;
        if args.size.is_some_and(|s| s > max as u64) {
            let text = format!("Message size exceeds the limit of {max} bytes");
            return self.error(552, "5.3.4", &text).await;
        }
        if let Err(e) = self.ctx.spool.ensure_room(args.size.unwrap_or(0)) {
            warn!(client = %self.peer.ip(), error = %e, "spool short of space: MAIL refused with 452");
            self.send(reply(452, "4.3.1", "Insufficient system storage"))
                .await?;
            return Ok(Flow::Continue);
        }
        self.refresh_evaluation();
        let address = args.path.text();
        let v = self.ask(Stage::Mail(address.clone())).await;
        self.log_decision("mail-from", &address, &v);
        if v.action == Action::Accept {
            self.tx = Some(Transaction {
                sender: address,
                recipients: Vec::new(),
            });
        } else {
            self.count_error().await;
        }
        self.send(format!("{}\r\n", v.reply_line())).await?;
        Ok(Flow::Continue)
    }

    async fn rcpt(&mut self, args: RcptArgs) -> std::io::Result<Flow> {
        let Some(count) = self.tx.as_ref().map(|t| t.recipients.len()) else {
            return self.error(503, "5.5.1", "Send MAIL first").await;
        };
        if count >= self.ctx.limits.max_recipients {
            self.send(reply(452, "4.5.3", "Too many recipients"))
                .await?;
            return Ok(Flow::Continue);
        }
        let mailbox = match args.path {
            ForwardPath::Postmaster => return self.postmaster().await,
            ForwardPath::Mailbox(m) => m,
        };
        let address = mailbox.to_string();
        let v = self.ask(Stage::Rcpt(address.clone())).await;
        self.log_decision("rcpt-to", &address, &v);
        if v.action != Action::Accept {
            // Refused and deferred recipients are errors: a client probing
            // addresses or trying to relay slows down, then is cut off.
            // (452 asks to send the recipient again later: no fault.)
            if v.code != 452 {
                self.count_error().await;
            }
            self.send(format!("{}\r\n", v.reply_line())).await?;
            return Ok(Flow::Continue);
        }
        let line = match self.admit(Accepted {
            address,
            tenant: v.tenant.clone(),
            reason: v.reason.clone(),
            warning: attrelay_policy::replies::grace_warning(&v).map(str::to_string),
            headers: v.headers.clone(),
        }) {
            Ok(()) => format!("{}\r\n", v.reply_line()),
            Err(refusal) => refusal,
        };
        self.send(line).await?;
        Ok(Flow::Continue)
    }

    /// Adds an accepted recipient to the transaction — only an accepted one
    /// ever is. A recipient given twice is kept once. The message is spooled
    /// once per attributed tenant, so a recipient of one tenant more than
    /// [`MAX_TENANTS_PER_MESSAGE`] gets `452 4.5.3` (the client sends it
    /// again in another transaction): one message cannot be multiplied by
    /// addressing every tenant. `Err` is the reply line then.
    fn admit(&mut self, recipient: Accepted) -> Result<(), String> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(reply(503, "5.5.1", "Send MAIL first"));
        };
        if tx.recipients.iter().any(|r| r.address == recipient.address) {
            return Ok(());
        }
        let mut tenants: Vec<&Option<String>> = tx.recipients.iter().map(|r| &r.tenant).collect();
        tenants.sort();
        tenants.dedup();
        if !tenants.contains(&&recipient.tenant) && tenants.len() >= MAX_TENANTS_PER_MESSAGE {
            return Err(reply(
                452,
                "4.5.3",
                "Too many tenants in one message; send this recipient in another",
            ));
        }
        tx.recipients.push(recipient);
        Ok(())
    }

    /// `RCPT TO:<postmaster>` (RFC 5321 4.5.1: every server must accept
    /// it): delivered to the configured postmaster address, which the
    /// operator chose, so no policy is asked. It carries no tenant.
    async fn postmaster(&mut self) -> std::io::Result<Flow> {
        let address = self.ctx.postmaster.clone();
        let v = attrelay_policy::replies::recipient_ok(None, "postmaster");
        self.log_decision("rcpt-to", &address, &v);
        let line = match self.admit(Accepted {
            address,
            tenant: None,
            reason: v.reason.clone(),
            warning: None,
            headers: Vec::new(),
        }) {
            Ok(()) => format!("{}\r\n", v.reply_line()),
            Err(refusal) => refusal,
        };
        self.send(line).await?;
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
        let Some(reader) = self.read_data().await? else {
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
        let message = reader.into_message();
        let hops = trace::count_received(&message);
        if hops > self.ctx.limits.max_hops {
            info!(client = %self.peer.ip(), hops, "message refused: mail loop (too many Received fields)");
            let text = format!("Too many hops ({hops} Received fields): mail loop?");
            return self.error(554, "5.4.6", &text).await;
        }
        let prepared = Prepared {
            copies: self.prepare(&tx),
            body: trace::strip_trusted(&message),
        };
        drop(message);
        let line = store(self.ctx.clone(), self.peer.ip(), prepared).await;
        self.send(line).await?;
        Ok(Flow::Continue)
    }

    /// Reads the message data up to `CRLF.CRLF`; `None` when the session
    /// must end (client gone, data timeout or session deadline: 421).
    async fn read_data(&mut self) -> std::io::Result<Option<DataReader>> {
        let mut reader = DataReader::new(
            self.ctx.limits.max_message_size,
            self.ctx.limits.bare_line_endings,
        );
        loop {
            if let Some(n) = reader.feed(&self.conn.rbuf) {
                self.conn.rbuf.drain(..n);
                return Ok(Some(reader));
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

    /// One envelope per attributed tenant, each with its trace headers
    /// (composed by [`trace::compose`], the one place facts become header
    /// text), to go before the client's message without its copies of our
    /// trust headers.
    fn prepare(&self, tx: &Transaction) -> Vec<(Envelope, String)> {
        let mut groups: BTreeMap<Option<String>, Vec<&Accepted>> = BTreeMap::new();
        for r in &tx.recipients {
            groups.entry(r.tenant.clone()).or_default().push(r);
        }
        let date = rfc2822_now();
        let with = if self.tls.is_some() {
            "ESMTPS"
        } else if self.esmtp {
            "ESMTP"
        } else {
            "SMTP"
        };
        let mut out = Vec::new();
        for (tenant, recipients) in groups {
            let id = self.ctx.spool.new_id();
            let mut policy_headers: Vec<HeaderField> = Vec::new();
            for h in recipients.iter().flat_map(|r| &r.headers) {
                if !policy_headers.contains(h) {
                    policy_headers.push(h.clone());
                }
            }
            let warnings: Vec<String> = recipients
                .iter()
                .filter_map(|r| r.warning.clone())
                .collect();
            let headers = trace::compose(&trace::TraceFacts {
                helo: self.helo.as_deref().unwrap_or("unknown"),
                client_ip: self.peer.ip(),
                hostname: &self.ctx.hostname,
                with,
                queue_id: &id,
                for_recipient: match recipients.as_slice() {
                    [one] => Some(one.address.as_str()),
                    _ => None,
                },
                tls: self.tls.as_ref(),
                date: &date,
                tenant: tenant.as_deref(),
                warnings: &warnings,
                policy_headers: &policy_headers,
            });
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
                authenticated: recipients
                    .iter()
                    .all(|r| crate::policy::verdict::vouches_for_sender(r.reason.as_deref())),
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
            out.push((envelope, headers));
        }
        out
    }
}

/// Spools the prepared messages durably and queues them; returns the
/// reply line. It runs as a task of its own: if the session is cut off
/// meanwhile, a message that reached the spool is still queued, never
/// left committed but undelivered until a restart.
async fn store(ctx: Arc<ServerContext>, client: std::net::IpAddr, prepared: Prepared) -> String {
    let size = prepared.body.len();
    let task = tokio::spawn(async move {
        let spool = ctx.spool.clone();
        let stored = tokio::task::spawn_blocking(move || store_all(&spool, prepared)).await;
        match stored {
            Ok(Ok(envelopes)) => {
                let ids: Vec<String> = envelopes.iter().map(|e| e.id.clone()).collect();
                for e in envelopes {
                    info!(
                        target: "attrelay::queue",
                        queue_id = %e.id,
                        client = %client,
                        sender = ?e.sender,
                        recipients = e.recipients.len(),
                        tenant = e.tenant.as_deref().unwrap_or("-"),
                        size,
                        "queued"
                    );
                    ctx.queue.enqueue(e);
                }
                reply(250, "2.0.0", &format!("Ok: queued as {}", ids.join(" ")))
            }
            Ok(Err(e)) if e.is_full() => {
                warn!(client = %client, error = %e, "spool full: message refused with 452");
                reply(452, "4.3.1", "Insufficient system storage")
            }
            Ok(Err(e)) => {
                warn!(client = %client, error = %e, "spool write failed: message refused with 451");
                reply(451, "4.3.0", "Local error in processing; try again later")
            }
            Err(e) => {
                warn!(client = %client, error = %e, "spool task failed: message refused with 451");
                reply(451, "4.3.0", "Local error in processing; try again later")
            }
        }
    });
    task.await
        .unwrap_or_else(|_| reply(451, "4.3.0", "Local error in processing; try again later"))
}

/// A message ready for the spool: one envelope and trace-header block per
/// attributed tenant, and the client's message (without its trust headers)
/// they all share.
struct Prepared {
    copies: Vec<(Envelope, String)>,
    body: Vec<u8>,
}

/// Stores every prepared message, or none: when one fails, those already
/// stored are removed, so that the client's retry is no duplicate.
fn store_all(
    spool: &crate::spool::Spool,
    prepared: Prepared,
) -> Result<Vec<Envelope>, crate::spool::SpoolError> {
    let mut done: Vec<Envelope> = Vec::new();
    for (mut envelope, headers) in prepared.copies {
        // One copy in memory at a time, however many tenants.
        let mut bytes = headers.into_bytes();
        bytes.extend_from_slice(&prepared.body);
        if let Err(e) = spool.store(&mut envelope, &bytes) {
            for d in &done {
                let _ = spool.remove(&d.id);
            }
            return Err(e);
        }
        done.push(envelope);
    }
    Ok(done)
}

/// A MAIL or RCPT command with its arguments parsed (or why they were refused).
enum EnvelopeCommand {
    Mail(Result<MailArgs, ArgumentError>),
    Rcpt(Result<RcptArgs, ArgumentError>),
}

/// Recognises MAIL and RCPT (any case) and parses their arguments with
/// [`crate::address`]; `None` for every other command. A MAIL or RCPT
/// whose `FROM:`/`TO:` is misspelt is a syntax error here, never handed to
/// another parser.
fn envelope_command(line: &[u8]) -> Option<EnvelopeCommand> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let verb = line.get(..4)?;
    let after = |prefix: &[u8]| {
        line.get(..prefix.len())
            .filter(|p| p.eq_ignore_ascii_case(prefix))
            .map(|_| &line[prefix.len()..])
            .ok_or(ArgumentError::Syntax(
                "MAIL FROM:<address> or RCPT TO:<address>",
            ))
    };
    let at_word_end = line.get(4).is_none_or(|b| *b == b' ');
    if verb.eq_ignore_ascii_case(b"MAIL") && at_word_end {
        Some(EnvelopeCommand::Mail(
            after(b"MAIL FROM:").and_then(address::parse_mail),
        ))
    } else if verb.eq_ignore_ascii_case(b"RCPT") && at_word_end {
        Some(EnvelopeCommand::Rcpt(
            after(b"RCPT TO:").and_then(address::parse_rcpt),
        ))
    } else {
        None
    }
}

/// The certificate facts of `chain` under `eval`'s trust anchors, at the
/// current time; `None` (no certificate, never authentication) when the
/// leaf cannot be parsed.
fn certificate_facts(
    chain: &[CertificateDer<'static>],
    eval: &Evaluation,
    peer: SocketAddr,
) -> Option<attrelay_policy::model::ClientCertificate> {
    match inspect_chain(chain, &eval.anchors, unix_time(now())) {
        Ok(c) => Some(c),
        Err(e) => {
            info!(client = %peer, error = %e, "client certificate ignored");
            None
        }
    }
}

/// The current time in RFC 5322 form.
fn rfc2822_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default()
}
