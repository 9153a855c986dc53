//! The gateway's judgement: configured once ([`Gateway`]), then one
//! [`Session`] per SMTP session, answering `MAIL FROM` and `RCPT TO` as the
//! relay answers them.
//!
//! The order is the relay's ([`attrelay_engine::evaluation`]): a recipient
//! its tenant's list does not hold is refused before the policy; the base
//! policy's verdict is checked ([`attrelay_engine::verdict::check_with`]);
//! an accepted recipient with sender routing from an unvouched client is
//! refused. Tenant policies are the relay's alone (the directory refuses
//! tenants that have one).
//!
//! A [`Session`] is generic over where the policy and the directory are:
//! linked in ([`NativeSession`], the `attrelay-gateway` component and
//! native callers), or imported from the other parts of a composed gateway
//! (the `gateway-socket` component).

use std::sync::Arc;

use attrelay_engine::address::Mailbox;
use attrelay_engine::certificate::{TrustAnchors, inspect_chain, unix_time};
use attrelay_engine::directory::{Directory, RecipientCheck, recipient_not_found_verdict};
use attrelay_engine::verdict::{check_with, policy_failure, refuse_unvouched_routing};
use attrelay_policy::model::{Action, HeaderField, SessionFacts, TlsFacts, UnixSeconds, Verdict};
use attrelay_policy::replies::{self, ATTRIBUTION_HEADER, WARNING_HEADER, grace_warning};
use attrelay_policy::{Session as PolicySession, Settings};
use rustls_pki_types::CertificateDer;

use crate::tenants::{self, Format};

/// What a host configures once.
#[derive(Debug, Clone)]
pub struct Configuration {
    pub directory: String,
    pub directory_format: Format,
    /// PEM text.
    pub client_trust_anchors: String,
    pub settings: Vec<(String, String)>,
}

/// The raw facts of an SMTP session, as a host has them.
#[derive(Debug, Clone)]
pub struct RawFacts {
    pub client_ip: std::net::IpAddr,
    pub helo: String,
    pub server_hostname: String,
    pub time: UnixSeconds,
    pub tls: Option<RawTls>,
}

/// The TLS state, with the client's chain as it was received.
#[derive(Debug, Clone)]
pub struct RawTls {
    pub protocol: String,
    pub cipher: String,
    /// Leaf first, DER.
    pub client_chain: Vec<Vec<u8>>,
}

/// The trust anchors of `pem` (none for empty text); the error says why.
pub fn anchors(pem: &str) -> Result<TrustAnchors, String> {
    if pem.trim().is_empty() {
        return Ok(TrustAnchors::default());
    }
    TrustAnchors::from_pem(pem.as_bytes(), std::path::Path::new("client-trust-anchors"))
        .map_err(|e| e.to_string())
}

/// The facts the policy receives for `raw`: the chain verified against
/// `anchors` at the session time and reduced to the certificate's facts.
pub fn facts(anchors: &TrustAnchors, raw: RawFacts) -> SessionFacts {
    let tls = raw.tls.map(|t| {
        let chain: Vec<CertificateDer<'_>> = t
            .client_chain
            .iter()
            .map(|der| CertificateDer::from(der.as_slice()))
            .collect();
        let client_certificate = if chain.is_empty() {
            None
        } else {
            // An unparsable leaf identifies nobody: no certificate.
            inspect_chain(&chain, anchors, unix_time(raw.time)).ok()
        };
        TlsFacts {
            protocol: t.protocol,
            cipher: t.cipher,
            client_certificate,
        }
    });
    SessionFacts {
        client_ip: attrelay_engine::directory::canonical_ip(raw.client_ip),
        helo: raw.helo,
        server_hostname: raw.server_hostname,
        time: raw.time,
        tls,
    }
}

/// What the judgement asks of the directory beyond the policy's lookups.
pub trait Tenants {
    /// Whether a verdict may name tenant `id`.
    fn has_tenant(&self, id: &str) -> bool;
    /// The tenant whose recipient list refuses canonical `address`, if any.
    fn unknown_recipient(&self, address: &str) -> Option<String>;
}

impl Tenants for Arc<Directory> {
    fn has_tenant(&self, id: &str) -> bool {
        Directory::has_tenant(self, id)
    }
    fn unknown_recipient(&self, address: &str) -> Option<String> {
        match self.recipient_check(address) {
            RecipientCheck::Unknown { tenant } => Some(tenant),
            _ => None,
        }
    }
}

/// The base policy's session: its two calls.
pub trait PolicyCalls {
    fn mail_from(&mut self, sender: &str) -> Verdict;
    fn rcpt_to(&mut self, recipient: &str) -> Verdict;
}

