//! The certificate chain a client presents, bounded before any work.
//!
//! Path building (webpki) tries the combinations of intermediates a client
//! sent, parsing candidates at every step. A client that is not even
//! trusted can make that expensive: nine CA certificates sharing one name
//! with different keys, one with thousands of extensions, nothing chaining
//! to a trust anchor — about 6 s of CPU per handshake, measured. So a chain
//! is checked and reduced here, with one parse of each certificate, before
//! path building sees it:
//!
//! - at most [`MAX_CHAIN_CERTS`] certificates and [`MAX_CHAIN_BYTES`] in
//!   all, else it is not verified at all (the reason goes into the facts and
//!   the decision log);
//! - of the intermediates, dropped: duplicates, ones that do not parse,
//!   self-issued ones (a root sent along; a trust anchor comes from the
//!   operator, never from the client), ones that issue nothing in the chain
//!   (no path from the leaf reaches their subject), more than
//!   [`MAX_ISSUERS_PER_NAME`] sharing one subject, and any past
//!   [`MAX_PATH_BYTES`].
//!
//! The bound that results: path building sees at most
//! `MAX_CHAIN_CERTS - 1` intermediates of [`MAX_PATH_BYTES`] in all, at most
//! [`MAX_ISSUERS_PER_NAME`] candidates at each step of a path no deeper than
//! webpki's six intermediates — at most 2 + 4 + ... + 64 = 126 steps, each
//! parsing at most [`MAX_PATH_BYTES`], about 2 MB of parsing at the worst
//! (measured in `docs/BENCHMARKS.md`), where an unbounded chain cost
//! seconds.

use std::collections::HashSet;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::*;

/// Certificates a client may present, its own included: Postfix verifies
/// to a depth of 9 CAs by default (`smtpd_tls_ccert_verifydepth`), and real
/// chains have two to four.
pub const MAX_CHAIN_CERTS: usize = 10;
/// Bytes a client's chain may have in all. Real ones have a few KiB; a
/// leaf with a few thousand names has about 60.
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;
/// Intermediates sharing one subject name handed to path building: two
/// allow a CA's cross-signed certificate beside its own.
pub const MAX_ISSUERS_PER_NAME: usize = 2;
/// Bytes of intermediates handed to path building; real ones have one or
/// two KiB each.
pub const MAX_PATH_BYTES: usize = 16 * 1024;

/// What path building gets of a client's chain: the leaf, then the
/// intermediates that may lie on a path from it, in the client's order.
/// Where more share a name than are kept, those issued by a trust anchor
/// (`anchor_subjects`: the anchors' subject names, their DER contents as
/// webpki keeps them) come first, so a cross-signed CA's certificate that
/// reaches the operator's CA is never the one left out.
/// `Err`: the chain is over a bound and is not verified, for this reason.
pub fn for_path_building<'a>(
    chain: &'a [CertificateDer<'a>],
    anchor_subjects: &[&[u8]],
) -> Result<Vec<CertificateDer<'a>>, String> {
    let bytes: usize = chain.iter().map(|c| c.len()).sum();
    if chain.len() > MAX_CHAIN_CERTS {
        return Err(format!(
            "the client presented {} certificates; a chain may have at most {MAX_CHAIN_CERTS}: not verified",
            chain.len()
        ));
    }
    if bytes > MAX_CHAIN_BYTES {
        return Err(format!(
            "the client presented {bytes} bytes of certificates; a chain may have at most {MAX_CHAIN_BYTES}: not verified"
        ));
    }
    let Some((leaf, rest)) = chain.split_first() else {
        return Err("no certificate was presented".into());
    };
    let Ok((_, leaf_cert)) = X509Certificate::from_der(leaf) else {
        // webpki says why, in its words.
        return Ok(vec![leaf.clone()]);
    };
    let mut candidates = candidates(rest);
    // Stable: within each group the client's order stays.
    candidates.sort_by_key(|c| !anchor_subjects.iter().any(|a| same_name(&c.issuer, a)));
    let kept = reachable(leaf_cert.issuer().as_raw(), &candidates);
    let mut out = vec![leaf.clone()];
    out.extend(kept.into_iter().map(|i| rest[candidates[i].index].clone()));
    Ok(out)
}

/// An intermediate worth considering: where it is in the chain, and its
/// names as DER (webpki chains names by their bytes).
struct Candidate {
    index: usize,
    len: usize,
    subject: Vec<u8>,
    issuer: Vec<u8>,
}

