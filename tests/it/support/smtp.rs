//! A minimal SMTP client and a recording next hop, for driving the relay
//! over loopback TCP in tests. (Interop with third-party clients is tested
//! separately with swaks and Python's smtplib.)
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A reply: code, enhanced code (if any), text of the last line, all lines.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub enhanced: String,
    pub text: String,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn is(&self, code: u16, enhanced: &str) -> bool {
        self.code == code && self.enhanced == enhanced
    }
}

pub struct Client {
    io: Option<BufReader<Box<dyn Io>>>,
}

pub const TIMEOUT: Duration = Duration::from_secs(20);

impl Client {
    /// A client on a connected stream (after a PROXY header, say); reads the
    /// greeting and asserts it is `220`.
    pub async fn from_stream(tcp: TcpStream) -> Client {
        let mut c = Client {
            io: Some(BufReader::new(Box::new(tcp) as Box<dyn Io>)),
        };
        let greeting = c.read().await;
        assert_eq!(greeting.code, 220, "{greeting:?}");
        c
    }

    /// Connects from `source` (any 127.0.0.0/8 address works on loopback) and reads the greeting.
    pub async fn connect_from(server: SocketAddr, source: IpAddr) -> (Client, Reply) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let tcp = tokio::time::timeout(TIMEOUT, socket.connect(server))
            .await
            .unwrap()
            .unwrap();
        let mut c = Client {
            io: Some(BufReader::new(Box::new(tcp) as Box<dyn Io>)),
        };
        let greeting = c.read().await;
        (c, greeting)
    }

    /// A session ready for MAIL FROM: connected from `source`, greeted, EHLO
    /// said, and with `cert` (PEM chain and key files) STARTTLS with that
    /// client certificate and EHLO again.
    pub async fn session(server: SocketAddr, source: &str, cert: Option<(&Path, &Path)>) -> Client {
        let (mut c, greeting) = Self::connect_from(server, source.parse().unwrap()).await;
        assert_eq!(greeting.code, 220, "{greeting:?}");
        assert_eq!(c.cmd("EHLO client.example.test").await.code, 250);
        if cert.is_some() {
            assert_eq!(c.starttls(cert).await.code, 220);
            assert_eq!(c.cmd("EHLO client.example.test").await.code, 250);
        }
        c
    }

    /// A session over an in-memory pipe, never the network: the relay's
    /// own `Session` runs on one end with `ctx`, as if the client were at
    /// `peer`, and this client on the other. Returns it with the greeting.
    pub async fn in_memory(
        ctx: Arc<attrelay::smtp::ServerContext>,
        peer: SocketAddr,
    ) -> (Client, Reply) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(attrelay::smtp::Session::new(ctx, theirs, peer).run());
        let mut c = Client {
            io: Some(BufReader::new(Box::new(ours) as Box<dyn Io>)),
        };
        let greeting = c.read().await;
        (c, greeting)
    }

    /// Sends `line` and asserts that the reply starts with `expect` (a
    /// code, or a code and its enhanced code: `"550 5.7.64"`). One line
    /// per step of a dialogue.
    pub async fn expect(&mut self, line: &str, expect: &str) -> Reply {
        let r = self.cmd(line).await;
        let last = r.lines.last().cloned().unwrap_or_default();
        assert!(
            last.starts_with(expect),
            "{line:?}: expected {expect:?}, got {:?}",
            r.lines
        );
        r
    }

    pub async fn connect(server: SocketAddr) -> (Client, Reply) {
        Self::connect_from(server, "127.0.0.1".parse().unwrap()).await
    }

    /// Reads one (possibly multi-line) reply; code 0 when the server closed.
    pub async fn read(&mut self) -> Reply {
        let io = self.io.as_mut().unwrap();
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(TIMEOUT, io.read_line(&mut line))
                .await
                .expect("reply timeout")
                .unwrap_or(0);
            if n == 0 {
                return Reply {
                    code: 0,
                    enhanced: String::new(),
                    text: "connection closed".into(),
                    lines,
                };
            }
            let line = line.trim_end().to_string();
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.clone());
            if !more {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                let rest = line.get(4..).unwrap_or("");
                let (enhanced, text) = match rest.split_once(' ') {
                    Some((e, t))
                        if e.split('.').count() == 3
                            && e.starts_with(|c: char| c.is_ascii_digit()) =>
                    {
                        (e.to_string(), t.to_string())
                    }
                    _ => (String::new(), rest.to_string()),
                };
                return Reply {
                    code,
                    enhanced,
                    text,
                    lines,
                };
            }
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let io = self.io.as_mut().unwrap();
        io.get_mut().write_all(bytes).await.unwrap();
        io.get_mut().flush().await.unwrap();
    }

    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
        self.read().await
    }

    /// STARTTLS with an optional client certificate (PEM chain and key files).
    pub async fn starttls(&mut self, cert: Option<(&Path, &Path)>) -> Reply {
        let r = self.cmd("STARTTLS").await;
        if r.code == 220 {
            self.finish_tls(cert).await;
        }
        r
    }

    /// The TLS handshake after the server's 220 to STARTTLS.
    pub async fn finish_tls(&mut self, cert: Option<(&Path, &Path)>) {
        let config = attrelay::tls::client_config(&[], cert).unwrap();
        let connector = tokio_rustls::TlsConnector::from(config);
        let io = self.io.take().unwrap().into_inner();
        let name = rustls_pki_types::ServerName::try_from("relay.example.test").unwrap();
        let tls = tokio::time::timeout(TIMEOUT, connector.connect(name, io))
            .await
            .unwrap()
            .unwrap();
        self.io = Some(BufReader::new(Box::new(tls)));
    }

    /// Sends a command if the connection still takes it, then reads a reply
    /// (which may be one the server sent on its own, such as a 421).
    pub async fn read_or_cmd(&mut self, line: &str) -> Reply {
        let io = self.io.as_mut().unwrap();
        let _ = io
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await;
        let _ = io.get_mut().flush().await;
        self.read().await
    }

    /// Sends DATA and the message (already dot-stuffed, ending with CRLF.CRLF).
    pub async fn data(&mut self, wire: &[u8]) -> Reply {
        let r = self.cmd("DATA").await;
        if r.code != 354 {
            return r;
        }
        self.send_raw(wire).await;
        self.read().await
    }
}

