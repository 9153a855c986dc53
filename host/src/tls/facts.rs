//! A TLS session as the facts a policy sees: the negotiated protocol and
//! cipher, and the client's certificate chain verified against the trust
//! anchors of the evaluation judging the session. The SMTP session asks
//! for them after its handshake, and again after a reload.

use std::net::SocketAddr;

use attrelay_policy::model::{ClientCertificate, TlsFacts};
use rustls::ServerConnection;
use rustls_pki_types::CertificateDer;
use tracing::info;

use super::server::{cipher_name, protocol_name};
use crate::spool::now;
use attrelay_engine::certificate::{TrustAnchors, inspect_chain, unix_time};

/// The facts of a completed handshake, and the client's chain (kept to
/// verify it again against a reloaded evaluation's anchors).
pub fn tls_facts(
    conn: &ServerConnection,
    anchors: &TrustAnchors,
    peer: SocketAddr,
) -> (TlsFacts, Option<Vec<CertificateDer<'static>>>) {
    let chain = conn
        .peer_certificates()
        .map(|c| c.to_vec())
        .filter(|c| !c.is_empty());
    let facts = TlsFacts {
        protocol: conn
            .protocol_version()
            .map(protocol_name)
            .unwrap_or_default(),
        cipher: conn
            .negotiated_cipher_suite()
            .map(cipher_name)
            .unwrap_or_default(),
        client_certificate: chain
            .as_ref()
            .and_then(|c| certificate_facts(c, anchors, peer)),
    };
    (facts, chain)
}

/// The certificate facts of `chain` under `anchors`, at the current time; `None` (no certificate, never authentication) when the
/// leaf cannot be parsed.
pub fn certificate_facts(
    chain: &[CertificateDer<'static>],
    anchors: &TrustAnchors,
    peer: SocketAddr,
) -> Option<ClientCertificate> {
    match inspect_chain(chain, anchors, unix_time(now())) {
        Ok(c) => Some(c),
        Err(e) => {
            info!(client = %peer, error = %e, "client certificate ignored");
            None
        }
    }
}
