//! Exchange send protocol logs (the `SendProtocolLogPath` of the send
//! connector that relays to us): CSV files with `#`-header lines, one line
//! per event, whose columns `#Fields:` names. The rows that matter here
//! are those the reference's troubleshooting article points at, written
//! when the server sends its certificate:
//!
//! ```text
//! ...,*,,Sending certificate
//! ...,*,CN=*.contoso.com,Certificate subject
//! ...,*,"CN=Contoso CA, O=Contoso",Certificate issuer name
//! ...,*,0A1B2C,Certificate serial number
//! ...,*,9F86D081884C7D65,Certificate thumbprint
//! ...,*,mail.contoso.com;contoso.com,Certificate alternate names
//! ```
//!
//! Exchange 2010 (`#Version: 14...`) and 2013 and later (`15...`) write the
//! same columns; the label may stand in `context` (the usual place) or in
//! `data` with the value in `context`, and Exchange 2010 writes no
//! alternate names. Lines are grouped by `session-id`; each session that
//! sent a certificate yields one [`SentCertificate`].

use std::collections::BTreeMap;
use std::io::BufRead;

/// A line longer than this is not a protocol log line; it is skipped and
/// counted, never held whole.
pub const MAX_LINE: usize = 64 * 1024;
/// The alternate names kept of one certificate: as many as the relay
/// considers (`crate::certificate::MAX_DNS_NAMES`), so that the diagnosis
/// judges what the relay would.
pub const MAX_NAMES: usize = crate::certificate::MAX_DNS_NAMES;
/// Log versions remembered (a directory of logs has one or two).
const MAX_VERSIONS: usize = 8;

/// The certificate one session sent, as the log records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SentCertificate {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub thumbprint: String,
    /// The subject alternative names, when the log lists them (2013+).
    pub alternate_names: Vec<String>,
}

impl SentCertificate {
    /// What identifies a certificate across sessions.
    pub fn key(&self) -> String {
        if self.thumbprint.is_empty() {
            format!("{}|{}|{}", self.subject, self.issuer, self.serial)
        } else {
            self.thumbprint.to_ascii_uppercase()
        }
    }

    /// The subject's common names (`CN=...`, quoted or not).
    pub fn common_names(&self) -> Vec<String> {
        rdns(&self.subject)
            .into_iter()
            .filter_map(|(k, v)| k.eq_ignore_ascii_case("CN").then_some(v))
            .collect()
    }
}

/// The attribute/value pairs of a distinguished name as Exchange writes it
/// (`CN=a, OU=b, O="c, d"`): split at commas outside quotes.
fn rdns(dn: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let (mut part, mut quoted) = (String::new(), false);
    for c in dn.chars().chain(std::iter::once(',')) {
        match c {
            '"' => quoted = !quoted,
            ',' | ';' if !quoted => {
                if let Some((k, v)) = part.split_once('=') {
                    out.push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
                }
                part.clear();
            }
            c => part.push(c),
        }
    }
    out
}

/// One session of the log that sent a certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Session {
    pub id: String,
    pub connector: String,
    pub started: String,
    /// Where the on-premises server connected from, as it saw itself.
    pub local_endpoint: String,
    pub certificate: SentCertificate,
}

/// What the logs hold. Sessions are followed across files (a log rolled
/// over in the middle of one), and closed by [`Read::finish`].
#[derive(Default)]
pub struct Read {
    pub sessions: Vec<Session>,
    open: BTreeMap<String, Partial>,
    /// Sessions with no certificate rows (no STARTTLS, or no certificate).
    pub without_certificate: usize,
    /// The log versions seen (`14...` is Exchange 2010, `15...` 2013+).
    pub versions: Vec<String>,
    /// Lines that were not protocol log lines (too long, unparsable).
    pub skipped: usize,
    /// Files that could not be read to their end.
    pub unreadable: usize,
}

/// The columns the log names (`#Fields:`), or the usual ones.
struct Columns {
    session: usize,
    time: usize,
    connector: usize,
    local: usize,
    data: usize,
    context: usize,
}

impl Columns {
    fn usual() -> Columns {
        Columns::named("date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,event,data,context")
            .expect("the usual fields name every column")
    }

    fn named(fields: &str) -> Option<Columns> {
        let names: Vec<String> = fields
            .split(',')
            .map(|f| f.trim().to_ascii_lowercase())
            .collect();
        let at = |n: &str| names.iter().position(|f| f == n);
        Some(Columns {
            session: at("session-id")?,
            time: at("date-time")?,
            connector: at("connector-id")?,
            local: at("local-endpoint")?,
            data: at("data")?,
            context: at("context")?,
        })
    }
}

