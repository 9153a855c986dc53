//! The DATA reader: arbitrary input in arbitrary chunks. Never panics; when it
//! reports an end, the message never contains CR LF . CR LF (the end of data
//! cannot hide inside a message), and the same input split differently gives
//! the same result.
#![no_main]

use attrelay::smtp::data::{BareLineEndings, DataReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let split = (split as usize).min(input.len());
    let mut whole = DataReader::new(1 << 20, BareLineEndings::Reject);
    let end_whole = whole.feed(input);
    let mut parts = DataReader::new(1 << 20, BareLineEndings::Reject);
    let end_parts = parts
        .feed(&input[..split])
        .or_else(|| parts.feed(&input[split..]).map(|n| n + split));
    assert_eq!(end_whole, end_parts);
    let (a, b) = (whole.into_message(), parts.into_message());
    assert_eq!(a, b);
    if end_whole.is_some() {
        assert!(!a.windows(5).any(|w| w == b"\r\n.\r\n"));
    }
});
