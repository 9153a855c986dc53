//! The Postfix policy-delegation request reader.
//!
//! A request is a sequence of `name=value` lines, each ended by a newline,
//! and the request is ended by an empty line (Postfix `SMTPD_POLICY_README`).
//! The bytes come from a peer we only partly trust — any process that can
//! reach the socket — so the reader is bounded everywhere: the length of a
//! line, the number of attributes, the size of a whole request. A request
//! that breaks the protocol or a limit is an error; the server then logs it
//! and closes the connection without replying, as the protocol asks ("in
//! case of trouble the policy server must not send a reply"), and Postfix
//! applies its own `smtpd_policy_service_default_action` (a 451 by default)
//! or retries: nothing malformed is ever answered with a permit.

use tokio_util::bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

/// Bounds on one request. Postfix's own requests are about 1 KiB with
/// some 30 attributes; the defaults leave room for long addresses and
/// certificate names and for attributes added by future Postfix versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Longest line, newline included.
    pub max_line: usize,
    /// Most attributes in one request.
    pub max_attributes: usize,
    /// Largest request, all lines together.
    pub max_request: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_line: 4096,
            max_attributes: 128,
            max_request: 64 * 1024,
        }
    }
}

/// Why a request was refused. Every variant ends the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("line {line}: longer than {limit} bytes")]
    LineTooLong { line: usize, limit: usize },
    #[error("more than {limit} attributes in one request")]
    TooManyAttributes { limit: usize },
    #[error("request larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("line {line}: not a name=value attribute")]
    NotAnAttribute { line: usize },
    #[error("line {line}: empty attribute name")]
    EmptyName { line: usize },
    #[error("line {line}: attribute contains a NUL byte")]
    Nul { line: usize },
    #[error("line {line}: attribute is not UTF-8")]
    NotUtf8 { line: usize },
    #[error("empty request (a blank line with no attributes before it)")]
    Empty,
    #[error("connection closed in the middle of a request")]
    Truncated,
    #[error("the request has no 'request' attribute")]
    MissingRequestType,
    #[error("unsupported request type '{0}' (only smtpd_access_policy is served)")]
    UnsupportedRequestType(String),
    #[error("attribute '{name}' is required in protocol state {state}")]
    Missing { name: &'static str, state: String },
    #[error("attribute '{name}' has an invalid value '{value}'")]
    Invalid { name: &'static str, value: String },
    #[error("reading the request: {0}")]
    Io(String),
}

impl From<std::io::Error> for RequestError {
    fn from(e: std::io::Error) -> Self {
        RequestError::Io(e.to_string())
    }
}

/// One request's attributes, in the order received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRequest {
    attributes: Vec<(String, String)>,
}

impl PolicyRequest {
    /// The value of `name`. When an attribute is repeated the first value
    /// counts (the protocol lets the server keep either): a value appended
    /// later cannot override one Postfix put first.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`, or `""` when absent (the protocol treats an
    /// absent attribute and an empty one alike).
    pub fn value(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }

    pub fn attributes(&self) -> &[(String, String)] {
        &self.attributes
    }

    pub fn len(&self) -> usize {
        self.attributes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attributes.is_empty()
    }
}

/// Splits a byte stream into [`PolicyRequest`]s (a `tokio_util` decoder, so
/// that the same code reads sockets and fuzzer input).
#[derive(Debug, Default)]
pub struct RequestDecoder {
    limits: RequestLimits,
    current: PolicyRequest,
    /// Bytes of the current request consumed so far.
    size: usize,
    /// Lines of the current request so far (for error positions).
    lines: usize,
}

impl RequestDecoder {
    pub fn new(limits: RequestLimits) -> RequestDecoder {
        RequestDecoder {
            limits,
            ..Default::default()
        }
    }

    /// Whether part of a request has been read.
    pub fn in_request(&self) -> bool {
        self.lines > 0
    }

    /// Parses one line (without its newline) into the current request.
    fn attribute(&mut self, line: &[u8]) -> Result<(), RequestError> {
        let n = self.lines;
        if line.contains(&0) {
            return Err(RequestError::Nul { line: n });
        }
        let line = std::str::from_utf8(line).map_err(|_| RequestError::NotUtf8 { line: n })?;
        let (name, value) = line
            .split_once('=')
            .ok_or(RequestError::NotAnAttribute { line: n })?;
        if name.is_empty() {
            return Err(RequestError::EmptyName { line: n });
        }
        if self.current.len() >= self.limits.max_attributes {
            return Err(RequestError::TooManyAttributes {
                limit: self.limits.max_attributes,
            });
        }
        self.current
            .attributes
            .push((name.to_string(), value.to_string()));
        Ok(())
    }
}

