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
//! trace headers are composed by [`crate::intake::trace`], the one place facts
//! become header text.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use attrelay_policy::model::{SessionFacts, TlsFacts, Verdict};
use smtp_proto::{Error as ParseError, Request};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{Instrument as _, debug, info, warn};

use super::context::ServerContext;
use super::stream::{Connection, Io, Line};
use crate::address::{self, ArgumentError, MailArgs, RcptArgs};
use crate::clock::now;
use crate::directory::canonical_ip;
use crate::evaluation::Evaluation;
use crate::evaluation::{Judges, Stage};
use crate::intake::Accepted;
use crate::judges::ask;

mod data;
mod ehlo;
mod mail;
mod rcpt;
mod starttls;

/// Tenants one message may be attributed to: it is spooled once per tenant.
pub const MAX_TENANTS_PER_MESSAGE: usize = 8;

struct Transaction {
    sender: String,
    recipients: Vec<Accepted>,
}

enum Flow {
    Continue,
    Close,
}

pub struct Session<S> {
    ctx: Arc<ServerContext>,
    conn: Connection<S>,
    peer: SocketAddr,
    /// The session's name in every log line of it (a `session{id=...}`
    /// span) and in the decision log: the client's address and port and a
    /// number unique within the process.
    id: String,
    /// Messages answered `250`.
    messages: u32,
    /// The policy and directory this session started with: a reload never
    /// changes them under a session in flight.
    eval: Arc<Evaluation>,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsFacts>,
    /// The client's certificate chain, kept to verify it again against the
    /// trust anchors of a reloaded evaluation.
    chain: Option<crate::tls::facts::Chain>,
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

/// A number for the next session's id.
fn next_number() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn reply(code: u16, enhanced: &str, text: &str) -> String {
    format!("{code} {enhanced} {text}\r\n")
}

impl<S: Io> Session<S> {
    pub fn new(ctx: Arc<ServerContext>, io: S, peer: SocketAddr) -> Session<S> {
        let eval = ctx.evaluation.load_full();
        let deadline = Instant::now() + ctx.limits.max_session;
        let peer = SocketAddr::new(canonical_ip(peer.ip()), peer.port());
        Session {
            ctx,
            conn: Connection::new(io),
            id: format!("{peer}-{}", next_number()),
            messages: 0,
            peer,
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
    /// then a spooled message is queued (see `store`).
    pub async fn run(self) {
        let span = tracing::info_span!("session", id = %self.id);
        self.run_logged().instrument(span).await
    }

    /// [`Session::run`], with a line when the session opens and one when
    /// it closes (how long, how many messages, how many commands refused),
    /// as Postfix's `connect from` and `disconnect from`.
    async fn run_logged(mut self) {
        let opened = std::time::Instant::now();
        info!(target: "attrelay::session", client = %self.peer.ip(), port = self.peer.port(), "connect");
        self.run_to_end().await;
        info!(
            target: "attrelay::session",
            client = %self.peer.ip(),
            duration_ms = opened.elapsed().as_millis() as u64,
            messages = self.messages,
            refused = self.errors,
            "disconnect"
        );
    }

    async fn run_to_end(&mut self) {
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
            None => Judges::with_id(self.eval.clone(), self.facts(), self.id.clone())
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
