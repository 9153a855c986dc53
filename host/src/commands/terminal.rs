//! Text from the network or the spool, made safe to print on an
//! operator's terminal.

/// `s` safe for an operator's terminal: control characters (ESC, BEL, BS,
/// CR, the C1 controls...) and the characters that reorder or hide text
/// (bidirectional overrides and isolates, zero-width marks) written as
/// `\u{..}` escapes. The relay stores no such byte in an address any
/// more, but a spool from an older version, a next hop's reply or another
/// machine's log must neither drive the terminal that lists it nor make
/// one name look like another.
pub fn terminal_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(unsafe_on_a_terminal) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if unsafe_on_a_terminal(c) {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// Controls, and the format characters that change how text reads.
fn unsafe_on_a_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{061C}' | '\u{FEFF}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_reorders_itself_is_escaped() {
        assert_eq!(
            terminal_safe("CN=moc.osotnoc\u{202E}"),
            "CN=moc.osotnoc\\u{202e}"
        );
        assert_eq!(terminal_safe("a\u{200B}b\u{85}"), "a\\u{200b}b\\u{85}");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(terminal_safe("a@b.example"), "a@b.example");
        let hostile = "\"x\u{1b}[2J\u{7}\u{8}\r\"@evil.example";
        let shown = terminal_safe(hostile);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert_eq!(shown, "\"x\\u{1b}[2J\\u{7}\\u{8}\\u{d}\"@evil.example");
    }
}