impl Decoder for RequestDecoder {
    type Item = PolicyRequest;
    type Error = RequestError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<PolicyRequest>, RequestError> {
        loop {
            let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                // No complete line yet: refuse to buffer past the limits.
                if buf.len() >= self.limits.max_line {
                    return Err(RequestError::LineTooLong {
                        line: self.lines + 1,
                        limit: self.limits.max_line,
                    });
                }
                if self.size + buf.len() > self.limits.max_request {
                    return Err(RequestError::TooLarge {
                        limit: self.limits.max_request,
                    });
                }
                return Ok(None);
            };
            self.lines += 1;
            if end + 1 > self.limits.max_line {
                return Err(RequestError::LineTooLong {
                    line: self.lines,
                    limit: self.limits.max_line,
                });
            }
            self.size += end + 1;
            if self.size > self.limits.max_request {
                return Err(RequestError::TooLarge {
                    limit: self.limits.max_request,
                });
            }
            let mut line = &buf[..end];
            // Postfix ends lines with LF; a CR before it (a person typing
            // into telnet) is tolerated.
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            if line.is_empty() {
                buf.advance(end + 1);
                let request = std::mem::take(&mut self.current);
                self.size = 0;
                self.lines = 0;
                if request.is_empty() {
                    return Err(RequestError::Empty);
                }
                return Ok(Some(request));
            }
            let line = line.to_vec();
            buf.advance(end + 1);
            self.attribute(&line)?;
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<PolicyRequest>, RequestError> {
        match self.decode(buf)? {
            Some(r) => Ok(Some(r)),
            None if buf.is_empty() && self.current.is_empty() => Ok(None),
            None => Err(RequestError::Truncated),
        }
    }
}

/// Decodes Postfix's xtext (RFC 3461 style: `+XX` is the byte 0xXX), used
/// for the `ccert_*` attributes. A malformed escape is kept literally, as
/// Postfix never produces one; bytes that do not form UTF-8 are replaced.
pub fn xtext_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], limits: RequestLimits) -> Result<Vec<PolicyRequest>, RequestError> {
        let mut d = RequestDecoder::new(limits);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = d.decode_eof(&mut buf)? {
            out.push(r);
        }
        Ok(out)
    }

    #[test]
    fn requests_are_split_on_empty_lines_and_first_values_win() {
        let input = b"request=smtpd_access_policy\nsender=a@b\nsender=evil@x\nempty=\n\nrequest=smtpd_access_policy\r\nx=a=b\r\n\r\n";
        let r = decode_all(input, RequestLimits::default()).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].get("sender"), Some("a@b"));
        assert_eq!(r[0].get("empty"), Some(""));
        assert_eq!(r[0].get("absent"), None);
        assert_eq!(r[1].get("x"), Some("a=b"), "only the first '=' separates");
    }

    #[test]
    fn byte_by_byte_input_gives_the_same_requests() {
        let input = b"request=smtpd_access_policy\nprotocol_state=RCPT\n\n";
        let mut d = RequestDecoder::new(RequestLimits::default());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in input {
            buf.extend_from_slice(&[*b]);
            if let Some(r) = d.decode(&mut buf).unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].get("protocol_state"), Some("RCPT"));
    }

    #[test]
    fn malformed_requests_are_errors() {
        let l = RequestLimits::default();
        assert_eq!(
            decode_all(b"request\n\n", l),
            Err(RequestError::NotAnAttribute { line: 1 })
        );
        assert_eq!(
            decode_all(b"a=1\n=2\n\n", l),
            Err(RequestError::EmptyName { line: 2 })
        );
        assert_eq!(
            decode_all(b"a=x\0y\n\n", l),
            Err(RequestError::Nul { line: 1 })
        );
        assert_eq!(
            decode_all(b"a=\xff\n\n", l),
            Err(RequestError::NotUtf8 { line: 1 })
        );
        assert_eq!(decode_all(b"\n", l), Err(RequestError::Empty));
        assert_eq!(decode_all(b"a=1\nb=2", l), Err(RequestError::Truncated));
        assert_eq!(decode_all(b"", l), Ok(vec![]));
    }

    #[test]
    fn limits_hold_before_the_data_is_buffered() {
        let l = RequestLimits {
            max_line: 16,
            max_attributes: 2,
            max_request: 40,
        };
        // A line that never ends is refused once it reaches the limit.
        let mut d = RequestDecoder::new(l);
        let mut buf = BytesMut::from(&[b'a'; 16][..]);
        assert_eq!(
            d.decode(&mut buf),
            Err(RequestError::LineTooLong { line: 1, limit: 16 })
        );
        assert_eq!(
            decode_all(b"a=1\nb=2\nc=3\n\n", l),
            Err(RequestError::TooManyAttributes { limit: 2 })
        );
        let l = RequestLimits {
            max_attributes: 100,
            ..l
        };
        assert_eq!(
            decode_all(b"a=123456789\nb=123456789\nc=123456789\nd=123456789\n\n", l),
            Err(RequestError::TooLarge { limit: 40 })
        );
    }

    #[test]
    fn xtext_escapes_are_decoded() {
        assert_eq!(xtext_decode("Wietse+20Venema"), "Wietse Venema");
        assert_eq!(xtext_decode("a+2Bb"), "a+b");
        assert_eq!(xtext_decode("trailing+2"), "trailing+2");
        assert_eq!(xtext_decode("bad+zz"), "bad+zz");
        assert_eq!(xtext_decode("caf+C3+A9"), "café");
    }
}
