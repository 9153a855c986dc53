//! From a Postfix policy request to the policy's facts, and from the
//! policy's verdict to a Postfix `action=`.
//!
//! Postfix tells us less than our own SMTP server knows, and the mapping says
//! so instead of guessing:
//!
//! - The client certificate arrives as `ccert_subject` (the subject's Common
//!   Name, xtext-encoded), `ccert_issuer` and `ccert_fingerprint`. Postfix
//!   sends the subject only when the chain verified against its own trust
//!   anchors (`smtpd_tls_CAfile` / `smtpd_tls_CApath`), and the fingerprint
//!   whenever a certificate was presented; so a subject means a verified
//!   certificate, a fingerprint alone an unverified one (which never
//!   authenticates). Subject Alternative Names are not sent at all: through
//!   Postfix, a connector's certificate name is matched against the CN only.
//! - The client IP is `client_address`, as Postfix saw it (after XCLIENT or
//!   the proxy protocol, if the operator enabled them).

use std::net::IpAddr;

use attrelay_policy::model::{Action, ClientCertificate, SessionFacts, TlsFacts, Verdict};

use super::request::{PolicyRequest, RequestError, xtext_decode};
use crate::certificate as cert;

/// The only request type Postfix's SMTP server sends.
pub const SMTPD_ACCESS_POLICY: &str = "smtpd_access_policy";

/// What to answer when the policy accepts a recipient (`[policyd]
/// accept_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptAction {
    /// `OK`: the recipient is permitted, relaying included — for
    /// `smtpd_relay_restrictions = check_policy_service ..., reject`, where
    /// the policy is what authorises relaying (the default).
    Ok,
    /// `DUNNO`: the policy has no objection and the following restrictions
    /// decide — for a policy used only to refuse.
    Dunno,
}

impl AcceptAction {
    pub fn parse(text: &str) -> Option<AcceptAction> {
        match text.to_ascii_lowercase().as_str() {
            "ok" => Some(AcceptAction::Ok),
            "dunno" => Some(AcceptAction::Dunno),
            _ => None,
        }
    }
}

/// What a request asks of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// A protocol state where attribution has nothing to say (CONNECT, HELO,
    /// DATA, END-OF-MESSAGE, VRFY, ETRN): answered `DUNNO`.
    Pass { state: String },
    /// MAIL FROM (no recipient) or RCPT TO (with one).
    Decide {
        facts: Box<SessionFacts>,
        sender: String,
        recipient: Option<String>,
    },
}

/// Reads a request. `server_hostname` and `now` complete the facts Postfix
/// does not send.
pub fn query(req: &PolicyRequest, server_hostname: &str, now: i64) -> Result<Query, RequestError> {
    match req.get("request") {
        None => return Err(RequestError::MissingRequestType),
        Some(SMTPD_ACCESS_POLICY) => {}
        Some(other) => return Err(RequestError::UnsupportedRequestType(bounded(other))),
    }
    let state = req.value("protocol_state").to_ascii_uppercase();
    let recipient = match state.as_str() {
        "MAIL" => None,
        "RCPT" => match req.value("recipient") {
            "" => {
                return Err(RequestError::Missing {
                    name: "recipient",
                    state,
                });
            }
            r => Some(r.to_string()),
        },
        _ => return Ok(Query::Pass { state }),
    };
    let client_ip = match req.value("client_address") {
        "" => {
            return Err(RequestError::Missing {
                name: "client_address",
                state,
            });
        }
        // One spelling: an IPv4 client is IPv4 however Postfix wrote it.
        a => a
            .parse::<IpAddr>()
            .map(crate::directory::canonical_ip)
            .map_err(|_| RequestError::Invalid {
                name: "client_address",
                value: bounded(a),
            })?,
    };
    Ok(Query::Decide {
        facts: Box::new(SessionFacts {
            client_ip,
            helo: req.value("helo_name").to_string(),
            server_hostname: server_hostname.to_string(),
            time: now,
            tls: tls_facts(req),
        }),
        sender: req.value("sender").to_string(),
        recipient,
    })
}

