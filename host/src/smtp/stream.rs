//! The connection under an SMTP session: plain until STARTTLS, TLS after,
//! with the read buffer that commands and message data are taken from.
//!
//! Generic over the transport ([`Io`]): a TCP socket for the relay, an
//! in-memory pipe (`tokio::io::duplex`) for tests of the dialogue.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;

/// What a session can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Plain or TLS.
pub enum Stream<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    /// Transiently, while the handshake owns the socket.
    Upgrading,
}

impl<S: Io> AsyncRead for Stream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl<S: Io> AsyncWrite for Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Upgrading => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Upgrading => Poll::Ready(Ok(())),
        }
    }
}

/// What [`Connection::take_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, terminator included.
    Complete(Vec<u8>),
    /// The buffer holds more than the limit without a line end.
    TooLong,
    /// Need more input.
    Incomplete,
}

/// A stream with buffered reads and writes. Replies are collected and
/// flushed only when no further pipelined command is already buffered
/// (RFC 2920), so a pipelining client gets its replies in one segment.
pub struct Connection<S> {
    pub stream: Stream<S>,
    pub rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Skipping the rest of an over-long line.
    discarding: bool,
}

impl<S: Io> Connection<S> {
    pub fn new(io: S) -> Connection<S> {
        Connection {
            stream: Stream::Plain(io),
            rbuf: Vec::with_capacity(4096),
            wbuf: Vec::with_capacity(1024),
            discarding: false,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Reads more input; `Ok(0)` at end of stream.
    pub async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        self.rbuf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Takes one line (ending in LF) from the buffer, if complete.
    pub fn take_line(&mut self, max: usize) -> Line {
        if self.discarding {
            match self.rbuf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.rbuf.drain(..=i);
                    self.discarding = false;
                }
                None => {
                    self.rbuf.clear();
                    return Line::Incomplete;
                }
            }
        }
        match self.rbuf.iter().position(|&b| b == b'\n') {
            Some(i) if i < max => Line::Complete(self.rbuf.drain(..=i).collect()),
            Some(i) => {
                self.rbuf.drain(..=i);
                Line::TooLong
            }
            None if self.rbuf.len() >= max => {
                self.rbuf.clear();
                self.discarding = true;
                Line::TooLong
            }
            None => Line::Incomplete,
        }
    }

    /// Whether a complete command is already buffered (pipelining).
    pub fn has_buffered_line(&self) -> bool {
        self.rbuf.contains(&b'\n')
    }

    /// Queues a reply.
    pub fn queue(&mut self, reply: &str) {
        self.wbuf.extend_from_slice(reply.as_bytes());
    }

    /// Writes what is queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.stream.flush().await
    }
}