/// The intermediates that parse, are not self-issued and are not a copy of
/// one before them.
fn candidates(rest: &[CertificateDer<'_>]) -> Vec<Candidate> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (index, der) in rest.iter().enumerate() {
        if !seen.insert(der.as_ref()) {
            continue;
        }
        let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
            continue;
        };
        let (subject, issuer) = (cert.subject().as_raw(), cert.issuer().as_raw());
        let (subject, issuer) = (subject.to_vec(), issuer.to_vec());
        if subject != issuer {
            out.push(Candidate {
                index,
                len: der.len(),
                subject,
                issuer,
            });
        }
    }
    out
}

/// The candidates (their positions in `candidates`, in chain order) whose
/// subject a path from a certificate issued by `first_issuer` can reach,
/// at most [`MAX_ISSUERS_PER_NAME`] per subject (the first in `candidates`'
/// order) and [`MAX_PATH_BYTES`] in all.
fn reachable(first_issuer: &[u8], candidates: &[Candidate]) -> Vec<usize> {
    let mut wanted: Vec<&[u8]> = vec![first_issuer];
    let mut kept: Vec<usize> = Vec::new();
    let mut bytes = 0usize;
    let mut grew = true;
    while grew {
        grew = false;
        for (i, c) in candidates.iter().enumerate() {
            if kept.contains(&i) || !wanted.contains(&c.subject.as_slice()) {
                continue;
            }
            let same_name = kept
                .iter()
                .filter(|&&k| candidates[k].subject == c.subject)
                .count();
            if same_name >= MAX_ISSUERS_PER_NAME || bytes + c.len > MAX_PATH_BYTES {
                continue;
            }
            bytes += c.len;
            kept.push(i);
            if !wanted.contains(&c.issuer.as_slice()) {
                wanted.push(&c.issuer);
            }
            grew = true;
        }
    }
    kept.sort_unstable_by_key(|&i| candidates[i].index);
    kept
}

