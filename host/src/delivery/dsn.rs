//! Delivery status notifications (RFC 3464): the bounce a sender gets when a
//! recipient failed permanently or the message outlived the queue.
//!
//! Built by hand rather than with a MIME builder because RFC 3464 fixes every
//! part and field: a `multipart/report` with a human-readable part, a
//! `message/delivery-status` part, and (optionally) the original header
//! section.
//!
//! **Backscatter.** A DSN goes to the reverse-path, which anyone can forge:
//! mail written to a recipient the next hop refuses would make the relay
//! carry the writer's text to the forged sender. So what a DSN returns
//! depends on whether a connector authenticated the sender
//! ([`Envelope::authenticated`]): the original's header section for a
//! tenant's own mail ([`Returned::Headers`]), nothing of it otherwise
//! ([`Returned::StatusOnly`]) — and DSNs for unauthenticated senders are
//! limited per sender domain ([`DsnLimiter`]). The body is never returned.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::spool::{Envelope, Recipient, RecipientState};

/// The default of `[delivery] dsn_rate_per_domain_per_hour`: enough for a
/// real sender's occasional typos in the hour, too few to make the relay a
/// spam cannon for one forged domain.
pub const DEFAULT_RATE_PER_DOMAIN_PER_HOUR: u32 = 10;

/// The period the rate counts over.
const WINDOW: Duration = Duration::from_secs(3600);

/// Sender domains remembered at once. A flood of forged domains could
/// otherwise grow the table without bound; when it is full of domains still
/// inside their hour, DSNs for new domains are suppressed (the safe side:
/// a missing DSN is a lost report, an extra one is backscatter).
const MAX_TRACKED_DOMAINS: usize = 100_000;

/// DSNs for unauthenticated senders in one hour, all domains together: the
/// per-domain rate alone can be multiplied by forging senders in as many
/// domains (subdomains of a wildcard MX cost nothing).
pub const MAX_PER_HOUR_TOTAL: u32 = 1000;

/// The key of the all-domains window (no domain is `*`).
const ALL_DOMAINS: &str = "*";

/// What of the original message a DSN carries back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    /// Its header section (`text/rfc822-headers`): for senders a connector
    /// authenticated, who need it to tell which of their messages failed.
    Headers,
    /// Nothing of it, only the delivery status: the sender may be forged,
    /// and the headers (Subject first) are the attacker's text.
    StatusOnly,
}

/// DSNs per sender domain for mail whose sender was not authenticated: at
/// most `per_hour` in each hour counted from a domain's first DSN, kept in
/// memory (a restart forgets, which at worst allows one more allowance).
#[derive(Debug)]
pub struct DsnLimiter {
    per_hour: u32,
    windows: Mutex<HashMap<String, Window>>,
    suppressed: AtomicU64,
}

/// One sender domain's current hour.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    sent: u32,
}

impl Default for DsnLimiter {
    fn default() -> Self {
        DsnLimiter::new(DEFAULT_RATE_PER_DOMAIN_PER_HOUR)
    }
}

impl DsnLimiter {
    /// At most `per_hour` DSNs per sender domain and hour; 0: none at all.
    pub fn new(per_hour: u32) -> DsnLimiter {
        DsnLimiter {
            per_hour,
            windows: Mutex::new(HashMap::new()),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a DSN to `sender` may be sent now; if so, it is counted.
    pub fn allow(&self, sender: &str) -> bool {
        self.allow_at(sender, Instant::now())
    }

    /// DSNs refused so far.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    fn allow_at(&self, sender: &str, now: Instant) -> bool {
        let allowed = self.per_hour > 0 && self.take(sender_domain(sender), now);
        if !allowed {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }

    /// Counts one DSN for `domain` if its hour, and the hour of all
    /// domains together, have room.
    fn take(&self, domain: String, now: Instant) -> bool {
        // A panic elsewhere while holding the lock leaves counts that are
        // still counts: keep using them.
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if !windows.contains_key(&domain) && windows.len() >= MAX_TRACKED_DOMAINS {
            windows.retain(|_, w| !w.expired(now));
            if windows.len() >= MAX_TRACKED_DOMAINS {
                return false;
            }
        }
        let all = *Window::current(&mut windows, ALL_DOMAINS.to_string(), now);
        let one = *Window::current(&mut windows, domain.clone(), now);
        if all.sent >= MAX_PER_HOUR_TOTAL || one.sent >= self.per_hour {
            return false;
        }
        for key in [ALL_DOMAINS.to_string(), domain] {
            if let Some(w) = windows.get_mut(&key) {
                w.sent += 1;
            }
        }
        true
    }
}

impl Window {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) >= WINDOW
    }