/// The TLS facts, when Postfix reports an encrypted session.
fn tls_facts(req: &PolicyRequest) -> Option<TlsFacts> {
    let protocol = req.value("encryption_protocol");
    if protocol.is_empty() {
        return None;
    }
    // What Postfix reports is certificate content: escaped and bounded
    // like the facts the SMTP server takes from a certificate itself.
    let cn = xtext_decode(req.value("ccert_subject"));
    let subject = cert::bounded(cert::escape_name(cn.as_bytes()), cert::MAX_NAME_LEN);
    let fingerprint: String = req
        .value("ccert_fingerprint")
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(128)
        .collect();
    let client_certificate = (!subject.is_empty() || !fingerprint.is_empty()).then(|| {
        let verified = !subject.is_empty();
        ClientCertificate {
            verified,
            verification_error: (!verified).then(|| {
                "Postfix did not verify the certificate against its trust anchors (smtpd_tls_CAfile)"
                    .to_string()
            }),
            subject: if verified {
                format!(
                    "CN={}",
                    cert::bounded(cert::escape_dn_value(cn.as_bytes()), cert::MAX_DN_LEN)
                )
            } else {
                String::new()
            },
            common_names: if verified { vec![subject] } else { Vec::new() },
            dns_names: Vec::new(),
            issuer: cert::bounded(
                cert::escape_dn_value(xtext_decode(req.value("ccert_issuer")).as_bytes()),
                cert::MAX_DN_LEN,
            ),
            serial: String::new(),
            sha256_fingerprint: fingerprint.to_ascii_uppercase(),
            not_before: 0,
            not_after: 0,
        }
    });
    Some(TlsFacts {
        protocol: protocol.to_string(),
        cipher: req.value("encryption_cipher").to_string(),
        client_certificate,
    })
}

/// The `action=` value for a verdict. A refusal carries the policy's own
/// code, enhanced code and text, so that the client of Postfix sees exactly
/// what our own SMTP server would have said.
pub fn action(v: &Verdict, rcpt_stage: bool, accept: AcceptAction) -> String {
    match v.action {
        // At MAIL FROM an acceptance only means "no objection": the
        // recipient stage decides, and an OK there would end the list.
        Action::Accept if !rcpt_stage => "DUNNO".to_string(),
        Action::Accept => match accept {
            AcceptAction::Ok => "OK".to_string(),
            AcceptAction::Dunno => "DUNNO".to_string(),
        },
        _ => one_line(&v.reply_line()),
    }
}

