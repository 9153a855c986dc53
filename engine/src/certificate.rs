//! The client certificate as a policy sees it: names and identifiers parsed
//! with x509-parser, and the chain verified with webpki against the operator's
//! trust anchors at the session time.
//!
//! Verification happens here, not in the policy, because only the host holds
//! the trust anchors; the policy gets `verified` plus, when it failed, a reason
//! an admin can act on ("expired", "issuer not trusted").
//!
//! Everything taken from a certificate is attacker-controlled text (anyone can
//! make a self-signed certificate whose subject holds CR LF and a header
//! line), and it travels on into headers, log lines, the decision log and the
//! policy. So the subject, the issuer and every name leave this module as
//! printable ASCII only — RFC 4514 escapes, with every control or non-ASCII
//! byte written as `\XX` — and bounded in length and number.
//!
//! Which names count follows RFC 6125: the CN is a name only when the
//! certificate has no DNS subject alternative name, and never when a CA of the
//! verified chain carries name constraints (webpki, like RFC 5280, applies
//! DNS name constraints to SANs only, so a constrained CA could otherwise
//! mint a CN-only certificate for any name).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use attrelay_policy::model::ClientCertificate;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use sha2::{Digest, Sha256};
use x509_parser::asn1_rs::{Any, Class, Tag, ToDer};
use x509_parser::oid_registry::OID_X509_EXT_NAME_CONSTRAINTS;
use x509_parser::prelude::*;

use crate::pem::{PemError, parse_certificates, read_certificates};

/// The longest subject or issuer handed on, in bytes after escaping. Real
/// names are far shorter; the bound keeps a hostile one from filling log lines
/// and headers.
pub const MAX_DN_LEN: usize = 1024;
/// The longest CN or DNS name handed on, in bytes after escaping (a valid DNS
/// name has at most 253).
pub const MAX_NAME_LEN: usize = 255;
/// How many DNS names of the subjectAltName are handed on; later ones are not
/// considered for attribution. Public CAs issue at most a few hundred.
pub const MAX_DNS_NAMES: usize = 256;
/// How many CN attributes of the subject are handed on.
pub const MAX_COMMON_NAMES: usize = 16;
/// Hex digits of the serial number kept: RFC 5280 allows 20 octets (40
/// digits); a hostile certificate's 60 KB serial would otherwise be copied
/// into every decision-log record.
pub const MAX_SERIAL_HEX: usize = 64;
/// Ends a value cut at its bound. The backslash makes sure a cut name is never
/// a valid DNS name (`certname::validate` refuses it), whatever the cut leaves.
const CUT: &str = "\\...";

/// Trust anchors for client certificates (`server.client_ca`).
#[derive(Debug, Default, Clone)]
pub struct TrustAnchors {
    anchors: Vec<TrustAnchor<'static>>,
    /// Where they came from, for messages.
    pub sources: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{}: certificate #{index} is not a usable trust anchor: {detail}", path.display())]
    Anchor {
        path: PathBuf,
        index: usize,
        detail: String,
    },
    #[error("the client certificate cannot be parsed: {0}")]
    Parse(String),
}

impl TrustAnchors {
    /// Loads every certificate of every file as a trust anchor.
    pub fn load(paths: &[PathBuf]) -> Result<TrustAnchors, CertError> {
        let mut t = TrustAnchors::default();
        for p in paths {
            t.add_file(p)?;
        }
        Ok(t)
    }

    /// Every certificate of PEM text `pem` as a trust anchor; `origin`
    /// names it in errors. For hosts that hand over the anchors as text (the
    /// gateway component reads no files).
    pub fn from_pem(pem: &[u8], origin: &Path) -> Result<TrustAnchors, CertError> {
        let mut t = TrustAnchors::default();
        t.add(parse_certificates(pem, origin)?, origin)?;
        Ok(t)
    }

    fn add_file(&mut self, path: &Path) -> Result<(), CertError> {
        self.add(read_certificates(path)?, path)
    }