    /// The window of `key` at `now`: created, or restarted when its hour
    /// is over.
    fn current(windows: &mut HashMap<String, Window>, key: String, now: Instant) -> &mut Window {
        let w = windows.entry(key).or_insert(Window {
            started: now,
            sent: 0,
        });
        if w.expired(now) {
            *w = Window {
                started: now,
                sent: 0,
            };
        }
        w
    }
}

/// The domain a DSN to `sender` goes to, lower case (the whole address
/// when it has no `@`).
fn sender_domain(sender: &str) -> String {
    let domain = sender.rsplit_once('@').map_or(sender, |(_, d)| d);
    attrelay_policy::certname::normalize(domain)
}

/// The enhanced status code of an SMTP reply ("550 5.1.1 ..." → "5.1.1"), or a
/// generic one of the reply's class.
pub fn status_of(reply: &str) -> String {
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or("");
    if let Some(esc) = words.next() {
        let parts: Vec<&str> = esc.split('.').collect();
        if parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            return esc.to_string();
        }
    }
    match code.chars().next() {
        Some('4') => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

/// The most of an original's header section a DSN carries back: its whole
/// lines up to this length. `[server] max_header_size` may allow more, and a
/// report has no use for megabytes of someone's header fields.
pub const MAX_RETURNED_HEADERS: usize = 256 * 1024;

/// The header section of `message` (given whole or as a prefix of at least
/// [`MAX_RETURNED_HEADERS`] + 4 bytes), cut to whole lines within
/// [`MAX_RETURNED_HEADERS`].
fn header_section(message: &[u8]) -> &[u8] {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 2)
        .unwrap_or(message.len());
    if end <= MAX_RETURNED_HEADERS {
        return &message[..end];
    }
    let cut = &message[..MAX_RETURNED_HEADERS];
    let lines = cut
        .windows(2)
        .rposition(|w| w == b"\r\n")
        .map_or(0, |i| i + 2);
    &message[..lines]
}

/// What a DSN tells the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The recipients that failed for good and were not reported yet
    /// (earlier attempts' failures went in DSNs of their own).
    Failed,
    /// The recipients still pending after `[delivery] delay_warning_secs`:
    /// the relay keeps trying (RFC 3464 `Action: delayed`).
    Delayed,
}