impl<D: attrelay_policy::model::Directory> PolicyCalls for PolicySession<D> {
    fn mail_from(&mut self, sender: &str) -> Verdict {
        PolicySession::mail_from(self, sender)
    }
    fn rcpt_to(&mut self, recipient: &str) -> Verdict {
        PolicySession::rcpt_to(self, recipient)
    }
}

/// A configured gateway with the default policy linked in: immutable,
/// shared by its sessions.
#[derive(Debug)]
pub struct Gateway {
    directory: Arc<Directory>,
    anchors: TrustAnchors,
    settings: Settings,
}

/// A session of a [`Gateway`].
pub type NativeSession = Session<PolicySession<Arc<Directory>>, Arc<Directory>>;

impl Gateway {
    /// Checks `config`; the error names the key.
    pub fn configure(config: &Configuration) -> Result<Gateway, String> {
        let directory = tenants::load(&config.directory, config.directory_format)?;
        let anchors = anchors(&config.client_trust_anchors)?;
        let settings = Settings::from_pairs(
            config
                .settings
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .map_err(|e| format!("settings: {e}"))?;
        Ok(Gateway {
            directory: Arc::new(directory),
            anchors,
            settings,
        })
    }

    /// Opens a session.
    pub fn session(&self, raw: RawFacts) -> NativeSession {
        let facts = facts(&self.anchors, raw);
        let policy = PolicySession::open(self.directory.clone(), self.settings.clone(), facts);
        Session::new(policy, self.directory.clone())
    }
}

/// A session, or why there could be none (the gateway is not configured,
/// or was refused its configuration): every call then fails closed. The
/// one rule both component glues follow.
pub struct Judging<S>(pub Result<S, String>);

impl<P: PolicyCalls, T: Tenants> Judging<Session<P, T>> {
    pub fn mail_from(&mut self, sender: &str) -> Verdict {
        match &mut self.0 {
            Ok(s) => s.mail_from(sender),
            Err(why) => policy_failure(why.as_str()),
        }
    }

    pub fn rcpt_to(&mut self, recipient: &str) -> Verdict {
        match &mut self.0 {
            Ok(s) => s.rcpt_to(recipient),
            Err(why) => policy_failure(why.as_str()),
        }
    }
}

/// The gateway interface's session facts as [`RawFacts`]: each component's
/// bindings generate their own copy of the same WIT record, so this is a
/// macro for the glue to expand with its `SessionFacts` in scope (and
/// `ip_from_wit` from `attrelay_policy::wit_conversions!`).
#[cfg(all(target_arch = "wasm32", not(feature = "directory-provider")))]
macro_rules! raw_from_wit {
    () => {
        fn raw_from_wit(f: SessionFacts) -> $crate::judge::RawFacts {
            $crate::judge::RawFacts {
                client_ip: ip_from_wit(f.client_ip),
                helo: f.helo,
                server_hostname: f.server_hostname,
                time: f.time.seconds,
                tls: f.tls.map(|t| $crate::judge::RawTls {
                    protocol: t.protocol,
                    cipher: t.cipher,
                    client_chain: t.client_chain,
                }),
            }
        }
    };
}
#[cfg(all(target_arch = "wasm32", not(feature = "directory-provider")))]
pub(crate) use raw_from_wit;

/// One SMTP session's judgement.
pub struct Session<P, T> {
    tenants: T,
    policy: P,
    /// The accepted transaction's sender.
    sender: Option<String>,
}

impl<P: PolicyCalls, T: Tenants> Session<P, T> {
    pub fn new(policy: P, tenants: T) -> Self {
        Session {
            tenants,
            policy,
            sender: None,
        }
    }

    /// `MAIL FROM:<sender>` (`""` for `<>`).
    pub fn mail_from(&mut self, sender: &str) -> Verdict {
        self.sender = None;
        let sender = if sender.is_empty() {
            String::new()
        } else {
            match canonical(sender) {
                Ok(c) => c,
                Err(e) => return bad_address(Stage::Sender, &e),
            }
        };
        let v = self.checked(|p| p.mail_from(&sender));
        if v.action == Action::Accept {
            self.sender = Some(sender);
        }
        v
    }

