//! The client certificate as a policy sees it: names and identifiers parsed
//! with x509-parser, and the chain verified with webpki against the operator's
//! trust anchors at the session time.
//!
//! Verification happens here, not in the policy, because only the host holds
//! the trust anchors; the policy gets `verified` plus, when it failed, a reason
//! an admin can act on ("expired", "issuer not trusted").

use std::path::{Path, PathBuf};
use std::time::Duration;

use attrelay_policy::model::ClientCertificate;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use sha2::{Digest, Sha256};
use x509_parser::prelude::*;

use super::pem::{PemError, read_certificates};

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

    fn add_file(&mut self, path: &Path) -> Result<(), CertError> {
        for (i, der) in read_certificates(path)?.iter().enumerate() {
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

    /// The anchors, for building a rustls client-certificate verifier.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// Verifies `chain` (leaf first, then intermediates) for TLS client
    /// authentication at `at`. `Err` carries an admin-readable reason.
    pub fn verify(&self, chain: &[CertificateDer<'_>], at: UnixTime) -> Result<(), String> {
        let (leaf, intermediates) = chain.split_first().ok_or("no certificate was presented")?;
        if self.anchors.is_empty() {
            return Err("no trust anchors are configured (server.client_ca), so no certificate can be verified".into());
        }
        let ee = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| format!("malformed certificate: {e:?}"))?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            intermediates,
            at,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
        .map_err(|e| describe_webpki_error(&e, leaf))
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

/// Parses the leaf of `chain` and verifies the chain at `at`: the facts a
/// policy receives. An unverifiable chain is not an error: it yields
/// `verified: false` with the reason. Only an unparsable leaf is an error.
pub fn inspect_chain(
    chain: &[CertificateDer<'_>],
    anchors: &TrustAnchors,
    at: UnixTime,
) -> Result<ClientCertificate, CertError> {
    let leaf = chain
        .first()
        .ok_or_else(|| CertError::Parse("no certificate".into()))?;
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| CertError::Parse(e.to_string()))?;
    let common_names = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(n) = name {
                dns_names.push((*n).to_string());
            }
        }
    }
    let verification = anchors.verify(chain, at);
    Ok(ClientCertificate {
        verified: verification.is_ok(),
        verification_error: verification.err(),
        subject: cert.subject().to_string(),
        common_names,
        dns_names,
        issuer: cert.issuer().to_string(),
        serial: hex_upper(cert.raw_serial()),
        sha256_fingerprint: hex_upper(&Sha256::digest(leaf.as_ref())),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// A `UnixTime` from seconds since the epoch (negative instants clamp to the epoch).
pub fn unix_time(seconds: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(seconds.max(0) as u64))
}
