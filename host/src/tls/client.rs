//! The client side of TLS, for onward delivery: STARTTLS to next hops,
//! verified against the operator's CAs when given, opportunistic otherwise,
//! with the relay's own client certificate when configured.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::server::{TlsConfigError, provider, read_private_key};
use super::signatures::Signatures;
use crate::pem::read_certificates;

/// Opportunistic TLS to a next hop (RFC 7435): encrypt, but accept any server
/// certificate, as MTAs do without DANE or MTA-STS. Used when no `tls_ca` is
/// configured for delivery.
#[derive(Debug)]
struct Opportunistic {
    signatures: Signatures,
}

impl ServerCertVerifier for Opportunistic {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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

/// The client configuration for onward delivery: verified against `ca_files`
/// when given, opportunistic otherwise; with a client certificate when given.
pub fn client_config(
    ca_files: &[std::path::PathBuf],
    client_cert: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if ca_files.is_empty() {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Opportunistic {
                signatures: Signatures(provider.signature_verification_algorithms),
            }))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for path in ca_files {
            for der in read_certificates(path)? {
                roots.add(der)?;
            }
        }
        builder.with_root_certificates(roots)
    };
    let config = match client_cert {
        Some((cert, key)) => {
            builder.with_client_auth_cert(read_certificates(cert)?, read_private_key(key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
