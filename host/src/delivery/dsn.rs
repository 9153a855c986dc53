//! Delivery status notifications (RFC 3464): the bounce a sender gets when a
//! recipient failed permanently or the message outlived the queue.
//!
//! Built by hand rather than with a MIME builder because RFC 3464 fixes every
//! part and field: a `multipart/report` with a human-readable part, a
//! `message/delivery-status` part, and the original header section.

use crate::spool::{Envelope, Recipient, RecipientState};

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

fn header_section(message: &[u8]) -> &[u8] {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 2)
        .unwrap_or(message.len());
    &message[..end]
}

/// Builds the DSN message for the failed recipients of `original`.
pub fn build(hostname: &str, original: &Envelope, message: &[u8], id: &str, date: &str) -> Vec<u8> {
    let failed: Vec<&Recipient> = original
        .recipients
        .iter()
        .filter(|r| matches!(r.state, RecipientState::Failed { .. }))
        .collect();
    let boundary = format!("{id}/{hostname}");
    let mut m = String::new();
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
    ));
    m.push_str(&format!("To: <{}>\r\n", original.sender));
    m.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
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
        "This is the mail system at host {hostname}.\r\n\r\nYour message (queue id {}) could not be delivered to one or more\r\nrecipients. It is attached below.\r\n\r\n",
        original.id
    ));
    for r in &failed {
        if let RecipientState::Failed { reply } = &r.state {
            m.push_str(&format!("<{}>: {}\r\n", r.address, reply));
        }
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
    for r in &failed {
        if let RecipientState::Failed { reply } = &r.state {
            m.push_str(&format!(
                "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\nDiagnostic-Code: smtp; {}\r\n",
                r.address,
                status_of(reply),
                reply
            ));
        }
    }
    m.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    ));
    let mut bytes = m.into_bytes();
    bytes.extend_from_slice(header_section(message));
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

    #[test]
    fn report_structure() {
        let env = Envelope {
            id: "Q1".into(),
            sender: "john@contoso.com".into(),
            recipients: vec![
                Recipient {
                    address: "a@x.example".into(),
                    state: RecipientState::Failed {
                        reply: "550 5.1.1 User unknown".into(),
                    },
                },
                Recipient {
                    address: "b@x.example".into(),
                    state: RecipientState::Delivered {
                        reply: "250 ok".into(),
                    },
                },
            ],
            tenant: Some("contoso".into()),
            received_at: 1_700_000_000,
            attempts: 1,
            next_attempt: 0,
            last_error: None,
            is_dsn: false,
            client: "203.0.113.5".into(),
            message_sha256: String::new(),
            message_len: 0,
        };
        let dsn = String::from_utf8(build(
            "relay.test",
            &env,
            b"Subject: hi\r\nFrom: j\r\n\r\nsecret body\r\n",
            "D1",
            "Mon, 1 Jan 2024 00:00:00 +0000",
        ))
        .unwrap();
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
}
