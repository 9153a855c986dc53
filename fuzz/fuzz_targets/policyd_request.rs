//! The Postfix policy-delegation request reader on arbitrary bytes, fed in
//! arbitrary chunks: it errors, never panics; the chunking never changes the
//! result; every request holds within the limits; a request read back from
//! its own serialisation is the same request; and reading its facts never
//! panics either.
#![no_main]

use attrelay::policyd::query;
use attrelay::policyd::{PolicyRequest, RequestDecoder, RequestError, RequestLimits};
use libfuzzer_sys::fuzz_target;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::Decoder;

const LIMITS: RequestLimits = RequestLimits {
    max_line: 256,
    max_attributes: 16,
    max_request: 2048,
};

/// Feeds `input` in chunks of `chunk` bytes; the requests read and the
/// error that ended the stream, if any.
fn read(input: &[u8], chunk: usize) -> (Vec<PolicyRequest>, Option<RequestError>) {
    let mut d = RequestDecoder::new(LIMITS);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    loop {
        match d.decode_eof(&mut buf) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let whole = read(input, input.len());
    let chunked = read(input, usize::from(first % 17) + 1);
    assert_eq!(whole.0, chunked.0, "chunking changed the requests");
    // An over-long line may be noticed at a different line count when the
    // data arrives in pieces; whether the stream failed must not differ.
    assert_eq!(whole.1.is_some(), chunked.1.is_some(), "{whole:?} / {chunked:?}");
    for r in &whole.0 {
        assert!(!r.is_empty() && r.len() <= LIMITS.max_attributes);
        let mut text = String::new();
        for (name, value) in r.attributes() {
            assert!(!name.is_empty() && !name.contains('='));
            assert!(!format!("{name}{value}").contains(['\n', '\0']));
            text.push_str(&format!("{name}={value}\n"));
        }
        text.push('\n');
        let again = read(text.as_bytes(), text.len());
        // A value ending in CR was read as the CR of a CRLF line end.
        if !r.attributes().iter().any(|(_, v)| v.ends_with('\r')) {
            assert_eq!(again.0, vec![r.clone()], "round trip of {text:?}");
        }
        let _ = query(r, "relay.test", 0);
    }
});
