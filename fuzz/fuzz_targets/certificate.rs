//! Certificate-name extraction and verification on arbitrary DER: never
//! panics, and whatever names come out are valid DNS names.
#![no_main]

use attrelay::certificate::{TrustAnchors, inspect_chain, unix_time};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    let chain = vec![CertificateDer::from(data.to_vec())];
    if let Ok(cert) = inspect_chain(&chain, &TrustAnchors::default(), unix_time(1_800_000_000)) {
        assert!(!cert.verified);
        for n in cert.names() {
            assert!(attrelay_policy::certname::validate(&n, true).is_ok());
        }
    }
});
