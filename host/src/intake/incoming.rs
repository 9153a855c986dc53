//! A client's message as it arrives: its header section is held (up to a
//! bound) until it is decided, checked for mail loops and stripped of the
//! client's copies of the relay's fields; from then on everything goes
//! straight to the spool ([`Body`]). A session's memory is the same
//! whatever the message's size.

use crate::spool::Body;

use super::trace;

/// The default of `[server] max_header_size`: the bytes a message's header
/// section may take. Exchange Online's limit is 256 KB; Postfix's
/// `header_size_limit` (100 KiB) folds the excess into the body, which
/// here would let a trust field hide past the limit, so the relay refuses
/// such a message instead.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 256 * 1024;

/// The message's header section went past `[server] max_header_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the header section exceeds {0} bytes")]
pub struct HeaderTooBig(pub usize);

/// A message being received.
#[derive(Debug)]
pub struct Incoming {
    /// The start of the message, while its header section is undecided.
    header: Option<Vec<u8>>,
    max_header: usize,
    too_big: bool,
    /// `Received` fields in the header section.
    hops: usize,
    body: Body,
}

/// A message received whole: its body in the spool (not yet committed)
/// and what its header section said.
#[derive(Debug)]
pub struct Received {
    pub body: Body,
    /// `Received` fields in its header section.
    pub hops: usize,
}

impl Incoming {
    pub fn new(body: Body, max_header: usize) -> Incoming {
        Incoming {
            header: Some(Vec::new()),
            max_header,
            too_big: false,
            hops: 0,
            body,
        }
    }

    /// Takes the next bytes of the message (as the DATA reader decoded
    /// them).
    pub async fn write(&mut self, bytes: &[u8]) {
        if self.too_big {
            return;
        }
        let Some(header) = &mut self.header else {
            self.body.write(bytes).await;
            return;
        };
        header.extend_from_slice(bytes);
        match trace::header_end(header) {
            Some(end) if end <= self.max_header => self.end_header().await,
            None if header.len() <= self.max_header => {}
            _ => {
                self.too_big = true;
                self.header = None;
            }
        }
    }

    /// The header section is decided: count its hops, strip it, and send
    /// it (with whatever of the body came along) to the spool.
    async fn end_header(&mut self) {
        let Some(start) = self.header.take() else {
            return;
        };
        self.hops = trace::count_received(&start);
        let stripped = trace::strip_trusted(&start);
        drop(start);
        self.body.write(&stripped).await;
    }

    /// The end of data: a message whose header section never ended (no
    /// body) is decided now.
    pub async fn finish(mut self) -> Result<Received, HeaderTooBig> {
        if self.too_big {
            return Err(HeaderTooBig(self.max_header));
        }
        self.end_header().await;
        Ok(Received {
            body: self.body,
            hops: self.hops,
        })
    }
}
