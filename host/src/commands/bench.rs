//! `attrelay bench`: a load generator for SMTP servers (ours, Postfix, any
//! other), over plain TCP or STARTTLS with a client certificate and its
//! chain — what no public load tool drives.
//!
//! `--concurrency` sessions run at once until `--sessions` have run, each
//! sending `--messages` messages of `--size` bytes (`--messages 1` is what
//! on-premises servers and scanners mostly do). Every reply is checked:
//! anything but the expected code counts as an error and fails the run
//! (exit status 1). The report gives messages per second and the p50, p99
//! and p999 latency of each SMTP stage as the client sees it.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;

use super::terminal::terminal_safe;
use super::{EXIT_OK, EXIT_REFUSED, UsageError};
use crate::smtp::stream::Io;

/// The arguments of `attrelay bench` (parsed by clap in the binary).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The server to load, address:port.
    #[arg(long)]
    pub server: SocketAddr,
    /// Sessions at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Sessions in all.
    #[arg(long, default_value_t = 8)]
    pub sessions: usize,
    /// Messages per session.
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
    /// Message size in bytes, header included.
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    /// Say STARTTLS before the transactions.
    #[arg(long)]
    pub starttls: bool,
    /// The client certificate for STARTTLS: PEM, leaf first, then its chain.
    #[arg(long, value_name = "PEM", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Verify the server's certificate against these CA files (default:
    /// accept any, as opportunistic SMTP clients do).
    #[arg(long, value_name = "PEM")]
    pub ca: Vec<PathBuf>,
    /// The server's name, for its certificate (checked with `--ca` only).
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// The local address to connect from.
    #[arg(long)]
    pub source: Option<IpAddr>,
    #[arg(long, default_value = "load.bench.test")]
    pub helo: String,
    #[arg(long, default_value = "bench@load.bench.test")]
    pub from: String,
    #[arg(long, default_value = "sink@sink.bench.test")]
    pub to: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The stages whose latency is measured, in dialogue order.
const STAGES: [&str; 8] = [
    "connect", "ehlo", "starttls", "mail", "rcpt", "data", "message", "quit",
];

/// Errors listed in the report at most.
const MAX_LISTED_ERRORS: usize = 10;

/// One stage's latencies.
#[derive(Debug, Serialize)]
pub struct StageReport {
    pub stage: &'static str,
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub messages: usize,
    pub seconds: f64,
    pub messages_per_second: f64,
    pub errors: usize,
    /// The first errors, as `stage: reply`.
    pub first_errors: Vec<String>,
    pub stages: Vec<StageReport>,
}

/// What the sessions record.
#[derive(Default)]
struct Record {
    latencies: Vec<Vec<Duration>>,
    errors: Vec<String>,
    error_count: usize,
    messages: usize,
}

impl Record {
    fn new() -> Record {
        Record {
            latencies: vec![Vec::new(); STAGES.len()],
            ..Record::default()
        }
    }

    fn merge(&mut self, other: Record) {
        for (mine, theirs) in self.latencies.iter_mut().zip(other.latencies) {
            mine.extend(theirs);
        }
        self.error_count += other.error_count;
        self.messages += other.messages;
        for e in other.errors {
            if self.errors.len() < MAX_LISTED_ERRORS {
                self.errors.push(e);
            }
        }
    }
}

/// One session's connection.
struct Conn {
    io: BufReader<Box<dyn Io>>,
}

impl Conn {
    /// Reads one (possibly multi-line) reply: its code and last line.
    async fn reply(&mut self) -> std::io::Result<(u16, String)> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.io.read_line(&mut line).await? == 0 {
                return Ok((0, "connection closed".into()));
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Ok((code, line.trim_end().to_string()));
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.get_mut().write_all(bytes).await?;
        self.io.get_mut().flush().await
    }
}

/// The message every session sends: a header and lines of text, `size`
/// bytes in all, with the end-of-data line.
fn message(args: &BenchArgs) -> Vec<u8> {
    let mut m = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: attrelay bench\r\n\r\n",
        args.from, args.to
    )
    .into_bytes();
    let line = format!("{}\r\n", "x".repeat(76));
    while m.len() + line.len() <= args.size {
        m.extend_from_slice(line.as_bytes());
    }
    m.extend_from_slice(b".\r\n");
    m
}