    /// `RCPT TO:<recipient>`; the verdict's headers are every field the
    /// host writes for it (see the WIT's `rcpt-to`).
    pub fn rcpt_to(&mut self, recipient: &str) -> Verdict {
        if self.sender.is_none() {
            return replies::verdict(
                Action::Reject,
                503,
                "5.5.1",
                "MAIL FROM first",
                None,
                "bad-sequence",
            );
        }
        // RFC 5321 4.5.1: every server accepts the bare `<postmaster>`; the
        // host delivers it to its own postmaster, as the relay does.
        if recipient.eq_ignore_ascii_case("postmaster") {
            return replies::recipient_ok(None, "postmaster");
        }
        let recipient = match canonical(recipient) {
            Ok(c) => c,
            Err(e) => return bad_address(Stage::Recipient, &e),
        };
        if let Some(tenant) = self.tenants.unknown_recipient(&recipient) {
            return recipient_not_found_verdict(&recipient, &tenant);
        }
        let v = self.checked(|p| p.rcpt_to(&recipient));
        with_relay_headers(refuse_unvouched_routing(&recipient, v))
    }

    /// The policy's verdict, checked as every host checks it.
    fn checked(&mut self, ask: impl FnOnce(&mut P) -> Verdict) -> Verdict {
        let v = ask(&mut self.policy);
        let tenants = &self.tenants;
        check_with(v, |t| tenants.has_tenant(t)).unwrap_or_else(policy_failure)
    }
}

#[derive(Clone, Copy)]
enum Stage {
    Sender,
    Recipient,
}

/// The canonical form of mailbox `text`, judged in its place, when `text`
/// differs from it at most in letter case (which the canonical form keeps
/// in the local part, so only the domain's case can differ: the same
/// mailbox). Any other difference (quotes, escapes) means the host would
/// write onward something else than what was judged: refused.
fn canonical(text: &str) -> Result<String, String> {
    match Mailbox::parse(text, false) {
        Ok(m) if m.to_string().eq_ignore_ascii_case(text) => Ok(m.to_string()),
        Ok(m) => Err(format!("not in canonical form (written canonically: {m})")),
        Err(e) => Err(e.to_string()),
    }
}

/// `553`: the address is not one the host can write onward as judged.
fn bad_address(stage: Stage, why: &str) -> Verdict {
    let (enhanced, text, reason) = match stage {
        Stage::Sender => ("5.1.7", "Bad sender address syntax", "bad-sender"),
        Stage::Recipient => ("5.1.3", "Bad recipient address syntax", "bad-recipient"),
    };
    Verdict {
        explanation: vec![attrelay_engine::verdict::one_line(why)],
        ..replies::verdict(Action::Reject, 553, enhanced, text, None, reason)
    }
}

/// The relay's own fields first, then the policy's: what a host writes for
/// an accepted recipient.
fn with_relay_headers(mut v: Verdict) -> Verdict {
    if v.action != Action::Accept {
        return v;
    }
    let mut headers = Vec::new();
    if let Some(t) = &v.tenant {
        headers.push(HeaderField {
            name: ATTRIBUTION_HEADER.into(),
            value: t.clone(),
        });
    }
    if let Some(w) = grace_warning(&v) {
        headers.push(HeaderField {
            name: WARNING_HEADER.into(),
            value: w.to_string(),
        });
    }
    headers.append(&mut v.headers);
    v.headers = headers;
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway() -> Gateway {
        Gateway::configure(&Configuration {
            directory: "[[tenant]]\nid = \"contoso\"\naccepted_domains = [\"contoso.com\"]\n"
                .into(),
            directory_format: Format::Toml,
            client_trust_anchors: String::new(),
            settings: Vec::new(),
        })
        .unwrap()
    }

    fn session() -> NativeSession {
        gateway().session(RawFacts {
            client_ip: "192.0.2.77".parse().unwrap(),
            helo: "mail.example.test".into(),
            server_hostname: "relay.example.test".into(),
            time: 1_501_545_600,
            tls: None,
        })
    }

    #[test]
    fn only_what_the_host_writes_onward_is_judged() {
        let mut s = session();
        assert_eq!(s.mail_from("someone@internet.example").code, 250);
        // Quoting the relay would drop, an escape, a second address: refused.
        for bad in [
            "\"kate\"@contoso.com",
            "ka\\te@contoso.com",
            "a@b@contoso.com",
            "kate@contoso.com>",
        ] {
            let v = s.rcpt_to(bad);
            assert_eq!(
                (v.code, v.enhanced.as_str()),
                (553, "5.1.3"),
                "{bad}: {v:?}"
            );
        }
        // The domain's case is the same mailbox.
        let v = s.rcpt_to("kate@CONTOSO.com");
        assert_eq!(
            (v.code, v.tenant.as_deref()),
            (250, Some("contoso")),
            "{v:?}"
        );
        assert_eq!(v.headers[0].name, ATTRIBUTION_HEADER);
        // The bare postmaster, as RFC 5321 requires.
        let v = s.rcpt_to("PostMaster");
        assert_eq!((v.code, v.tenant.as_deref()), (250, None), "{v:?}");
    }
}
