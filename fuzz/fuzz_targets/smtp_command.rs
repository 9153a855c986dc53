//! The SMTP command reader: line framing with the length limit, then
//! smtp-proto's parser, as the session uses them. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.len() > 2048 {
            continue;
        }
        let _ = smtp_proto::Request::parse(&mut line.iter()).map(|r| r.into_owned());
    }
});