/// A message as the test next hop received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub sender: String,
    pub recipients: Vec<String>,
    /// Dot-stuffing undone.
    pub data: Vec<u8>,
}

impl Received {
    /// The header fields (name, value) as mail-parser — a reader we did not
    /// write — finds them.
    pub fn fields(&self) -> Vec<(String, String)> {
        let parsed = mail_parser::MessageParser::default()
            .parse(self.data.as_slice())
            .expect("mail-parser reads the message");
        parsed
            .headers()
            .iter()
            .map(|h| {
                let value = h.value().as_text().unwrap_or_default().trim();
                (h.name().to_string(), value.to_string())
            })
            .collect()
    }

    /// The values of the fields named `name`, in any case.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.fields()
            .into_iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }
}

/// A recording SMTP next hop. Recipients whose local part starts with
/// `reject` get `550 5.1.1`; `defer-once` gets `451 4.3.0` on its first
/// attempt only; `defer` always `451`.
#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub rcpt_attempts: Arc<Mutex<Vec<String>>>,
    /// Every MAIL and RCPT command line exactly as received (CRLF removed):
    /// what a next hop would parse.
    pub envelope_lines: Arc<Mutex<Vec<String>>>,
    /// Connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections open now (accepted, not yet closed by either side).
    pub open: Arc<std::sync::atomic::AtomicUsize>,
    /// When set, the sink answers the end of each message (or RSET) and
    /// then hangs up, like a server whose idle timeout closes a connection
    /// a client has cached.
    pub hang_up_after_message: Arc<std::sync::atomic::AtomicBool>,
    /// When set, EHLO offers PIPELINING (RFC 2920).
    pub pipelining: Arc<std::sync::atomic::AtomicBool>,
    /// MAIL commands that arrived with the next command already behind
    /// them: pipelined transactions.
    pub pipelined: Arc<std::sync::atomic::AtomicUsize>,
    /// When set, EHLO does not offer 8BITMIME (RFC 6152).
    pub seven_bit_only: Arc<std::sync::atomic::AtomicBool>,
}