    fn add(&mut self, certs: Vec<CertificateDer<'static>>, path: &Path) -> Result<(), CertError> {
        for (i, der) in certs.iter().enumerate() {
            let anchor = webpki::anchor_from_trusted_cert(der).map_err(|e| CertError::Anchor {
                path: path.to_path_buf(),
                index: i + 1,
                detail: format!("{e:?}"),
            })?;
            self.anchors.push(anchor.to_owned());
        }
        self.sources.push(path.to_path_buf());
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Whether `other` trusts exactly the same anchors (wherever they were
    /// read from): a chain verified under one is verified under the other.
    pub fn same_anchors(&self, other: &TrustAnchors) -> bool {
        self.anchors == other.anchors
    }

    /// The anchors, for building a rustls client-certificate verifier.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// Verifies `chain` (leaf first, then intermediates) for TLS client
    /// authentication at `at`. `Err` carries an admin-readable reason.
    pub fn verify(&self, chain: &[CertificateDer<'_>], at: UnixTime) -> Result<(), String> {
        self.verify_chain(chain, at).map(|_| ())
    }

    /// Like [`TrustAnchors::verify`], and says whether the path webpki built
    /// is name-constrained.
    fn verify_chain(
        &self,
        chain: &[CertificateDer<'_>],
        at: UnixTime,
    ) -> Result<VerifiedChain, String> {
        // Bounded and reduced before any path building (see `crate::chain`).
        let subjects: Vec<&[u8]> = self.anchors.iter().map(|a| a.subject.as_ref()).collect();
        let chain = crate::chain::for_path_building(chain, &subjects)?;
        let (leaf, intermediates) = chain.split_first().ok_or("no certificate was presented")?;
        if self.anchors.is_empty() {
            return Err("no trust anchors are configured (server.client_ca), so no certificate can be verified".into());
        }
        let ee = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| format!("malformed certificate: {e:?}"))?;
        let path = ee
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.anchors,
                intermediates,
                at,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| describe_webpki_error(&e, leaf))?;
        Ok(VerifiedChain {
            name_constrained: path_is_name_constrained(&path),
        })
    }
}

/// What verification established beyond "verified".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VerifiedChain {
    /// The trust anchor or an intermediate of the path has name constraints.
    name_constrained: bool,
}

/// Whether the trust anchor or any intermediate of the verified path carries
/// name constraints. Only the path webpki actually built counts: unrelated
/// certificates the client sent along do not.
fn path_is_name_constrained(path: &webpki::VerifiedPath<'_>) -> bool {
    path.anchor().name_constraints.is_some()
        || path
            .intermediate_certificates()
            .any(|c| has_name_constraints(c.der().as_ref()))
}

/// Whether a DER certificate has a nameConstraints extension. One that
/// x509-parser cannot read (webpki accepted it) counts as constrained: the
/// safe answer, since it only takes the CN out of consideration.
fn has_name_constraints(der: &[u8]) -> bool {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => cert
            .iter_extensions()
            .any(|e| e.oid == OID_X509_EXT_NAME_CONSTRAINTS),
        Err(_) => true,
    }
}

fn instant(t: UnixTime) -> String {
    attrelay_policy::settings::format_instant(t.as_secs() as i64)
}