/// Builds the DSN message `notice` describes for `original`, returning
/// what `returned` allows of `message`.
pub fn build(
    hostname: &str,
    original: &Envelope,
    message: &[u8],
    returned: Returned,
    notice: Notice,
    id: &str,
    date: &str,
) -> Vec<u8> {
    let last = original.last_error.clone().unwrap_or_default();
    let listed: Vec<(&Recipient, &str)> = original
        .recipients
        .iter()
        .filter_map(|r| match (&r.state, notice) {
            (RecipientState::Failed { reply, .. }, Notice::Failed)
                if r.state.unreported_failure() =>
            {
                Some((r, reply.as_str()))
            }
            (RecipientState::Pending, Notice::Delayed) => Some((r, last.as_str())),
            _ => None,
        })
        .collect();
    let (subject, what, action) = match notice {
        Notice::Failed => (
            "Undelivered Mail Returned to Sender",
            "could not be delivered to one or more\r\nrecipients.",
            "failed",
        ),
        Notice::Delayed => (
            "Delayed Mail (still being retried)",
            "has not yet been delivered to one or more\r\nrecipients. The relay keeps trying; no action is needed, and you will\r\nhear again only if it gives up.",
            "delayed",
        ),
    };
    let boundary = format!("{id}/{hostname}");
    let mut m = String::new();
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
    ));
    m.push_str(&format!("To: <{}>\r\n", original.sender));
    m.push_str(&format!("Subject: {subject}\r\n"));
    m.push_str(&format!("Date: {date}\r\n"));
    m.push_str(&format!("Message-ID: <{id}@{hostname}>\r\n"));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    m.push_str("This is a MIME-encapsulated message.\r\n\r\n");
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ));
    m.push_str(&format!(
        "This is the mail system at host {hostname}.\r\n\r\nYour message (queue id {}) {what} {}\r\n\r\n",
        original.id,
        match returned {
            Returned::Headers => "Its header section is attached below.",
            Returned::StatusOnly => {
                "Its sender could not be verified, so none of it is returned.\r\nIf you did not send it, your address was forged: ignore this report."
            }
        }
    ));
    for (r, reply) in &listed {
        m.push_str(&format!("<{}>: {}\r\n", r.address, reply));
    }
    m.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    m.push_str(&format!("Reporting-MTA: dns; {hostname}\r\n"));
    m.push_str(&format!("X-Attrelay-Queue-ID: {}\r\n", original.id));
    if !original.client.is_empty() {
        m.push_str(&format!(
            "Received-From-MTA: dns; [{}]\r\n",
            original.client
        ));
    }
    let arrival = time::OffsetDateTime::from_unix_timestamp(original.received_at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc2822)
                .ok()
        })
        .unwrap_or_default();
    m.push_str(&format!("Arrival-Date: {arrival}\r\n"));
    for (r, reply) in &listed {
        let status = match status_of(reply) {
            // Still being retried: a temporary status whatever the last
            // error said (or if there was none).
            s if notice == Notice::Delayed && !s.starts_with('4') => "4.0.0".to_string(),
            s => s,
        };
        m.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: {action}\r\nStatus: {status}\r\n",
            r.address,
        ));
        if !reply.is_empty() {
            m.push_str(&format!("Diagnostic-Code: smtp; {reply}\r\n"));
        }
    }
    let mut bytes = m.into_bytes();
    if returned == Returned::Headers {
        bytes.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n").as_bytes(),
        );
        bytes.extend_from_slice(header_section(message));
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes() {
        assert_eq!(status_of("550 5.1.1 User unknown"), "5.1.1");
        assert_eq!(status_of("554 Transaction failed"), "5.0.0");
        assert_eq!(status_of("451 try later"), "4.0.0");
    }

    /// One recipient failed, one delivered.
    fn failed_once() -> Envelope {
        let recipients = vec![
            Recipient {
                address: "a@x.example".into(),
                state: RecipientState::Failed {
                    reply: "550 5.1.1 User unknown".into(),
                    reported: false,
                },
            },
            Recipient {
                address: "b@x.example".into(),
                state: RecipientState::Delivered {
                    reply: "250 ok".into(),
                },
            },
        ];
        Envelope {
            tenant: Some("contoso".into()),
            received_at: 1_700_000_000,
            attempts: 1,
            next_attempt: 0,
            client: "203.0.113.5".into(),
            authenticated: true,
            ..Envelope::new("Q1".into(), "john@contoso.com".into(), recipients)
        }
    }

    fn report(returned: Returned) -> String {
        String::from_utf8(build(
            "relay.test",
            &failed_once(),
            b"Subject: hi\r\nFrom: j\r\n\r\nsecret body\r\n",
            returned,
            Notice::Failed,
            "D1",
            "Mon, 1 Jan 2024 00:00:00 +0000",
        ))
        .unwrap()
    }

    #[test]
    fn report_structure() {
        let dsn = report(Returned::Headers);
        assert!(dsn.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(dsn.contains("Final-Recipient: rfc822; a@x.example\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 User unknown"));
        assert!(
            !dsn.contains("b@x.example"),
            "delivered recipients are not reported"
        );
        assert!(dsn.contains("Subject: hi\r\nFrom: j\r\n"));
        assert!(
            !dsn.contains("secret body"),
            "only the header section is returned"
        );
        assert!(dsn.ends_with("--D1/relay.test--\r\n"));
    }

    #[test]
    fn a_returned_header_section_is_whole_lines_within_the_bound() {
        let short = b"Subject: a\r\nFrom: b\r\n\r\nbody\r\n";
        assert_eq!(header_section(short), b"Subject: a\r\nFrom: b\r\n");
        assert_eq!(header_section(b"Subject: a\r\n"), b"Subject: a\r\n");
        // A header section longer than the bound (as a prefix of a longer
        // message hands it over): cut after the last whole line within it.
        let line = b"X-Filler: 0123456789012345678901234567890123456789\r\n";
        let mut long = line.repeat(MAX_RETURNED_HEADERS / line.len() + 10);
        long.truncate(MAX_RETURNED_HEADERS + 4);
        let cut = header_section(&long);
        assert!(cut.len() <= MAX_RETURNED_HEADERS && cut.len() > MAX_RETURNED_HEADERS - line.len());
        assert_eq!(cut.len() % line.len(), 0);
    }

    #[test]
    fn a_status_only_report_returns_nothing_of_the_original() {
        let dsn = report(Returned::StatusOnly);
        assert!(
            dsn.contains("Final-Recipient: rfc822; a@x.example\r\nAction: failed\r\nStatus: 5.1.1")
        );
        assert!(!dsn.contains("text/rfc822-headers"), "{dsn}");
        assert!(!dsn.contains("Subject: hi"), "{dsn}");
        assert!(!dsn.contains("secret body"), "{dsn}");
        assert!(dsn.contains("none of it is returned"), "{dsn}");
        // Two parts, then the closing boundary.
        assert_eq!(dsn.matches("\r\n--D1/relay.test\r\n").count(), 2, "{dsn}");
        assert!(dsn.ends_with(
            "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n--D1/relay.test--\r\n"
        ));
    }

    #[test]
    fn the_limiter_counts_per_sender_domain_and_hour() {
        let limiter = DsnLimiter::new(2);
        let t0 = Instant::now();
        assert!(limiter.allow_at("a@Forged.example", t0));
        assert!(limiter.allow_at("b@forged.example.", t0));
        assert!(!limiter.allow_at("c@FORGED.example", t0));
        // Another domain has its own allowance.
        assert!(limiter.allow_at("a@other.example", t0));
        // Still within the hour.
        assert!(!limiter.allow_at("a@forged.example", t0 + Duration::from_secs(3599)));
        // A new hour.
        let t1 = t0 + Duration::from_secs(3600);
        assert!(limiter.allow_at("a@forged.example", t1));
        assert!(limiter.allow_at("a@forged.example", t1));
        assert!(!limiter.allow_at("a@forged.example", t1));
        assert_eq!(limiter.suppressed(), 3);
    }

    #[test]
    fn a_zero_rate_sends_none() {
        let limiter = DsnLimiter::new(0);
        assert!(!limiter.allow("victim@forged.example"));
        assert!(!limiter.allow("postmaster"));
        assert_eq!(limiter.suppressed(), 2);
    }

    #[test]
    fn forged_domains_share_one_hourly_total() {
        let limiter = DsnLimiter::new(1);
        let t0 = Instant::now();
        for i in 0..MAX_PER_HOUR_TOTAL {
            assert!(limiter.allow_at(&format!("x@d{i}.example"), t0));
        }
        // One more domain, within the per-domain rate but past the total.
        assert!(!limiter.allow_at("x@new.example", t0));
        assert!(limiter.allow_at("x@new.example", t0 + WINDOW));
    }

    #[test]
    fn a_flood_of_domains_keeps_the_table_bounded() {
        let limiter = DsnLimiter::new(1);
        let t0 = Instant::now();
        // Spread over hours so that the total never refuses: the table's
        // own bound does.
        let mut t = t0;
        for i in 0..MAX_TRACKED_DOMAINS - 1 {
            if i % MAX_PER_HOUR_TOTAL as usize == 0 {
                t = t0 + Duration::from_millis(i as u64);
                limiter.windows.lock().unwrap().remove(ALL_DOMAINS);
            }
            assert!(limiter.allow_at(&format!("x@d{i}.example"), t));
        }
        // Full of domains inside their hour: a new domain is refused...
        assert!(!limiter.allow_at("x@new.example", t));
        // ...until their hours end and they are forgotten.
        let later = t + WINDOW;
        assert!(limiter.allow_at("x@new.example", later));
        assert_eq!(limiter.windows.lock().unwrap().len(), 2);
    }

    #[test]
    fn sender_domains() {
        assert_eq!(sender_domain("John@Contoso.COM"), "contoso.com");
        assert_eq!(sender_domain("\"a@b\"@x.example"), "x.example");
        assert_eq!(sender_domain("postmaster"), "postmaster");
    }
}