/// A reply is one line: the host checks verdict texts, and this keeps that
/// true even for a future change there.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Values echoed into errors and logs are cut short.
fn bounded(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policyd::request::{RequestDecoder, RequestLimits};
    use tokio_util::bytes::BytesMut;
    use tokio_util::codec::Decoder;

    fn request(text: &str) -> PolicyRequest {
        let mut d = RequestDecoder::new(RequestLimits::default());
        d.decode(&mut BytesMut::from(text.as_bytes()))
            .unwrap()
            .expect("a complete request")
    }

    /// A request as Postfix 3.7 sent it in the interop test.
    const POSTFIX_RCPT: &str = "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nclient_address=203.0.113.7\nclient_name=unknown\nclient_port=43984\nhelo_name=mail.contoso.com\nsender=\nrecipient=x@example.org\nrecipient_count=0\nqueue_id=\ninstance=4d72.6b0305fc.7a87e.0\nsize=0\nccert_subject=mail.contoso.com\nccert_issuer=Test+20CA\nccert_fingerprint=75:84:ab:71\nencryption_protocol=TLSv1.3\nencryption_cipher=TLS_AES_256_GCM_SHA384\nencryption_keysize=256\n\n";

    #[test]
    fn a_postfix_rcpt_request_becomes_facts() {
        let q = query(&request(POSTFIX_RCPT), "relay.test", 1000).unwrap();
        let Query::Decide {
            facts,
            sender,
            recipient,
        } = q
        else {
            panic!("RCPT is decided: {q:?}")
        };
        assert_eq!(sender, "", "the null sender stays empty");
        assert_eq!(recipient.as_deref(), Some("x@example.org"));
        assert_eq!(facts.client_ip, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(facts.helo, "mail.contoso.com");
        assert_eq!(facts.time, 1000);
        let tls = facts.tls.clone().unwrap();
        assert_eq!(tls.protocol, "TLSv1.3");
        let c = tls.client_certificate.unwrap();
        assert!(c.verified);
        assert_eq!(c.names(), vec!["mail.contoso.com"]);
        assert_eq!(c.issuer, "Test CA");
        assert_eq!(c.sha256_fingerprint, "7584AB71");
    }

    #[test]
    fn an_ipv4_mapped_client_address_is_the_ipv4_client() {
        let mapped = POSTFIX_RCPT.replace("=203.0.113.7", "=::ffff:203.0.113.7");
        let Query::Decide { facts, .. } = query(&request(&mapped), "relay.test", 1000).unwrap()
        else {
            panic!("RCPT is decided")
        };
        assert_eq!(facts.client_ip, "203.0.113.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_fingerprint_without_a_subject_is_an_unverified_certificate() {
        let text = POSTFIX_RCPT
            .replace("ccert_subject=mail.contoso.com", "ccert_subject=")
            .replace("ccert_issuer=Test+20CA", "ccert_issuer=");
        let Query::Decide { facts, .. } = query(&request(&text), "r", 0).unwrap() else {
            panic!()
        };
        let c = facts.certificate().unwrap();
        assert!(!c.verified);
        assert!(c.names().is_empty());
        assert!(c.verification_error.is_some());
        let plain = POSTFIX_RCPT.replace("encryption_protocol=TLSv1.3", "encryption_protocol=");
        let Query::Decide { facts, .. } = query(&request(&plain), "r", 0).unwrap() else {
            panic!()
        };
        assert!(facts.tls.is_none());
    }

    #[test]
    fn other_states_pass_and_bad_requests_are_errors() {
        let connect = POSTFIX_RCPT.replace("protocol_state=RCPT", "protocol_state=CONNECT");
        assert_eq!(
            query(&request(&connect), "r", 0).unwrap(),
            Query::Pass {
                state: "CONNECT".into()
            }
        );
        let mail = POSTFIX_RCPT.replace("protocol_state=RCPT", "protocol_state=MAIL");
        assert!(matches!(
            query(&request(&mail), "r", 0).unwrap(),
            Query::Decide {
                recipient: None,
                ..
            }
        ));
        let cases = [
            ("request=smtpd_access_policy\n", "request=other\n"),
            ("recipient=x@example.org\n", ""),
            ("client_address=203.0.113.7\n", "client_address=unknown\n"),
            ("client_address=203.0.113.7\n", ""),
            ("request=smtpd_access_policy\n", ""),
        ];
        for (from, to) in cases {
            let text = POSTFIX_RCPT.replace(from, to);
            assert!(
                query(&request(&text), "r", 0).is_err(),
                "{from:?} -> {to:?} must be refused"
            );
        }
    }

    #[test]
    fn verdicts_become_actions() {
        let ok = attrelay_policy::replies::recipient_ok(Some("contoso".into()), "ip-connector");
        assert_eq!(action(&ok, true, AcceptAction::Ok), "OK");
        assert_eq!(action(&ok, true, AcceptAction::Dunno), "DUNNO");
        assert_eq!(action(&ok, false, AcceptAction::Ok), "DUNNO");
        let no = crate::policy::policy_failure("trap");
        assert_eq!(action(&no, true, AcceptAction::Ok), no.reply_line());
        assert!(action(&no, true, AcceptAction::Ok).starts_with("451 4.3.5 "));
    }
}
