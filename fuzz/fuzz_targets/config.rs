//! The configuration loader on arbitrary text: errors, never panics, and an
//! error always names a position inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = attrelay::config::Config::parse(std::path::Path::new("fuzz.toml"), text) {
        assert!(e.line <= text.lines().count() + 1, "{e}");
    }
});
