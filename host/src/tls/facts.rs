//! A TLS session as the facts a policy sees: the negotiated protocol and
//! cipher, and the client's certificate chain verified against the trust
//! anchors of the evaluation judging the session. The SMTP session asks
//! for them after its handshake, and again after a reload that changed the
//! anchors.
//!
//! Verifying a chain is CPU work a client chooses (how much is bounded by
//! `attrelay_engine::chain`), so it runs on the blocking pool, at most
//! [`verifiers`] at once: a client whose chain is slow to verify delays its
//! own session, never the runtime's workers and every other session on them.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use attrelay_policy::model::{ClientCertificate, TlsFacts};
use rustls::ServerConnection;
use rustls_pki_types::CertificateDer;
use tokio::sync::Semaphore;
use tracing::info;

use super::server::{cipher_name, protocol_name};
use crate::clock::now;
use attrelay_engine::certificate::{TrustAnchors, inspect_chain, unix_time};

/// A client's chain as presented, leaf first.
pub type Chain = Arc<Vec<CertificateDer<'static>>>;

/// The facts of a completed handshake, and the client's chain (kept to
/// verify it again against a reloaded evaluation's anchors).
pub async fn tls_facts(
    conn: &ServerConnection,
    anchors: Arc<TrustAnchors>,
    peer: SocketAddr,
) -> (TlsFacts, Option<Chain>) {
    let chain: Option<Chain> = conn
        .peer_certificates()
        .filter(|c| !c.is_empty())
        .map(|c| Arc::new(c.to_vec()));
    let mut facts = TlsFacts {
        protocol: conn
            .protocol_version()
            .map(protocol_name)
            .unwrap_or_default(),
        cipher: conn
            .negotiated_cipher_suite()
            .map(cipher_name)
            .unwrap_or_default(),
        client_certificate: None,
    };
    if let Some(c) = &chain {
        facts.client_certificate = certificate_facts(c.clone(), anchors, peer).await;
    }
    (facts, chain)
}

/// Verifications running at once: half the cores (at least one), so that
/// clients presenting costly chains leave the rest to everyone else.
pub fn verifiers() -> &'static Semaphore {
    static VERIFIERS: OnceLock<Semaphore> = OnceLock::new();
    VERIFIERS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Semaphore::new((cores / 2).max(1))
    })
}

/// The certificate facts of `chain` under `anchors`, at the current time,
/// verified on the blocking pool; `None` (no certificate, never
/// authentication) when the leaf cannot be parsed.
pub async fn certificate_facts(
    chain: Chain,
    anchors: Arc<TrustAnchors>,
    peer: SocketAddr,
) -> Option<ClientCertificate> {
    let _turn = verifiers().acquire().await.ok()?;
    let at = unix_time(now());
    let inspected = tokio::task::spawn_blocking(move || inspect_chain(&chain, &anchors, at))
        .await
        .ok()?;
    match inspected {
        Ok(c) => Some(c),
        Err(e) => {
            info!(client = %peer, error = %e, "client certificate ignored");
            None
        }
    }
}