/// Runs the load and returns the report (no printing).
pub async fn run_bench(args: &BenchArgs) -> Result<BenchReport, UsageError> {
    if args.concurrency == 0 || args.sessions == 0 {
        return Err(UsageError(
            "--concurrency and --sessions must be at least 1".into(),
        ));
    }
    let tls = if args.starttls {
        let cert = args.cert.as_deref().zip(args.key.as_deref());
        let config = crate::tls::client::client_config(&args.ca, cert).map_err(UsageError::new)?;
        Some(tokio_rustls::TlsConnector::from(config))
    } else {
        None
    };
    let args = Arc::new(args.clone());
    let body: Arc<[u8]> = message(&args).into();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.min(args.sessions) {
        let (args, body, next, tls) = (args.clone(), body.clone(), next.clone(), tls.clone());
        workers.push(tokio::spawn(async move {
            let mut record = Record::new();
            while next.fetch_add(1, Ordering::Relaxed) < args.sessions {
                if let Err(e) = session(&args, &body, tls.as_ref(), &mut record).await {
                    record.error_count += 1;
                    if record.errors.len() < MAX_LISTED_ERRORS {
                        record.errors.push(format!("i/o: {e}"));
                    }
                }
            }
            record
        }));
    }
    let mut total = Record::new();
    for w in workers {
        total.merge(w.await.map_err(UsageError::new)?);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(BenchReport {
        messages: total.messages,
        seconds,
        messages_per_second: total.messages as f64 / seconds.max(f64::EPSILON),
        errors: total.error_count,
        first_errors: total.errors,
        stages: STAGES
            .iter()
            .zip(total.latencies)
            .filter(|(_, l)| !l.is_empty())
            .map(|(stage, l)| stage_report(stage, l))
            .collect(),
    })
}

fn stage_report(stage: &'static str, mut l: Vec<Duration>) -> StageReport {
    l.sort_unstable();
    let at = |q: f64| {
        let i = ((l.len() as f64 * q).ceil() as usize).clamp(1, l.len()) - 1;
        l[i].as_secs_f64() * 1000.0
    };
    StageReport {
        stage,
        count: l.len(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
    }
}

/// One session: connect, EHLO, STARTTLS and EHLO again if asked, the
/// transactions, QUIT. An unexpected reply ends the session as an error.
async fn session(
    args: &BenchArgs,
    body: &[u8],
    tls: Option<&tokio_rustls::TlsConnector>,
    record: &mut Record,
) -> std::io::Result<()> {
    let t = Instant::now();
    let socket = match args.server {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = args.source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let tcp = socket.connect(args.server).await?;
    tcp.set_nodelay(true)?;
    let mut c = Conn {
        io: BufReader::new(Box::new(tcp)),
    };
    let mut step = Step { record, t };
    if !step.expect(&mut c, "connect", None, 220).await? {
        return Ok(());
    }
    let ehlo = format!("EHLO {}\r\n", args.helo);
    if !step
        .expect(&mut c, "ehlo", Some(ehlo.as_bytes()), 250)
        .await?
    {
        return Ok(());
    }
    if let Some(connector) = tls {
        if !step
            .expect(&mut c, "starttls", Some(b"STARTTLS\r\n"), 220)
            .await?
        {
            return Ok(());
        }
        let plain = c.io.into_inner();
        let name = rustls_pki_types::ServerName::try_from(args.server_name.clone())
            .map_err(std::io::Error::other)?;
        let secure = connector.connect(name, plain).await?;
        c = Conn {
            io: BufReader::new(Box::new(secure)),
        };
        if !step
            .expect(&mut c, "ehlo", Some(ehlo.as_bytes()), 250)
            .await?
        {
            return Ok(());
        }
    }
    let mail = format!("MAIL FROM:<{}> SIZE={}\r\n", args.from, body.len());
    let rcpt = format!("RCPT TO:<{}>\r\n", args.to);
    for _ in 0..args.messages {
        let ok = step
            .expect(&mut c, "mail", Some(mail.as_bytes()), 250)
            .await?
            && step
                .expect(&mut c, "rcpt", Some(rcpt.as_bytes()), 250)
                .await?
            && step.expect(&mut c, "data", Some(b"DATA\r\n"), 354).await?
            && step.expect(&mut c, "message", Some(body), 250).await?;
        if !ok {
            return Ok(());
        }
        step.record.messages += 1;
    }
    step.expect(&mut c, "quit", Some(b"QUIT\r\n"), 221).await?;
    Ok(())
}

/// Times each exchange of a session.
struct Step<'a> {
    record: &'a mut Record,
    t: Instant,
}

impl Step<'_> {
    /// Sends `line` (none: just read, as for the greeting), reads the
    /// reply, records the stage's latency; `false` (and an error recorded)
    /// when the code is not `want`.
    async fn expect(
        &mut self,
        c: &mut Conn,
        stage: &'static str,
        line: Option<&[u8]>,
        want: u16,
    ) -> std::io::Result<bool> {
        if let Some(l) = line {
            self.t = Instant::now();
            c.send(l).await?;
        }
        let (code, text) = c.reply().await?;
        let index = STAGES.iter().position(|s| *s == stage).unwrap_or(0);
        self.record.latencies[index].push(self.t.elapsed());
        if code == want {
            return Ok(true);
        }
        self.record.error_count += 1;
        if self.record.errors.len() < MAX_LISTED_ERRORS {
            // The server's words, for an operator's terminal.
            self.record
                .errors
                .push(format!("{stage}: {}", terminal_safe(&text)));
        }
        Ok(false)
    }
}

/// Runs the load, prints the report and returns the exit status: 1 when
/// any reply was unexpected.
pub async fn bench(args: &BenchArgs, out: &mut dyn Write) -> Result<u8, UsageError> {
    let report = run_bench(args).await?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report).map_err(UsageError::new)?;
        writeln!(out).map_err(UsageError::new)?;
    } else {
        write_text(&report, out).map_err(UsageError::new)?;
    }
    Ok(if report.errors == 0 {
        EXIT_OK
    } else {
        EXIT_REFUSED
    })
}

fn write_text(r: &BenchReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{} messages in {:.2} s: {:.1} msg/s, {} errors",
        r.messages, r.seconds, r.messages_per_second, r.errors
    )?;
    writeln!(
        out,
        "{:<9} {:>8} {:>9} {:>9} {:>9}",
        "stage", "count", "p50 ms", "p99 ms", "p999 ms"
    )?;
    for s in &r.stages {
        writeln!(
            out,
            "{:<9} {:>8} {:>9.3} {:>9.3} {:>9.3}",
            s.stage, s.count, s.p50_ms, s.p99_ms, s.p999_ms
        )?;
    }
    for e in &r.first_errors {
        writeln!(out, "error: {e}")?;
    }
    Ok(())
}
