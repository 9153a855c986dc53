//! Reading the DATA section: end of data is `CRLF . CRLF` and nothing else.
//!
//! This is written by hand, not taken from a parser crate, because it is where
//! SMTP smuggling happens: if this relay took `\n.\n` (or `\r.\r`, or
//! `\n.\r\n`) as the end of data while the next hop did not, or the other way
//! round, one message could carry a second, forged one. So the only
//! terminator is `CR LF . CR LF` (the first CR LF may be the one that ended
//! the DATA command); a CR or LF that is not part of a CR LF pair is
//! *bare*: it never ends anything, it is recorded, and by default the
//! message is refused. Dot-stuffing is undone (RFC 5321 4.5.2).
//!
//! The reader holds no message: each [`DataReader::feed`] hands what it
//! decoded to the caller, which streams it to the spool.

/// How a lone CR or LF in the data is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BareLineEndings {
    /// Refuse the message (the default).
    #[default]
    Reject,
    /// Accept it, turning each bare CR or LF into CRLF.
    Normalize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF, or at the start of the data).
    LineStart,
    /// After a line-initial dot.
    Dot,
    /// After a line-initial dot and a CR.
    DotCr,
    /// Inside a line.
    Text,
    /// After a CR inside a line.
    Cr,
}

/// Incremental reader of one DATA section.
#[derive(Debug)]
pub struct DataReader {
    state: State,
    /// Bytes of message decoded so far (while within `max_size`).
    len: usize,
    max_size: usize,
    mode: BareLineEndings,
    /// The message exceeded `max_size` (the rest was discarded).
    pub too_big: bool,
    /// A bare CR or LF was seen.
    pub bare_line_ending: bool,
}

impl DataReader {
    pub fn new(max_size: usize, mode: BareLineEndings) -> DataReader {
        DataReader {
            state: State::LineStart,
            len: 0,
            max_size,
            mode,
            too_big: false,
            bare_line_ending: false,
        }
    }

    /// Bytes of message decoded so far; 0 once it was too big.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        if self.too_big {
            return;
        }
        if self.len + bytes.len() > self.max_size {
            self.too_big = true;
            self.len = 0;
            return;
        }
        self.len += bytes.len();
        out.extend_from_slice(bytes);
    }

    fn bare(&mut self, out: &mut Vec<u8>, what: u8) {
        self.bare_line_ending = true;
        match self.mode {
            BareLineEndings::Reject => self.emit(out, &[what]),
            BareLineEndings::Normalize => self.emit(out, b"\r\n"),
        }
    }

    /// Consumes input, appending the message bytes it decodes to `out`
    /// (CRLF line endings, dot-stuffing undone; nothing once the message
    /// is too big); returns `Some(n)` when the end of data was found after
    /// `n` bytes of `input` (the rest belongs to the next command).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        for (i, &b) in input.iter().enumerate() {
            self.state = match (self.state, b) {
                (State::LineStart, b'.') => State::Dot,
                (State::LineStart | State::Text, b'\r') => State::Cr,
                (State::LineStart | State::Text, b'\n') => {
                    self.bare(out, b'\n');
                    State::Text
                }
                (State::LineStart | State::Text, _) => {
                    self.emit(out, &[b]);
                    State::Text
                }
                (State::Dot, b'\r') => State::DotCr,
                // A stuffed dot: drop it, keep the rest of the line.
                (State::Dot, b'\n') => {
                    self.bare(out, b'\n');
                    State::Text
                }
                (State::Dot, _) => {
                    self.emit(out, &[b]);
                    State::Text
                }
                (State::DotCr, b'\n') => return Some(i + 1),
                (State::DotCr | State::Cr, b'\r') => {
                    self.bare(out, b'\r');
                    State::Cr
                }
                (State::Cr, b'\n') => {
                    self.emit(out, b"\r\n");
                    State::LineStart
                }
                (State::DotCr | State::Cr, _) => {
                    self.bare(out, b'\r');
                    self.emit(out, &[b]);
                    State::Text
                }
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8]) -> (Option<usize>, Vec<u8>, bool) {
        let mut r = DataReader::new(1 << 20, BareLineEndings::Reject);
        let mut out = Vec::new();
        let end = r.feed(input, &mut out);
        (end, out, r.bare_line_ending)
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf() {
        let (end, msg, bare) = read(b"Subject: a\r\n\r\nhello\r\n.\r\nMAIL FROM:<x>\r\n");
        assert_eq!(end, Some(24));
        assert_eq!(msg, b"Subject: a\r\n\r\nhello\r\n");
        assert!(!bare);
        assert_eq!(read(b".\r\n").0, Some(3), "an empty message");
    }

    #[test]
    fn smuggling_variants_never_end_the_data() {
        for v in [
            &b"\n.\n"[..],
            b"\n.\r",
            b"\r.\n",
            b"\r.\r",
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n\x00.\r\n",
        ] {
            let mut input = b"hello".to_vec();
            input.extend_from_slice(v);
            input.extend_from_slice(b"MAIL FROM:<evil@x>\r\n");
            let (end, _, _) = read(&input);
            assert_eq!(end, None, "{v:?} must not end the data");
            let mut complete = input.clone();
            complete.extend_from_slice(b"\r\n.\r\n");
            let (end, _, bare) = read(&complete);
            assert_eq!(end, Some(complete.len()), "{v:?}: only CRLF.CRLF ends it");
            assert_eq!(bare, v != b"\r\n\x00.\r\n", "{v:?}: bare CR/LF detection");
        }
    }

    #[test]
    fn dot_unstuffing() {
        let (_, msg, _) = read(b"..leading\r\n...\r\n.x\r\n.\r\n");
        assert_eq!(msg, b".leading\r\n..\r\nx\r\n");
    }

    #[test]
    fn normalize_mode_repairs_bare_line_endings() {
        let mut r = DataReader::new(1 << 20, BareLineEndings::Normalize);
        let mut out = Vec::new();
        assert!(r.feed(b"a\nb\rc\r\n.\r\n", &mut out).is_some());
        assert!(r.bare_line_ending);
        assert_eq!(out, b"a\r\nb\r\nc\r\n");
    }

    #[test]
    fn size_limit_discards_but_finds_the_end() {
        let mut r = DataReader::new(10, BareLineEndings::Reject);
        let mut out = Vec::new();
        assert_eq!(r.feed(b"0123456789abcdef\r\n", &mut out), None);
        assert_eq!(r.feed(b".\r\n", &mut out), Some(3));
        assert!(r.too_big);
        assert_eq!(out.len(), 10, "what came before the limit was handed on");
        assert!(r.is_empty());
    }

    #[test]
    fn split_input_is_the_same_as_whole() {
        let input = b"a\r\n..b\r\nc\r\n.\r\n";
        for split in 0..input.len() {
            let mut r = DataReader::new(1 << 20, BareLineEndings::Reject);
            let mut out = Vec::new();
            let first = r.feed(&input[..split], &mut out);
            let end = first.or_else(|| r.feed(&input[split..], &mut out).map(|n| n + split));
            assert_eq!(end, Some(input.len()), "split at {split}");
            assert_eq!(out, b"a\r\n.b\r\nc\r\n");
        }
    }
}