/// Whether a name as x509-parser gives it (a DER SEQUENCE, header
/// included) is the name whose contents webpki keeps for an anchor.
fn same_name(with_header: &[u8], contents: &[u8]) -> bool {
    with_header.first() == Some(&0x30)
        && with_header.len() > contents.len()
        && with_header.len() - contents.len() <= 5
        && with_header.ends_with(contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, CustomExtension, DnType, IsCa,
        KeyPair, KeyUsagePurpose,
    };

    type Ca = CertifiedIssuer<'static, KeyPair>;

    fn ca_params(cn: &str) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p
    }

    fn root(cn: &str) -> Ca {
        CertifiedIssuer::self_signed(ca_params(cn), KeyPair::generate().unwrap()).unwrap()
    }

    /// A CA named `cn`, issued by `by`.
    fn ca(cn: &str, by: &Ca) -> Ca {
        CertifiedIssuer::signed_by(ca_params(cn), KeyPair::generate().unwrap(), by).unwrap()
    }

    fn leaf(by: &Ca) -> CertificateDer<'static> {
        let mut p = CertificateParams::new(vec!["mail.contoso.com".to_string()]).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "mail.contoso.com");
        p.signed_by(&KeyPair::generate().unwrap(), by)
            .unwrap()
            .der()
            .clone()
    }

    fn subject_of(der: &CertificateDer<'_>) -> Vec<u8> {
        let (_, c) = X509Certificate::from_der(der).unwrap();
        c.subject().as_raw().to_vec()
    }

    #[test]
    fn copies_roots_and_certificates_that_issue_nothing_are_dropped() {
        let root = root("Root");
        let inter = ca("Issuing CA", &root);
        let unrelated = ca("Unrelated CA", &root);
        let chain = vec![
            leaf(&inter),
            unrelated.der().clone(),
            inter.der().clone(),
            inter.der().clone(),
            root.der().clone(),
        ];
        let kept = for_path_building(&chain, &[]).unwrap();
        assert_eq!(kept, vec![chain[0].clone(), inter.der().clone()]);
    }

    #[test]
    fn a_chain_over_its_bounds_is_not_verified_and_says_why() {
        let root = root("Root");
        let inter = ca("Issuing CA", &root);
        let mut chain = vec![leaf(&inter)];
        chain.extend((0..MAX_CHAIN_CERTS).map(|_| inter.der().clone()));
        let e = for_path_building(&chain, &[]).unwrap_err();
        assert!(
            e.contains("11 certificates") && e.contains("at most 10"),
            "{e}"
        );

        let mut big = ca_params("Big CA");
        for i in 0..3000u64 {
            big.custom_extensions
                .push(CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 4, 1, 55555, i],
                    vec![
                        0x05, 0x00, 0x04, 0x10, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
                        0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10,
                    ],
                ));
        }
        let big = CertifiedIssuer::signed_by(big, KeyPair::generate().unwrap(), &root).unwrap();
        let chain = vec![leaf(&inter), big.der().clone()];
        let e = for_path_building(&chain, &[]).unwrap_err();
        assert!(e.contains("bytes of certificates"), "{e}");
    }

    /// The chains that cost most to build paths from: many CAs sharing the
    /// leaf's issuer name, two names issuing each other (a loop), a long
    /// chain, large certificates. What path building gets stays within the
    /// documented bound.
    #[test]
    fn chains_built_to_maximise_path_building_are_reduced_to_the_bound() {
        let root = root("Root");
        // Three CAs named "Shared" (the leaf's issuer) with different
        // keys, three "Other" CAs issued by one of them, and two more
        // "Shared" issued by an "Other": names issuing each other, a loop.
        let shared: Vec<Ca> = (0..3).map(|_| ca("Shared", &root)).collect();
        let others: Vec<Ca> = (0..3).map(|_| ca("Other", &shared[0])).collect();
        let looped: Vec<Ca> = (0..2).map(|_| ca("Shared", &others[0])).collect();
        let mut chain = vec![leaf(&shared[0]), root.der().clone()];
        for c in shared.iter().chain(&others).chain(&looped) {
            chain.push(c.der().clone());
        }
        assert_eq!(chain.len(), MAX_CHAIN_CERTS);
        let kept = for_path_building(&chain, &[]).unwrap();
        let subjects: Vec<Vec<u8>> = kept[1..].iter().map(subject_of).collect();
        for s in &subjects {
            let same = subjects.iter().filter(|x| *x == s).count();
            assert!(
                same <= MAX_ISSUERS_PER_NAME,
                "{same} intermediates share a name"
            );
        }
        let bytes: usize = kept[1..].iter().map(|c| c.len()).sum();
        assert!(bytes <= MAX_PATH_BYTES);

        // A long chain of distinct names, leaf last-issued: every link kept.
        let mut links = vec![root];
        for i in 0..8 {
            let next = ca(&format!("Level {i}"), links.last().unwrap());
            links.push(next);
        }
        let mut chain = vec![leaf(links.last().unwrap())];
        chain.extend(links[1..].iter().rev().map(|c| c.der().clone()));
        let kept = for_path_building(&chain, &[]).unwrap();
        assert_eq!(kept.len(), 9, "leaf and its eight CAs");
    }

    /// The DER contents of a certificate's subject, as webpki keeps an
    /// anchor's.
    fn anchor_subject(der: &CertificateDer<'_>) -> Vec<u8> {
        let anchor = webpki::anchor_from_trusted_cert(der).unwrap();
        anchor.subject.as_ref().to_vec()
    }

    #[test]
    fn of_many_cas_sharing_a_name_the_one_an_anchor_issued_is_kept() {
        let trusted = root("Trusted Root");
        let others: Vec<Ca> = (0..3).map(|i| root(&format!("Other Root {i}"))).collect();
        // Four certificates of one CA (one key would do as well), issued by
        // three untrusted roots and, last, by the trusted one.
        let mut cross: Vec<Ca> = others.iter().map(|r| ca("Issuing CA", r)).collect();
        cross.push(ca("Issuing CA", &trusted));
        let mut chain = vec![leaf(&cross[3])];
        chain.extend(cross.iter().map(|c| c.der().clone()));
        let subject = anchor_subject(trusted.der());
        let kept = for_path_building(&chain, &[&subject]).unwrap();
        assert!(kept.contains(cross[3].der()), "the anchored one is kept");
        assert_eq!(kept.len(), 1 + MAX_ISSUERS_PER_NAME);
        let without = for_path_building(&chain, &[]).unwrap();
        assert!(
            !without.contains(cross[3].der()),
            "the bound holds either way"
        );
    }
}