fn describe_webpki_error(e: &webpki::Error, leaf: &CertificateDer<'_>) -> String {
    use webpki::Error as E;
    match e {
        E::CertExpired { not_after, .. } => {
            format!("certificate expired at {}", instant(*not_after))
        }
        E::CertNotValidYet { not_before, .. } => {
            format!("certificate not valid before {}", instant(*not_before))
        }
        E::UnknownIssuer => {
            let self_signed = X509Certificate::from_der(leaf)
                .map(|(_, c)| c.subject() == c.issuer())
                .unwrap_or(false);
            if self_signed {
                "self-signed certificate: its issuer is not a trusted CA".into()
            } else {
                "issuer not trusted: no chain to a configured CA (was the intermediate certificate sent?)".into()
            }
        }
        E::RequiredEkuNotFoundContext(_) => {
            "certificate is not valid for TLS client authentication (extended key usage)".into()
        }
        E::CertRevoked => "certificate revoked".into(),
        other => format!("chain does not verify: {other:?}"),
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Why the facts leave out the CNs of a certificate whose subject has some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CnIgnored {
    /// RFC 6125 6.4.4: a certificate with a DNS SAN is identified by its SANs only.
    DnsSans,
    /// The subjectAltName extension cannot be read, so whether it holds DNS
    /// names is unknown: the CN is not trusted either.
    UnreadableSans,
    /// A CA of the verified chain has name constraints, which webpki applies
    /// to SANs only: a CN would escape them.
    NameConstraints,
}

impl std::fmt::Display for CnIgnored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CnIgnored::DnsSans => {
                "the certificate has DNS subject alternative names, so its CN is not a name (RFC 6125)"
            }
            CnIgnored::UnreadableSans => {
                "the subjectAltName extension cannot be read, so the CN is not trusted as a name"
            }
            CnIgnored::NameConstraints => {
                "a CA of the verified chain has name constraints, which apply to subject alternative names only, so the CN is not a name"
            }
        })
    }
}

/// Everything [`inspect_chain_detailed`] found: the facts a policy receives,
/// and what they leave out, for diagnostics (`attrelay cert inspect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainInspection {
    /// The facts, exactly as [`inspect_chain`] returns them.
    pub certificate: ClientCertificate,
    /// Every CN of the subject (escaped and bounded like the facts' names),
    /// whether or not attribution counts it.
    pub subject_common_names: Vec<String>,
    /// Why `certificate.common_names` is empty although the subject has CNs.
    pub cn_ignored: Option<CnIgnored>,
    /// DNS names beyond [`MAX_DNS_NAMES`], not handed on.
    pub dns_names_dropped: usize,
}

/// Parses the leaf of `chain` and verifies the chain at `at`: the facts a
/// policy receives. An unverifiable chain is not an error: it yields
/// `verified: false` with the reason. Only an unparsable leaf is an error.
///
/// Subject, issuer and names are printable ASCII and bounded (see
/// [`MAX_DN_LEN`], [`MAX_NAME_LEN`], [`MAX_DNS_NAMES`], [`MAX_COMMON_NAMES`]);
/// `common_names` is empty when RFC 6125 or name constraints rule the CN out
/// (see [`CnIgnored`]), while `subject` still shows it.
pub fn inspect_chain(
    chain: &[CertificateDer<'_>],
    anchors: &TrustAnchors,
    at: UnixTime,
) -> Result<ClientCertificate, CertError> {
    inspect_chain_detailed(chain, anchors, at).map(|i| i.certificate)
}

/// [`inspect_chain`], also saying what the facts leave out and why.
pub fn inspect_chain_detailed(
    chain: &[CertificateDer<'_>],
    anchors: &TrustAnchors,
    at: UnixTime,
) -> Result<ChainInspection, CertError> {
    let leaf = chain
        .first()
        .ok_or_else(|| CertError::Parse("no certificate".into()))?;
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| CertError::Parse(e.to_string()))?;
    let subject_common_names = common_names(cert.subject());
    let sans = dns_names(&cert);
    let verification = anchors.verify_chain(chain, at);
    let cn_ignored = if sans.unreadable {
        Some(CnIgnored::UnreadableSans)
    } else if !sans.names.is_empty() {
        Some(CnIgnored::DnsSans)
    } else if matches!(verification, Ok(v) if v.name_constrained) {
        Some(CnIgnored::NameConstraints)
    } else {
        None
    };
    let certificate = ClientCertificate {
        verified: verification.is_ok(),
        verification_error: verification.err(),
        subject: distinguished_name(cert.subject()),
        common_names: match cn_ignored {
            None => subject_common_names.clone(),
            Some(_) => Vec::new(),
        },
        dns_names: sans.names,
        issuer: distinguished_name(cert.issuer()),
        serial: bounded(hex_upper(cert.raw_serial()), MAX_SERIAL_HEX),
        sha256_fingerprint: hex_upper(&Sha256::digest(leaf.as_ref())),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    };
    Ok(ChainInspection {
        certificate,
        cn_ignored: cn_ignored.filter(|_| !subject_common_names.is_empty()),
        subject_common_names,
        dns_names_dropped: sans.dropped,
    })
}

/// The DNS names of a certificate's subjectAltName, as handed on.
#[derive(Debug, Default)]
struct SanNames {
    /// Escaped and bounded, at most [`MAX_DNS_NAMES`], in certificate order.
    names: Vec<String>,
    /// How many more there were.
    dropped: usize,
    /// The extension is present but x509-parser cannot read it (malformed or
    /// duplicated).
    unreadable: bool,
}

/// Every dNSName entry of the subjectAltName, including entries that are not
/// even UTF-8 (they are escaped, and fail name validation later, but they
/// still make the certificate one "with DNS SANs" for RFC 6125).
fn dns_names(cert: &X509Certificate<'_>) -> SanNames {
    let san = match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value,
        Ok(None) => return SanNames::default(),
        Err(_) => {
            return SanNames {
                unreadable: true,
                ..SanNames::default()
            };
        }
    };
    let mut out = SanNames::default();
    for raw in san.general_names.iter().filter_map(dns_name_bytes) {
        if out.names.len() < MAX_DNS_NAMES {
            out.names.push(bounded(escape_name(raw), MAX_NAME_LEN));
        } else {
            out.dropped += 1;
        }
    }
    out
}

