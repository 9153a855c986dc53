//! The limits of one SMTP session (`[server]`), with their defaults.

use std::time::Duration;

use super::data::BareLineEndings;

/// Session limits (`[server]`), and their defaults: the only place they
/// are defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest command line accepted, CRLF included.
    pub max_line: usize,
    /// The SIZE limit.
    pub max_message_size: usize,
    /// Bytes a message's header section may take; more is refused with
    /// `552 5.3.4` (`intake::incoming` holds the section in
    /// memory until it is decided).
    pub max_header_size: usize,
    pub max_recipients: usize,
    /// Waiting for a command (RFC 5321 4.5.3.2.7 suggests 5 minutes).
    pub idle_timeout: Duration,
    /// Waiting for the next chunk of message data (RFC 5321: 3 minutes).
    pub data_timeout: Duration,
    /// Errors before the session is ended with `421 4.7.0`: bad commands,
    /// refused and deferred recipients (Postfix's `smtpd_hard_error_limit`).
    pub max_errors: u32,
    /// Errors after which each further error's reply is delayed, by
    /// `error_delay` times the number of errors over this limit (Postfix's
    /// `smtpd_soft_error_limit` and `smtpd_error_sleep_time`): a client
    /// probing recipients or relaying slows down at once.
    pub soft_errors: u32,
    pub error_delay: Duration,
    /// Most `Received` fields a message may carry (Postfix's
    /// `hopcount_limit`); more is a mail loop, refused with `554 5.4.6`.
    pub max_hops: usize,
    pub tls_handshake_timeout: Duration,
    pub bare_line_endings: BareLineEndings,
    /// Whole-session deadline.
    pub max_session: Duration,
    /// Delay before the greeting, to catch clients that talk first.
    pub pregreet_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 2048,
            max_message_size: 25 * 1024 * 1024,
            max_header_size: crate::intake::DEFAULT_MAX_HEADER_SIZE,
            max_recipients: 100,
            idle_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            max_errors: 10,
            soft_errors: 5,
            error_delay: Duration::from_millis(250),
            max_hops: 50,
            tls_handshake_timeout: Duration::from_secs(30),
            bare_line_endings: BareLineEndings::Reject,
            max_session: Duration::from_secs(3600),
            pregreet_delay: Duration::ZERO,
        }
    }
}
