//! The client side of one SMTP connection to a next hop: commands out,
//! replies in, and nothing lost or guessed between them.
//!
//! SMTP has no request identifiers: a reply belongs to a command only by its
//! place in the stream. So every byte read stays in one buffer until a reply
//! consumes it (mail-send reads each reply into a buffer of its own and
//! drops whatever followed it, which let a late or doubled reply surface as
//! the answer to a later command), and the relay can always tell whether the
//! hop said more than it was asked — a reason to stop trusting the
//! connection, never something to read as the next answer.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use futures_util::FutureExt as _;
use smtp_proto::response::parser::ResponseReceiver;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One reply of the next hop.
pub type Reply = smtp_proto::Response<String>;

/// The most one reply may take on the wire, its lines together: a hop that
/// sends an endless multi-line reply is cut off here, not buffered.
/// (smtp-proto also caps a reply's text, its lines joined, at 4 KiB: a
/// longer one is [`HopError::TooLong`] too, a temporary failure.)
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// A byte stream to a next hop: TCP, or TLS over it.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Why a step with the next hop ended without a reply. Each leaves the
/// connection in a state the relay does not know: it is closed, never
/// reused.
#[derive(Debug, thiserror::Error)]
pub enum HopError {
    #[error("timeout talking to the next hop")]
    Timeout,
    /// The connection could not be made (refused, unreachable).
    #[error("connect to {addr}: {}", words(.source))]
    Connect {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    #[error("connection to the next hop failed: {}", words(.0))]
    Io(#[from] io::Error),
    #[error("the next hop closed the connection")]
    Closed,
    #[error("the next hop's reply cannot be parsed")]
    Unparseable,
    #[error("the next hop's reply is longer than {MAX_REPLY_BYTES} bytes")]
    TooLong,
    /// Bytes from the hop that no command asked for: a reply sent early,
    /// twice, or injected before a TLS handshake.
    #[error("the next hop sent more than it was asked for")]
    OutOfStep,
    #[error("TLS handshake with the next hop failed: {}", words(.0))]
    Tls(io::Error),
}

/// An I/O error as an operator reads it in a log, a queue listing or a
/// DSN: what the system said, without Rust's `(os error N)`, in lower case
/// (`connection refused`).
pub(crate) fn words(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => text.as_str(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

impl HopError {
    /// Whether the step ran out of time (the hop took the connection and
    /// then stalled), as opposed to failing at once.
    pub fn is_timeout(&self) -> bool {
        matches!(self, HopError::Timeout)
    }

    /// Whether this, as the first answer on a connection taken from the
    /// pool, means the connection went stale while idle (the hop closed it,
    /// or had said something unasked): nothing was accepted, and a fresh
    /// connection may try again.
    pub fn means_stale(&self) -> bool {
        matches!(
            self,
            HopError::Closed | HopError::Io(_) | HopError::OutOfStep
        )
    }
}

/// An SMTP connection to a next hop, each step within `step`.
pub struct Wire {
    stream: Box<dyn Stream>,
    /// The TCP socket under `stream` (under TLS too), owned by `stream`:
    /// peeked at to see whether the hop sent anything.
    socket: RawFd,
    /// Read from the hop, not yet consumed by a reply.
    unread: Vec<u8>,
    step: Duration,
}

impl Wire {
    /// `stream` over the TCP socket `socket`, which `stream` owns.
    pub fn new(stream: impl Stream + 'static, socket: RawFd, step: Duration) -> Wire {
        Wire {
            stream: Box::new(stream),
            socket,
            unread: Vec::new(),
            step,
        }
    }

    /// The TCP socket under the stream.
    pub fn socket(&self) -> RawFd {
        self.socket
    }

    /// The deadline of each step.
    pub fn step(&self) -> Duration {
        self.step
    }

    /// The stream, to write a message's content through (its pieces have
    /// their own deadlines).
    pub fn stream(&mut self) -> &mut (dyn Stream + 'static) {
        self.stream.as_mut()
    }

    /// Gives the stream up (to wrap it in TLS), provided the hop has said
    /// nothing that was not read: bytes waiting after the reply to STARTTLS
    /// would otherwise be taken as sent under TLS (RFC 3207's injection).
    pub fn into_stream(self) -> Result<Box<dyn Stream>, HopError> {
        if self.unread.is_empty() {
            Ok(self.stream)
        } else {
            Err(HopError::OutOfStep)
        }
    }

    /// Writes `bytes` (one command, or several pipelined) within the step.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), HopError> {
        let stream = &mut self.stream;
        tokio::time::timeout(self.step, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| HopError::Timeout)??;
        Ok(())
    }

    /// The next reply, within the step. Only 2xx, 3xx, 4xx and 5xx are
    /// replies (RFC 5321 4.2.1); which of them a command may get is the
    /// caller's to check.
    pub async fn reply(&mut self) -> Result<Reply, HopError> {
        let reply = tokio::time::timeout(self.step, self.read_reply())
            .await
            .map_err(|_| HopError::Timeout)??;
        if (200..600).contains(&reply.code) {
            Ok(reply)
        } else {
            Err(HopError::Unparseable)
        }
    }

    /// Sends `command` and reads its reply.
    pub async fn command(&mut self, command: &[u8]) -> Result<Reply, HopError> {
        self.send(command).await?;
        self.reply().await
    }

    async fn read_reply(&mut self) -> Result<Reply, HopError> {
        let mut parser = ResponseReceiver::default();
        let mut taken = 0usize;
        let mut chunk = [0u8; 4096];
        loop {
            if !self.unread.is_empty() {
                let mut rest = self.unread.iter();
                let parsed = parser.parse(&mut rest);
                let used = self.unread.len() - rest.len();
                self.unread.drain(..used);
                taken += used;
                match parsed {
                    Ok(reply) => return Ok(reply),
                    Err(smtp_proto::Error::NeedsMoreData { .. }) => {}
                    Err(smtp_proto::Error::ResponseTooLong) => return Err(HopError::TooLong),
                    Err(_) => return Err(HopError::Unparseable),
                }
                if taken > MAX_REPLY_BYTES {
                    return Err(HopError::TooLong);
                }
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(HopError::Closed);
            }
            self.unread.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the hop has said nothing since its last reply was read and
    /// still holds the connection open — checked without waiting. A byte
    /// waiting, a close or an error: the connection's state is no longer
    /// what the relay believes.
    ///
    /// Three places are looked at: bytes read but not yet parsed; the
    /// kernel's receive queue, peeked at directly (the runtime learns of
    /// readable sockets only when its driver runs, so a poll alone can
    /// miss bytes already there); and the stream itself, polled once, for
    /// what a TLS layer has decrypted but not handed out.
    pub fn is_quiet(&mut self) -> bool {
        if !self.unread.is_empty() || !socket_is_quiet(self.socket) {
            return false;
        }
        let mut probe = [0u8; 1];
        // One poll: pending means nothing has arrived.
        match self.stream.read(&mut probe).now_or_never() {
            None => true,
            Some(Ok(0)) | Some(Err(_)) => false,
            Some(Ok(_)) => {
                self.unread.push(probe[0]);
                false
            }
        }
    }

    /// `Ok` when nothing but the replies read so far came from the hop.
    pub fn in_step(&mut self) -> Result<(), HopError> {
        if self.is_quiet() {
            Ok(())
        } else {
            Err(HopError::OutOfStep)
        }
    }

    /// Says QUIT, without waiting for the answer, within a short time.
    pub async fn quit(mut self) {
        let limit = self.step.min(QUIT_TIME);
        let _ = tokio::time::timeout(limit, async {
            let _ = self.stream.write_all(b"QUIT\r\n").await;
            let _ = self.stream.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// Whether the kernel holds nothing to read on `socket` and the peer has
/// not closed it.
fn socket_is_quiet(socket: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `recv` writes at most one byte into `byte`, which lives for
    // the call; `socket` is owned by the stream of the `Wire` that asks,
    // so it is open. MSG_PEEK leaves the byte for the stream to read.
    let n = unsafe {
        libc::recv(
            socket,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && matches!(io::Error::last_os_error().kind(), io::ErrorKind::WouldBlock)
}

/// The most a QUIT may take when a connection is given up.
const QUIT_TIME: Duration = Duration::from_secs(2);

/// The capabilities a 250 reply to EHLO lists (its lines after the first),
/// upper-cased keywords without their parameters.
pub fn capabilities(ehlo: &Reply) -> Vec<String> {
    ehlo.message
        .split('\n')
        .skip(1)
        .filter_map(|line| line.split_ascii_whitespace().next())
        .map(|k| k.to_ascii_uppercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_read_as_words() {
        let refused = io::Error::from_raw_os_error(111);
        assert_eq!(words(&refused), "connection refused");
        let hop = HopError::Connect {
            addr: "127.0.0.1:2599".parse().unwrap(),
            source: refused,
        };
        assert_eq!(
            hop.to_string(),
            "connect to 127.0.0.1:2599: connection refused"
        );
        assert_eq!(words(&io::Error::other("Broken pipe")), "broken pipe");
    }
    use tokio::io::AsyncWriteExt;

    /// A wire over loopback TCP, and the hop's end.
    async fn pair() -> (Wire, tokio::net::TcpStream) {
        use std::os::fd::AsRawFd;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (theirs, _) = listener.accept().await.unwrap();
        let fd = ours.as_raw_fd();
        (Wire::new(ours, fd, Duration::from_secs(1)), theirs)
    }

    /// Lets bytes written on loopback arrive.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn a_reply_sent_with_another_is_kept_for_the_next_read() {
        let (mut wire, mut hop) = pair().await;
        hop.write_all(b"250 first\r\n250-sec").await.unwrap();
        settle().await;
        assert_eq!(wire.reply().await.unwrap().message, "first");
        assert!(!wire.is_quiet(), "the start of another reply is waiting");
        hop.write_all(b"ond\r\n250 done\r\n").await.unwrap();
        let second = wire.reply().await.unwrap();
        assert_eq!(second.message, "second\ndone");
        assert!(wire.is_quiet());
    }

    #[tokio::test]
    async fn a_late_byte_or_a_close_is_noticed_without_waiting() {
        let (mut wire, mut hop) = pair().await;
        assert!(wire.is_quiet());
        hop.write_all(b"5").await.unwrap();
        settle().await;
        // Checked at once, before the runtime had a chance to see it.
        assert!(!wire.is_quiet());
        assert!(matches!(wire.in_step(), Err(HopError::OutOfStep)));
        let (mut wire, hop) = pair().await;
        drop(hop);
        settle().await;
        assert!(!wire.is_quiet());
    }

    #[tokio::test]
    async fn an_endless_reply_is_cut_off() {
        let (mut wire, mut hop) = pair().await;
        tokio::spawn(async move {
            let line = b"250-more and more\r\n";
            for _ in 0..10_000 {
                if hop.write_all(line).await.is_err() {
                    return;
                }
            }
        });
        assert!(matches!(wire.reply().await, Err(HopError::TooLong)));
    }

    #[tokio::test]
    async fn garbage_and_silence_are_errors_not_replies() {
        let (mut wire, mut hop) = pair().await;
        hop.write_all(b"hello there\r\n").await.unwrap();
        assert!(matches!(wire.reply().await, Err(HopError::Unparseable)));
        let (mut wire, mut hop) = pair().await;
        hop.write_all(b"999 not a reply code\r\n").await.unwrap();
        assert!(matches!(wire.reply().await, Err(HopError::Unparseable)));
        let (mut wire, _hop) = pair().await;
        assert!(matches!(wire.reply().await, Err(HopError::Timeout)));
        let (mut wire, hop) = pair().await;
        drop(hop);
        assert!(matches!(wire.reply().await, Err(HopError::Closed)));
    }

    #[test]
    fn capabilities_are_the_keywords_after_the_greeting_line() {
        let ehlo = Reply {
            code: 250,
            esc: [0; 3],
            message: "mx.example hello\nPIPELINING\nsize 1000\n8BITMIME\nSTARTTLS".into(),
        };
        assert_eq!(
            capabilities(&ehlo),
            ["PIPELINING", "SIZE", "8BITMIME", "STARTTLS"]
        );
    }
}
