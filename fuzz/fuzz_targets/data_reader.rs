//! The DATA reader: arbitrary input in arbitrary chunks. Never panics; the
//! same input split differently gives the same result; and a message it
//! accepted, dot-stuffed again for the next hop, never contains the end of
//! data before its own end, and reads back as the same message.
#![no_main]

use attrelay::smtp::{BareLineEndings, DataReader};
use libfuzzer_sys::fuzz_target;

/// Dot-stuffing as the next hop receives it, terminator included.
fn stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 8);
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let split = (split as usize).min(input.len());
    let mut whole = DataReader::new(1 << 20, BareLineEndings::Reject);
    let mut a = Vec::new();
    let end_whole = whole.feed(input, &mut a);
    let mut parts = DataReader::new(1 << 20, BareLineEndings::Reject);
    let mut b = Vec::new();
    let end_parts = parts
        .feed(&input[..split], &mut b)
        .or_else(|| parts.feed(&input[split..], &mut b).map(|n| n + split));
    assert_eq!(end_whole, end_parts);
    let bare = whole.bare_line_ending;
    assert_eq!(a, b);
    if end_whole.is_some() && !bare {
        let wire = stuff(&a);
        // The only end of data on the wire is the final one.
        let first_end = wire
            .windows(5)
            .position(|w| w == b"\r\n.\r\n")
            .map(|p| p + 5);
        assert!(first_end.is_none() || first_end == Some(wire.len()) || wire == b".\r\n");
        let mut again = DataReader::new(1 << 20, BareLineEndings::Reject);
        let mut c = Vec::new();
        assert_eq!(again.feed(&wire, &mut c), Some(wire.len()));
        assert_eq!(c, a);
    }
});
