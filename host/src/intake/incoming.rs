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
    /// The held start's length at which to look for the section's end
    /// again: doubling, so that the scans of a header section arriving a
    /// byte at a time add up to a few times its length, not its square.
    /// Looking later changes nothing but when: [`trace::header_end`]
    /// decides the same end on any longer start.
    next_look: usize,
    too_big: bool,
    /// `Received` fields in the header section.
    hops: usize,
    /// The client's Message-ID, for the logs.
    message_id: Option<String>,
    body: Body,
}

/// A message received whole: its body in the spool (not yet committed)
/// and what its header section said.
#[derive(Debug)]
pub struct Received {
    pub body: Body,
    /// `Received` fields in its header section.
    pub hops: usize,
    /// Its Message-ID, for the logs (see [`trace::message_id`]).
    pub message_id: Option<String>,
}

impl Incoming {
    pub fn new(body: Body, max_header: usize) -> Incoming {
        Incoming {
            header: Some(Vec::new()),
            max_header,
            next_look: 0,
            too_big: false,
            hops: 0,
            message_id: None,
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
        let over = header.len() > self.max_header;
        if header.len() < self.next_look && !over {
            return;
        }
        self.next_look = header.len().saturating_mul(2);
        match trace::header_end(header) {
            Some(end) if end <= self.max_header => self.end_header().await,
            None if !over => {}
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
        self.message_id = trace::message_id(&start);
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
            message_id: self.message_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Spool;

    /// The body a message becomes when it arrives in `pieces` of `step`
    /// bytes.
    async fn received(message: &[u8], step: usize, max_header: usize) -> Option<(Vec<u8>, usize)> {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_with(dir.path(), 0).unwrap();
        let mut incoming = Incoming::new(spool.body(), max_header);
        for piece in message.chunks(step) {
            incoming.write(piece).await;
        }
        let r = incoming.finish().await.ok()?;
        let id = r.body.id().to_string();
        spool.commit_blocking(r.body, Vec::new()).unwrap();
        let bytes = std::fs::read(dir.path().join("msg").join(format!("{id}.eml"))).unwrap();
        Some((bytes, r.hops))
    }

    #[tokio::test]
    async fn a_message_arriving_a_byte_at_a_time_is_stripped_as_a_whole_one() {
        let mut message = b"Received: a\r\nX-Attributed-Tenant: forged\r\nSubject: s\r\n".to_vec();
        // A long folded field: thousands of short continuation lines.
        message.extend_from_slice(b"X-Long: x\r\n");
        for _ in 0..20_000 {
            message.extend_from_slice(b" y\r\n");
        }
        message.extend_from_slice(b"Received: b\r\n\r\nbody\r\nX-Attributed-Tenant: body text\r\n");
        let whole = trace::strip_trusted(&message);
        let started = std::time::Instant::now();
        let (bytes, hops) = received(&message, 1, DEFAULT_MAX_HEADER_SIZE)
            .await
            .unwrap();
        assert_eq!(bytes, whole);
        assert_eq!(hops, 2);
        // Looking for the end at every byte would scan ~80 KiB 80 000 times.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        for step in [7, 4096, 65536] {
            assert_eq!(
                received(&message, step, DEFAULT_MAX_HEADER_SIZE)
                    .await
                    .unwrap()
                    .0,
                whole
            );
        }
    }

    #[tokio::test]
    async fn a_header_section_past_the_limit_is_refused_however_it_arrives() {
        let mut message = b"Subject: s\r\n".to_vec();
        while message.len() < 5000 {
            message.extend_from_slice(b"X-Pad: 0123456789\r\n");
        }
        message.extend_from_slice(b"\r\nbody\r\n");
        for step in [1, 100, 8192] {
            assert!(
                received(&message, step, 4096).await.is_none(),
                "step {step}"
            );
            assert!(
                received(&message, step, 8192).await.is_some(),
                "step {step}"
            );
        }
    }
}