impl Sink {
    pub async fn start() -> Sink {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    pub async fn start_on(listener: TcpListener) -> Sink {
        let sink = Sink {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            rcpt_attempts: Arc::default(),
            envelope_lines: Arc::default(),
            connections: Arc::default(),
            open: Arc::default(),
            hang_up_after_message: Arc::default(),
            pipelining: Arc::default(),
            pipelined: Arc::default(),
            seven_bit_only: Arc::default(),
        };
        let s = sink.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                s.connections
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                s.open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    s.session(tcp).await;
                    s.open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        sink
    }

    async fn session(&self, tcp: TcpStream) {
        let mut io = BufReader::new(tcp);
        let _ = io.get_mut().write_all(b"220 sink.test ESMTP\r\n").await;
        let (mut sender, mut rcpts) = (String::new(), Vec::new());
        // A transaction runs from MAIL to the reply to the end of data or
        // to RSET (RFC 5321): a refused DATA leaves it open.
        let mut in_transaction = false;
        loop {
            let mut line = String::new();
            if io.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let upper = line.to_ascii_uppercase();
            if upper.starts_with("MAIL") || upper.starts_with("RCPT") {
                self.envelope_lines
                    .lock()
                    .unwrap()
                    .push(line.trim_end_matches(['\r', '\n']).to_string());
            }
            let addr = || {
                line.split_once('<')
                    .and_then(|(_, r)| r.split_once('>'))
                    .map(|(a, _)| a.to_string())
                    .unwrap_or_default()
            };
            let reply: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                let mut ehlo = "250-sink.test\r\n".to_string();
                if self.pipelining.load(std::sync::atomic::Ordering::SeqCst) {
                    ehlo.push_str("250-PIPELINING\r\n");
                }
                if !self
                    .seven_bit_only
                    .load(std::sync::atomic::Ordering::SeqCst)
                {
                    ehlo.push_str("250-8BITMIME\r\n");
                }
                ehlo.push_str("250 SIZE\r\n");
                ehlo
            } else if upper.starts_with("MAIL") {
                if !io.buffer().is_empty() {
                    self.pipelined
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                if in_transaction {
                    "503 5.5.1 nested MAIL command\r\n".into()
                } else {
                    in_transaction = true;
                    sender = addr();
                    rcpts.clear();
                    "250 2.1.0 ok\r\n".into()
                }
            } else if upper.starts_with("RCPT") {
                let a = addr();
                let tries = {
                    let mut attempts = self.rcpt_attempts.lock().unwrap();
                    attempts.push(a.clone());
                    attempts.iter().filter(|x| **x == a).count()
                };
                if a.starts_with("reject") {
                    "550 5.1.1 User unknown\r\n".into()
                } else if (a.starts_with("defer-once") && tries == 1)
                    || (a.starts_with("defer") && !a.starts_with("defer-once"))
                {
                    "451 4.3.0 Try again later\r\n".into()
                } else {
                    rcpts.push(a);
                    "250 2.1.5 ok\r\n".into()
                }
            } else if upper.starts_with("DATA") && rcpts.is_empty() {
                "554 5.5.1 no valid recipients\r\n".into()
            } else if upper.starts_with("DATA")
                && rcpts.iter().any(|r: &String| r.starts_with("nodata"))
            {
                "554 5.6.0 no data for these recipients\r\n".into()
            } else if upper.starts_with("DATA") {
                in_transaction = false;
                let _ = io.get_mut().write_all(b"354 go ahead\r\n").await;
                let mut data = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if io.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    let l = if l.starts_with(b".") {
                        l[1..].to_vec()
                    } else {
                        l
                    };
                    data.extend_from_slice(&l);
                }
                self.received.lock().unwrap().push(Received {
                    sender: sender.clone(),
                    recipients: rcpts.clone(),
                    data,
                });
                "250 2.0.0 queued\r\n".into()
            } else if upper.starts_with("QUIT") {
                let _ = io.get_mut().write_all(b"221 2.0.0 bye\r\n").await;
                return;
            } else if upper.starts_with("RSET") {
                in_transaction = false;
                "250 2.0.0 ok\r\n".into()
            } else if upper.starts_with("NOOP") {
                "250 2.0.0 ok\r\n".into()
            } else {
                "502 5.5.1 not here\r\n".into()
            };
            if io.get_mut().write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            if (upper.starts_with("RSET") || upper.starts_with("DATA"))
                && self
                    .hang_up_after_message
                    .load(std::sync::atomic::Ordering::SeqCst)
            {
                return;
            }
        }
    }

    /// Waits until `n` messages have arrived (or panics after a while).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..300 {
            {
                let r = self.received.lock().unwrap();
                if r.len() >= n {
                    return r.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "expected {n} messages at the next hop, got {:?}",
            self.received.lock().unwrap().len()
        );
    }

    /// Waits until every one of `recipients` has had a message (30 s at
    /// most); everything received by then. Where delivery is at least once
    /// (after a crash), a count of messages can be reached by a duplicate
    /// before the last recipient's copy arrives.
    pub async fn wait_for_recipients(&self, recipients: &[String]) -> Vec<Received> {
        for _ in 0..300 {
            {
                let r = self.received.lock().unwrap();
                let has = |want: &String| r.iter().any(|m| m.recipients.contains(want));
                if recipients.iter().all(has) {
                    return r.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = self.received.lock().unwrap();
        let got: Vec<&Vec<String>> = r.iter().map(|m| &m.recipients).collect();
        panic!("expected messages for {recipients:?} at the next hop, got {got:?}");
    }
}
