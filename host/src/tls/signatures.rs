//! The handshake signatures both of our certificate verifiers check the
//! same way (the client's CertificateVerify at STARTTLS, the next hop's at
//! delivery): whatever a verifier decides about the chain, the peer must
//! still prove it holds the certificate's key.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::CertificateDer;

/// The provider's signature algorithms, checked for TLS 1.2 and 1.3.
#[derive(Debug)]
pub struct Signatures(pub WebPkiSupportedAlgorithms);

impl Signatures {
    pub fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    pub fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
