//! Text from the network or the spool, made safe to print on an
//! operator's terminal.

/// `s` safe for an operator's terminal: control characters (ESC, BEL, BS,
/// CR...) written as `\u{..}` escapes. The relay stores no such byte in an
/// address any more, but a spool from an older version, or a next hop's
/// reply, must not drive the terminal that lists it.
pub fn terminal_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(terminal_safe("a@b.example"), "a@b.example");
        let hostile = "\"x\u{1b}[2J\u{7}\u{8}\r\"@evil.example";
        let shown = terminal_safe(hostile);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert_eq!(shown, "\"x\\u{1b}[2J\\u{7}\\u{8}\\u{d}\"@evil.example");
    }
}