/// Whose certificate the rows that follow describe.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// No marker yet: rows are taken as ours (logs that write no marker).
    #[default]
    Unmarked,
    /// After `Sending certificate`: the on-premises server's.
    Sending,
    /// After `Received certificate` / `Remote certificate`: the relay's,
    /// never mixed into the server's.
    Received,
}

/// A session being read: its first line's facts and its certificate rows.
#[derive(Default)]
struct Partial {
    connector: String,
    started: String,
    local: String,
    sent: bool,
    rows: Rows,
    cert: SentCertificate,
}

/// The next line of `input` (without its end), or `None` at the end; a
/// line over [`MAX_LINE`] is read past, never held, and given as `Some(None)`.
fn next_line(input: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<Option<()>>> {
    use std::io::Read as _;
    buf.clear();
    let n = input
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') || buf.len() <= MAX_LINE {
        return Ok(Some(Some(())));
    }
    // Too long: skip to the end of the line, a buffer at a time.
    loop {
        let available = input.fill_buf()?;
        if available.is_empty() {
            break;
        }
        match available.iter().position(|b| *b == b'\n') {
            Some(i) => {
                input.consume(i + 1);
                break;
            }
            None => {
                let len = available.len();
                input.consume(len);
            }
        }
    }
    Ok(Some(None))
}

/// Reads one log into `into`.
pub fn read(mut input: impl BufRead, into: &mut Read) {
    let mut columns = Columns::usual();
    let mut buf = Vec::new();
    loop {
        let line = match next_line(&mut input, &mut buf) {
            Ok(Some(Some(()))) => String::from_utf8_lossy(&buf).into_owned(),
            Ok(Some(None)) => {
                into.skipped += 1;
                continue;
            }
            Ok(None) => break,
            Err(_) => {
                into.unreadable += 1;
                break;
            }
        };
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(header) = line.strip_prefix('#') {
            header_line(header, &mut columns, into);
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let Some(fields) = csv_fields(line) else {
            into.skipped += 1;
            continue;
        };
        let field = |i: usize| fields.get(i).map(String::as_str).unwrap_or("");
        let session = into
            .open
            .entry(field(columns.session).to_string())
            .or_insert_with(|| Partial {
                connector: field(columns.connector).to_string(),
                started: field(columns.time).to_string(),
                local: field(columns.local).to_string(),
                ..Partial::default()
            });
        certificate_row(session, field(columns.data), field(columns.context));
    }
}

impl Read {
    /// Closes every session: those that sent a certificate become
    /// [`Session`]s, the others are counted.
    pub fn finish(&mut self) {
        for (id, p) in std::mem::take(&mut self.open) {
            if p.sent || p.cert != SentCertificate::default() {
                self.sessions.push(Session {
                    id,
                    connector: p.connector,
                    started: p.started,
                    local_endpoint: p.local,
                    certificate: p.cert,
                });
            } else {
                self.without_certificate += 1;
            }
        }
    }
}

fn header_line(header: &str, columns: &mut Columns, into: &mut Read) {
    let Some((name, value)) = header.split_once(':') else {
        return;
    };
    match name.trim().to_ascii_lowercase().as_str() {
        "fields" => {
            if let Some(named) = Columns::named(value) {
                *columns = named;
            }
        }
        "version" => {
            let v: String = value.trim().chars().take(32).collect();
            if !into.versions.contains(&v) && into.versions.len() < MAX_VERSIONS {
                into.versions.push(v);
            }
        }
        _ => {}
    }
}

/// One line's fields (RFC 4180 quoting: commas inside quotes, `""`).
fn csv_fields(line: &str) -> Option<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(line.as_bytes());
    let record = reader.records().next()?.ok()?;
    Some(record.iter().map(str::to_string).collect())
}

/// Takes a certificate row's value into `session`, the label in `context`
/// or (some versions) in `data`.
fn certificate_row(session: &mut Partial, data: &str, context: &str) {
    let (label, value) = if is_label(context) {
        (context, data)
    } else if is_label(data) {
        (data, context)
    } else {
        return;
    };
    let value = value.trim().to_string();
    let label = label.trim().to_ascii_lowercase();
    match label.as_str() {
        "sending certificate" => {
            session.sent = true;
            session.rows = Rows::Sending;
            return;
        }
        "received certificate" | "remote certificate" => {
            session.rows = Rows::Received;
            return;
        }
        _ if session.rows == Rows::Received => return,
        _ => {}
    }
    let cert = &mut session.cert;
    match label.as_str() {
        "certificate subject" => cert.subject = value,
        "certificate issuer name" => cert.issuer = value,
        "certificate serial number" => cert.serial = value,
        "certificate thumbprint" => cert.thumbprint = value,
        "certificate alternate names" => {
            cert.alternate_names = value
                .split([';', ','])
                .map(|n| n.trim())
                .map(|n| n.strip_prefix("DNS Name=").unwrap_or(n).trim().to_string())
                .filter(|n| !n.is_empty())
                .take(MAX_NAMES)
                .collect()
        }
        _ => {}
    }
}