/// The bytes of a dNSName entry (`[2]`), parsed or not.
fn dns_name_bytes<'a>(name: &GeneralName<'a>) -> Option<&'a [u8]> {
    match *name {
        GeneralName::DNSName(s) => Some(s.as_bytes()),
        GeneralName::Invalid(tag, data) if tag.0 == 2 => Some(data),
        _ => None,
    }
}

/// The CN attributes of `name`, escaped like DNS names and bounded.
fn common_names(name: &X509Name<'_>) -> Vec<String> {
    name.iter_common_name()
        .take(MAX_COMMON_NAMES)
        .map(|cn| {
            let text = match string_value(cn.attr_value()) {
                Some(bytes) => escape_name(&bytes),
                None => hex_value(cn.attr_value()),
            };
            bounded(text, MAX_NAME_LEN)
        })
        .collect()
}

/// A distinguished name as RFC 4514 text: `type=value` attributes, joined
/// with `+` within an RDN, RDNs joined with `, `. The RDNs stay in the
/// certificate's order, as OpenSSL's one-line form and earlier attrelay
/// versions print them (RFC 4514 itself would reverse them). Bounded to
/// [`MAX_DN_LEN`].
pub fn distinguished_name(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let ty = attribute_type(&atv.attr_type().to_id_string());
                    format!("{ty}={}", attribute_value(atv.attr_value()))
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    bounded(rdns.join(", "), MAX_DN_LEN)
}

