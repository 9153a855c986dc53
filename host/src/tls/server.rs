//! The relay's TLS: the STARTTLS server configuration (rustls) and the
//! outbound client configuration for onward delivery.
//!
//! **Client certificates: asked for, never required, verified by us.** After
//! STARTTLS the server requests a certificate (hinting the operator's CAs) but
//! completes the handshake whatever the client sends. rustls still checks the
//! client's proof of possession of the key (CertificateVerify); the chain
//! itself is verified afterwards, in [`super::client_cert::inspect_chain`],
//! against `server.client_ca` at the session time. A certificate that does
//! not verify (self-signed, expired, unknown issuer, intermediates missing)
//! reaches the policy with `verified: false` and the reason, and the default
//! policy ignores its names: it is never authentication. We chose this over
//! ending the handshake because the mail can still be attributed by IP, and
//! because the explanation "your certificate expired on ..." is what the
//! admin on the other side needs, where a failed handshake tells them nothing.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use x509_parser::prelude::*;

use super::signatures::Signatures;
use crate::pem::{PemError, read_certificates};

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{}: cannot read the private key: {detail}", path.display())]
    Key {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot make the ephemeral server certificate: {0}")]
    Ephemeral(String),
}

/// The crypto provider everything uses (ring: no C toolchain beyond cc needed).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Requests a client certificate without requiring one, and accepts whatever
/// chain is sent; see the module documentation for why.
#[derive(Debug)]
struct RequestClientCert {
    hints: Vec<DistinguishedName>,
    signatures: Signatures,
}

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deliberately deferred: the session verifies the chain against the
        // trust anchors and hands the result (and its reason) to the policy.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsConfigError::Key {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// A self-signed certificate for `hostname`, made at start when no
/// certificate is configured (demo and tests; clients will not verify it).
pub fn ephemeral_certificate(
    hostname: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsConfigError> {
    let err = |e: rcgen::Error| TlsConfigError::Ephemeral(e.to_string());
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()]).map_err(err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let signing_key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&signing_key).map_err(err)?;
    let key = PrivateKeyDer::try_from(signing_key.serialize_der())
        .map_err(|e| TlsConfigError::Ephemeral(e.to_string()))?;
    Ok((vec![cert.der().clone()], key))
}

/// The STARTTLS server configuration.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca_files: &[std::path::PathBuf],
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let mut hints = Vec::new();
    for path in client_ca_files {
        for der in read_certificates(path)? {
            if let Ok((_, c)) = X509Certificate::from_der(&der) {
                hints.push(DistinguishedName::from(c.subject().as_raw().to_vec()));
            }
        }
    }
    let provider = provider();
    let verifier = RequestClientCert {
        hints,
        signatures: Signatures(provider.signature_verification_algorithms),
    };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// "TLSv1.3", as logs and Received headers spell it.
pub fn protocol_name(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        other => format!("{other:?}"),
    }
}

/// The IANA name of a cipher suite ("TLS_AES_256_GCM_SHA384").
pub fn cipher_name(s: rustls::SupportedCipherSuite) -> String {
    let name = s
        .suite()
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:?}", s.suite()));
    // rustls spells TLS 1.3 suites "TLS13_..."; IANA spells them "TLS_...".
    name.strip_prefix("TLS13_")
        .map(|r| format!("TLS_{r}"))
        .unwrap_or(name)
}
