//! A message as DATA's content: read from the spool a chunk at a time,
//! dot-stuffed across the chunks' edges, each write with the step's time.

use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::wire::HopError;
use crate::spool::Stored;

/// Why a message's content did not reach the next hop.
pub enum Unsent {
    /// Reading it from the spool failed (or found it changed).
    Spool(std::io::Error),
    /// The next hop's connection.
    Hop(HopError),
}

/// Writes `message` as DATA's content, chunk by chunk, without the end of
/// data. The spool hands out each chunk once it is read (and a body that
/// changed since it was checked as an error before its last chunk), so a
/// failure leaves the transaction without its final `.`: the next hop
/// discards it. Returns the end of data to send.
pub async fn write_content<W: AsyncWrite + Unpin + ?Sized>(
    stream: &mut W,
    message: &Stored,
    step: Duration,
) -> Result<&'static [u8], Unsent> {
    let mut reader = message.reader();
    let mut stuffer = DotStuffer::default();
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(step, reader.next()).await;
        let chunk = match next {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(Unsent::Spool(e)),
            Err(_) => {
                return Err(Unsent::Spool(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the spool's disk did not answer in time",
                )));
            }
        };
        let bytes = stuffer.stuff(&chunk, &mut out);
        write_within(stream, bytes, step)
            .await
            .map_err(Unsent::Hop)?;
    }
    Ok(stuffer.end())
}

/// One write to the next hop, flushed, which must be taken within `step`:
/// a hop that reads slowly gets each piece's time, not the message's.
pub async fn write_within<W: AsyncWrite + Unpin + ?Sized>(
    stream: &mut W,
    bytes: &[u8],
    step: Duration,
) -> Result<(), HopError> {
    tokio::time::timeout(step, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| HopError::Timeout)?
    .map_err(HopError::Io)
}

/// SMTP's transparency (RFC 5321 4.5.2) over a message sent in pieces: a
/// `.` that begins a line is doubled. A line begins at the message's start
/// and after a CR or an LF, a bare one included: intake refuses bare ones
/// (SMTP smuggling), and should one be spooled all the same, a lenient hop
/// must not read `LF . CR LF` as the end of the data (a strict hop keeps one
/// extra dot).
struct DotStuffer {
    at_line_start: bool,
    /// The message so far ends with CRLF (or is empty).
    ends_with_crlf: bool,
    last: u8,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
            ends_with_crlf: true,
            last: 0,
        }
    }
}

impl DotStuffer {
    /// `chunk` as it goes on the wire: itself when no line in it starts
    /// with a dot (the usual case: no copy), else a copy in `out` with the
    /// dots doubled.
    #[must_use]
    fn stuff<'a>(&mut self, chunk: &'a [u8], out: &'a mut Vec<u8>) -> &'a [u8] {
        let first = self.at_line_start;
        let needs = (first && chunk.first() == Some(&b'.'))
            || chunk
                .windows(2)
                .any(|w| (w[0] == b'\r' || w[0] == b'\n') && w[1] == b'.');
        if let Some(&b) = chunk.last() {
            let before = if chunk.len() > 1 {
                chunk[chunk.len() - 2]
            } else {
                self.last
            };
            self.at_line_start = b == b'\r' || b == b'\n';
            self.ends_with_crlf = before == b'\r' && b == b'\n';
            self.last = b;
        }
        if !needs {
            return chunk;
        }
        out.clear();
        out.reserve(chunk.len() + chunk.len() / 64);
        let mut line_start = first;
        for &b in chunk {
            if b == b'.' && line_start {
                out.push(b'.');
            }
            out.push(b);
            line_start = b == b'\r' || b == b'\n';
        }
        out
    }

    /// The end of data: CRLF . CRLF, whose first CRLF is the message's own
    /// last line end when it has one.
    fn end(&self) -> &'static [u8] {
        if self.ends_with_crlf {
            b".\r\n"
        } else {
            b"\r\n.\r\n"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(chunks: &[&[u8]]) -> Vec<u8> {
        let mut stuffer = DotStuffer::default();
        let (mut wire, mut scratch) = (Vec::new(), Vec::new());
        for c in chunks {
            wire.extend_from_slice(stuffer.stuff(c, &mut scratch));
        }
        wire.extend_from_slice(stuffer.end());
        wire
    }

    #[test]
    fn dots_at_line_starts_are_doubled_wherever_the_chunks_split() {
        let message: &[u8] = b".first\r\nmiddle.\r\n.\r\n..two\r\nbare\n.lf\r\nend\r\n";
        let expected: &[u8] = b"..first\r\nmiddle.\r\n..\r\n...two\r\nbare\n..lf\r\nend\r\n.\r\n";
        assert_eq!(stuffed(&[message]), expected);
        for split in 0..=message.len() {
            let (a, b) = message.split_at(split);
            assert_eq!(stuffed(&[a, b]), expected, "split at {split}");
        }
    }

    #[test]
    fn a_chunk_without_a_dot_at_a_line_start_goes_out_uncopied() {
        let mut stuffer = DotStuffer::default();
        let mut scratch = Vec::new();
        let chunk: &[u8] = b"a line.\r\nanother. line\r\n";
        assert!(std::ptr::eq(stuffer.stuff(chunk, &mut scratch), chunk));
        assert!(scratch.is_empty());
    }

    #[test]
    fn the_end_of_data_adds_a_line_end_only_when_the_message_lacks_one() {
        assert_eq!(stuffed(&[b"x\r\n"]), b"x\r\n.\r\n");
        assert_eq!(stuffed(&[b"x\r", b"\n"]), b"x\r\n.\r\n");
        assert_eq!(stuffed(&[b"x"]), b"x\r\n.\r\n");
        assert_eq!(stuffed(&[b"x\n"]), b"x\n\r\n.\r\n");
    }
}