/// RFC 4514 short names, and OpenSSL's for a few more common attributes, by
/// dotted OID.
const ATTRIBUTE_TYPES: &[(&str, &str)] = &[
    ("2.5.4.3", "CN"),
    ("2.5.4.4", "SN"),
    ("2.5.4.5", "serialNumber"),
    ("2.5.4.6", "C"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.9", "STREET"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.12", "title"),
    ("2.5.4.42", "GN"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("1.2.840.113549.1.9.1", "emailAddress"),
];

/// The short name of an attribute type, or its dotted OID (RFC 4514 2.3).
fn attribute_type(dotted: &str) -> String {
    ATTRIBUTE_TYPES
        .iter()
        .find(|(oid, _)| *oid == dotted)
        .map_or_else(|| dotted.to_string(), |(_, short)| (*short).to_string())
}

/// An attribute value per RFC 4514 2.4: a string escaped, anything else `#`
/// and the hex of its DER encoding.
fn attribute_value(value: &Any<'_>) -> String {
    match string_value(value) {
        Some(bytes) => escape_dn_value(&bytes),
        None => hex_value(value),
    }
}

/// `#` and the upper-case hex of the value's DER encoding (RFC 4514 2.4).
fn hex_value(value: &Any<'_>) -> String {
    let der = value
        .to_der_vec()
        .unwrap_or_else(|_| value.as_bytes().to_vec());
    format!("#{}", hex_upper(&der))
}

/// The characters of a string-typed value, as bytes: UTF-8 for BMPString and
/// UniversalString (decoded, a bad code unit replaced by U+FFFD), the raw
/// bytes for the 8-bit string types whatever their charset claims (escaping
/// makes any byte safe). `None` for a value that is not a string.
fn string_value(value: &Any<'_>) -> Option<Vec<u8>> {
    if value.class() != Class::Universal {
        return None;
    }
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString
        | Tag::TeletexString
        | Tag::VideotexString
        | Tag::GraphicString
        | Tag::GeneralString => Some(value.as_bytes().to_vec()),
        Tag::BmpString => decode_bmp(value.as_bytes()).map(String::into_bytes),
        Tag::UniversalString => decode_universal(value.as_bytes()).map(String::into_bytes),
        _ => None,
    }
}

/// UTF-16BE text; `None` when the length is odd.
fn decode_bmp(data: &[u8]) -> Option<String> {
    if !data.len().is_multiple_of(2) {
        return None;
    }
    let units = data
        .chunks_exact(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]));
    Some(
        char::decode_utf16(units)
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
    )
}