fn is_label(text: &str) -> bool {
    let t = text.trim().to_ascii_lowercase();
    t == "sending certificate"
        || t == "received certificate"
        || t == "remote certificate"
        || t.starts_with("certificate ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_end_is_never_held_and_the_next_ones_are_read() {
        let mut log = vec![b'x'; 3 * MAX_LINE];
        log.extend_from_slice(b"\n#Version: 15.0\n");
        log.extend_from_slice(&vec![b'y'; 2 * MAX_LINE]);
        let mut r = Read::default();
        read(
            std::io::BufReader::with_capacity(4096, log.as_slice()),
            &mut r,
        );
        assert_eq!(r.skipped, 2);
        assert_eq!(r.versions, ["15.0"]);
    }

    #[test]
    fn the_relays_certificate_is_not_taken_for_the_servers_and_names_keep_their_prefix() {
        let row =
            |n: u32, data: &str, context: &str| format!("t,C,S1,{n},l,r,*,{data},{context}\n");
        let log = [
            row(1, "", "Sending certificate"),
            row(2, "CN=mail.contoso.com", "Certificate subject"),
            row(3, "AAAA", "Certificate thumbprint"),
            row(
                4,
                "DNS Name=mail.contoso.com;DNS Name=contoso.com",
                "Certificate alternate names",
            ),
            row(5, "", "Received certificate"),
            row(6, "CN=relay.example.test", "Certificate subject"),
            row(7, "BBBB", "Certificate thumbprint"),
        ]
        .concat();
        let mut r = Read::default();
        read(log.as_bytes(), &mut r);
        r.finish();
        let c = &r.sessions[0].certificate;
        assert_eq!(
            (c.subject.as_str(), c.thumbprint.as_str()),
            ("CN=mail.contoso.com", "AAAA")
        );
        assert_eq!(c.alternate_names, ["mail.contoso.com", "contoso.com"]);
    }

    #[test]
    fn a_distinguished_name_with_quoted_commas() {
        let c = SentCertificate {
            subject: "CN=*.contoso.com, OU=IT, O=\"Contoso, Ltd\"".into(),
            ..SentCertificate::default()
        };
        assert_eq!(c.common_names(), ["*.contoso.com"]);
        assert_eq!(rdns("CN=\"a, b\", O=c")[0], ("CN".into(), "a, b".into()));
    }

    #[test]
    fn rows_by_session_in_either_place() {
        let log = "#Software: Microsoft Exchange Server\r\n#Version: 14.03.0123.000\r\n#Log-type: Send Protocol Log\r\n#Fields: date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,event,data,context\r\n\
2016-10-04T00:00:01.000Z,Outbound to Office 365,S1,0,10.0.0.5:1234,192.0.2.1:25,+,,\r\n\
2016-10-04T00:00:01.100Z,Outbound to Office 365,S1,5,10.0.0.5:1234,192.0.2.1:25,*,,Sending certificate\r\n\
2016-10-04T00:00:01.100Z,Outbound to Office 365,S1,6,10.0.0.5:1234,192.0.2.1:25,*,CN=mail.contoso.com,Certificate subject\r\n\
2016-10-04T00:00:01.100Z,Outbound to Office 365,S1,7,10.0.0.5:1234,192.0.2.1:25,*,\"CN=Contoso CA, O=Contoso, C=US\",Certificate issuer name\r\n\
2016-10-04T00:00:01.100Z,Outbound to Office 365,S1,8,10.0.0.5:1234,192.0.2.1:25,*,Certificate thumbprint,ABCDEF\r\n\
2016-10-04T00:00:02.000Z,Outbound to Office 365,S2,0,10.0.0.5:1235,192.0.2.1:25,+,,\r\n";
        let mut read_ = Read::default();
        read(log.as_bytes(), &mut read_);
        read_.finish();
        assert_eq!(read_.versions, ["14.03.0123.000"]);
        assert_eq!(read_.sessions.len(), 1);
        assert_eq!(read_.without_certificate, 1);
        let c = &read_.sessions[0].certificate;
        assert_eq!(c.issuer, "CN=Contoso CA, O=Contoso, C=US");
        assert_eq!(c.thumbprint, "ABCDEF");
        assert_eq!(c.common_names(), ["mail.contoso.com"]);
    }
}