/// UCS-4 (UTF-32BE) text; `None` when the length is not a multiple of 4.
fn decode_universal(data: &[u8]) -> Option<String> {
    if !data.len().is_multiple_of(4) {
        return None;
    }
    Some(
        data.chunks_exact(4)
            .map(|q| {
                char::from_u32(u32::from_be_bytes([q[0], q[1], q[2], q[3]]))
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
    )
}

/// Printable ASCII, space included: what may appear in the output unescaped.
fn printable(b: u8) -> bool {
    (0x20..0x7f).contains(&b)
}

/// Appends `\XX`, the RFC 4514 hex-pair escape of one byte.
fn push_hex_escape(out: &mut String, b: u8) {
    // Writing to a String cannot fail.
    let _ = write!(out, "\\{b:02X}");
}

/// Escapes an attribute value per RFC 4514 2.4, and further: every byte that
/// is not printable ASCII (CR, LF, NUL, other controls, DEL, the bytes of
/// non-ASCII characters) becomes a `\XX` hex pair, so the result is printable
/// ASCII only. `"` is written `\22` rather than `\"` so that the subject can
/// be quoted in a header without a quote inside (RFC 4514 allows either).
pub fn escape_dn_value(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let last = bytes.len().saturating_sub(1);
    for (i, &b) in bytes.iter().enumerate() {
        let special = matches!(b, b'+' | b',' | b';' | b'<' | b'>' | b'\\')
            || (i == 0 && matches!(b, b'#' | b' '))
            || (i == last && b == b' ');
        if !printable(b) || b == b'"' {
            push_hex_escape(&mut out, b);
        } else if special {
            out.push('\\');
            out.push(char::from(b));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// Escapes a CN or DNS name: printable ASCII stays, the backslash and every
/// other byte become `\XX`. A name that needed escaping is therefore never a
/// valid DNS name (a backslash is no DNS character), so it can match no
/// connector, while every valid name passes unchanged.
pub fn escape_name(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if printable(b) && b != b'\\' {
            out.push(char::from(b));
        } else {
            push_hex_escape(&mut out, b);
        }
    }
    out
}

/// `s` cut to at most `max` bytes on a character boundary, ending in [`CUT`]
/// when it was longer.
pub fn bounded(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut cut = max.saturating_sub(CUT.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str(CUT);
    s
}

/// A `UnixTime` from seconds since the epoch (negative instants clamp to the epoch).
pub fn unix_time(seconds: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(seconds.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use attrelay_policy::certname;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
    };

    /// 2027-01-15, inside rcgen's default validity (1975 to 4096).
    const AT: i64 = 1_800_000_000;

    fn printable_ascii(s: &str) -> bool {
        s.bytes().all(|b| (0x20..0x7f).contains(&b))
    }

    #[test]
    fn dn_values_are_escaped_per_rfc_4514_and_to_printable_ascii() {
        assert_eq!(escape_dn_value(b"mail.contoso.com"), "mail.contoso.com");
        assert_eq!(
            escape_dn_value(b"a\r\nX-Attributed-Tenant: evil"),
            "a\\0D\\0AX-Attributed-Tenant: evil"
        );
        assert_eq!(
            escape_dn_value(b"a,b+c;d<e>f\\g\"h"),
            "a\\,b\\+c\\;d\\<e\\>f\\\\g\\22h"
        );
        assert_eq!(escape_dn_value(b"#x"), "\\#x");
        assert_eq!(escape_dn_value(b" x "), "\\ x\\ ");
        assert_eq!(escape_dn_value(b" "), "\\ ");
        assert_eq!(escape_dn_value(b"x#y"), "x#y");
        assert_eq!(escape_dn_value(b"\0\t\x7f"), "\\00\\09\\7F");
        assert_eq!(escape_dn_value("Müller".as_bytes()), "M\\C3\\BCller");
        let every_byte: Vec<u8> = (0..=255).collect();
        assert!(printable_ascii(&escape_dn_value(&every_byte)));
    }

    #[test]
    fn escaped_names_never_validate_and_valid_names_pass_unchanged() {
        for ok in [
            "mail.contoso.com",
            "*.contoso.com",
            "xn--mller-kva.contoso.com",
        ] {
            assert_eq!(escape_name(ok.as_bytes()), ok);
        }
        let hostile: [&[u8]; 4] = [
            b"mail.contoso.com\0.evil.example",
            b"mail.contoso.com\r\nX-Attributed-Tenant: contoso",
            b"mail\\.contoso.com",
            "m\u{fc}ller.contoso.com".as_bytes(),
        ];
        for hostile in hostile {
            let escaped = escape_name(hostile);
            assert!(printable_ascii(&escaped), "{escaped}");
            assert!(escaped.contains('\\'), "{escaped}");
            assert!(certname::validate(&escaped, true).is_err(), "{escaped}");
        }
        assert_eq!(escape_name(b"a\\b"), "a\\5Cb");
    }

    #[test]
    fn bounded_values_are_cut_and_a_cut_name_is_invalid() {
        let long = format!("{}.contoso.com", "a.".repeat(200));
        let cut = bounded(escape_name(long.as_bytes()), MAX_NAME_LEN);
        assert_eq!(cut.len(), MAX_NAME_LEN);
        assert!(cut.ends_with(CUT), "{cut}");
        assert!(certname::validate(&cut, true).is_err(), "{cut}");
        assert_eq!(bounded("short".into(), 10), "short");
        // Never panics on a multi-byte character at the cut.
        assert!(bounded("é".repeat(100), 11).len() <= 11);
    }

    #[test]
    fn non_string_values_are_hex_and_ucs_strings_are_decoded() {
        let octets = Any::from_tag_and_data(Tag::OctetString, &[1, 2]);
        assert_eq!(attribute_value(&octets), "#04020102");
        let bmp = Any::from_tag_and_data(Tag::BmpString, &[0, b'a', 0, b'\r', 0, 0xe9]);
        assert_eq!(attribute_value(&bmp), "a\\0D\\C3\\A9");
        let odd = Any::from_tag_and_data(Tag::BmpString, &[0, b'a', 0]);
        assert_eq!(attribute_value(&odd), "#1E03006100");
        let universal =
            Any::from_tag_and_data(Tag::UniversalString, &[0, 0, 0, b'#', 0, 0, 0, b'z']);
        assert_eq!(attribute_value(&universal), "\\#z");
        assert_eq!(attribute_type("2.5.4.10"), "O");
        assert_eq!(attribute_type("1.2.3.4"), "1.2.3.4");
    }

    fn ca_params(cn: &str, permitted_dns: Option<&str>) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.name_constraints = permitted_dns.map(|d| NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName(d.to_string())],
            excluded_subtrees: Vec::new(),
        });
        p
    }

    fn leaf_params(cn: &str, sans: &[&str]) -> CertificateParams {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p
    }

    fn root(permitted_dns: Option<&str>) -> CertifiedIssuer<'static, KeyPair> {
        CertifiedIssuer::self_signed(
            ca_params("Test Root", permitted_dns),
            KeyPair::generate().unwrap(),
        )
        .unwrap()
    }

    fn intermediate(
        cn: &str,
        permitted_dns: Option<&str>,
        root: &CertifiedIssuer<'static, KeyPair>,
    ) -> CertifiedIssuer<'static, KeyPair> {
        CertifiedIssuer::signed_by(
            ca_params(cn, permitted_dns),
            KeyPair::generate().unwrap(),
            root,
        )
        .unwrap()
    }

    fn anchors(root: &CertifiedIssuer<'static, KeyPair>) -> TrustAnchors {
        let anchor = webpki::anchor_from_trusted_cert(root.der())
            .unwrap()
            .to_owned();
        TrustAnchors {
            anchors: vec![anchor],
            sources: Vec::new(),
        }
    }

    /// Leaf `params` issued by `issuer`, then `rest` of the chain.
    fn chain(
        params: CertificateParams,
        issuer: &CertifiedIssuer<'static, KeyPair>,
        rest: &[&CertifiedIssuer<'static, KeyPair>],
    ) -> Vec<CertificateDer<'static>> {
        let leaf = params
            .signed_by(&KeyPair::generate().unwrap(), issuer)
            .unwrap();
        let mut out = vec![leaf.der().clone()];
        out.extend(rest.iter().map(|c| c.der().clone()));
        out
    }

    #[test]
    fn a_hostile_subject_becomes_printable_facts() {
        let mut p = leaf_params("mail.contoso.com\r\nX-Attributed-Tenant: contoso", &[]);
        p.distinguished_name.push(
            DnType::OrganizationName,
            format!("Evil \"Org\" \\ (x)\0{}", "z".repeat(10_000)),
        );
        let key = KeyPair::generate().unwrap();
        let der = p.self_signed(&key).unwrap().der().clone();
        let i = inspect_chain_detailed(&[der], &TrustAnchors::default(), unix_time(AT)).unwrap();
        let c = &i.certificate;
        assert!(!c.verified);
        for s in [&c.subject, &c.issuer] {
            assert!(printable_ascii(s), "{s}");
            assert!(s.len() <= MAX_DN_LEN, "{}", s.len());
            assert!(
                s.starts_with("CN=mail.contoso.com\\0D\\0AX-Attributed-Tenant: contoso, O=Evil \\22Org\\22 \\\\ (x)\\00zzz"),
                "{s}"
            );
            assert!(s.ends_with(CUT), "{s}");
        }
        assert_eq!(
            c.common_names,
            ["mail.contoso.com\\0D\\0AX-Attributed-Tenant: contoso"]
        );
        assert!(c.names().is_empty(), "{:?}", c.names());
    }

    #[test]
    fn the_cn_is_ignored_when_the_certificate_has_a_dns_san() {
        let root = root(None);
        let der = chain(
            leaf_params("mail.contoso.com", &["mail.unrelated.example"]),
            &root,
            &[],
        );
        let i = inspect_chain_detailed(&der, &anchors(&root), unix_time(AT)).unwrap();
        assert!(
            i.certificate.verified,
            "{:?}",
            i.certificate.verification_error
        );
        assert!(i.certificate.common_names.is_empty());
        assert_eq!(i.certificate.dns_names, ["mail.unrelated.example"]);
        assert_eq!(i.certificate.names(), ["mail.unrelated.example"]);
        assert_eq!(i.subject_common_names, ["mail.contoso.com"]);
        assert_eq!(i.cn_ignored, Some(CnIgnored::DnsSans));
        assert_eq!(i.certificate.subject, "CN=mail.contoso.com");
    }

    #[test]
    fn the_cn_counts_for_a_cn_only_certificate_from_an_unconstrained_chain() {
        let root = root(None);
        let inter = intermediate("Issuing CA", None, &root);
        let der = chain(leaf_params("mail.contoso.com", &[]), &inter, &[&inter]);
        let i = inspect_chain_detailed(&der, &anchors(&root), unix_time(AT)).unwrap();
        assert!(
            i.certificate.verified,
            "{:?}",
            i.certificate.verification_error
        );
        assert_eq!(i.certificate.common_names, ["mail.contoso.com"]);
        assert_eq!(i.cn_ignored, None);
    }

    #[test]
    fn a_name_constrained_intermediate_takes_the_cn_out() {
        let root = root(None);
        let inter = intermediate("Fabrikam CA", Some("fabrikam.example"), &root);
        // webpki verifies it: DNS name constraints apply to SANs, not to the CN.
        let der = chain(leaf_params("mail.contoso.com", &[]), &inter, &[&inter]);
        let i = inspect_chain_detailed(&der, &anchors(&root), unix_time(AT)).unwrap();
        assert!(
            i.certificate.verified,
            "{:?}",
            i.certificate.verification_error
        );
        assert!(i.certificate.common_names.is_empty());
        assert!(i.certificate.names().is_empty());
        assert_eq!(i.cn_ignored, Some(CnIgnored::NameConstraints));
        // Its SANs are judged by webpki: inside the constraint they verify...
        let der = chain(
            leaf_params("x", &["mail.fabrikam.example"]),
            &inter,
            &[&inter],
        );
        let i = inspect_chain_detailed(&der, &anchors(&root), unix_time(AT)).unwrap();
        assert!(
            i.certificate.verified,
            "{:?}",
            i.certificate.verification_error
        );
        assert_eq!(i.certificate.names(), ["mail.fabrikam.example"]);
        // ... and outside it they do not.
        let der = chain(leaf_params("x", &["mail.contoso.com"]), &inter, &[&inter]);
        let c = inspect_chain(&der, &anchors(&root), unix_time(AT)).unwrap();
        assert!(!c.verified);
    }

    #[test]
    fn a_name_constrained_trust_anchor_takes_the_cn_out() {
        let root = root(Some("fabrikam.example"));
        let der = chain(leaf_params("mail.contoso.com", &[]), &root, &[]);
        let i = inspect_chain_detailed(&der, &anchors(&root), unix_time(AT)).unwrap();
        assert!(
            i.certificate.verified,
            "{:?}",
            i.certificate.verification_error
        );
        assert!(i.certificate.common_names.is_empty());
        assert_eq!(i.cn_ignored, Some(CnIgnored::NameConstraints));
    }

    #[test]
    fn the_number_of_dns_names_is_bounded() {
        let sans: Vec<String> = (0..300).map(|i| format!("h{i}.example.com")).collect();
        let refs: Vec<&str> = sans.iter().map(String::as_str).collect();
        let cert = leaf_params("x", &refs)
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap();
        let der = [cert.der().clone()];
        let i = inspect_chain_detailed(&der, &TrustAnchors::default(), unix_time(AT)).unwrap();
        assert_eq!(i.certificate.dns_names.len(), MAX_DNS_NAMES);
        assert_eq!(i.dns_names_dropped, 300 - MAX_DNS_NAMES);
        assert_eq!(i.certificate.dns_names[0], "h0.example.com");
    }
}
