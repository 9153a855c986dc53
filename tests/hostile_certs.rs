//! Certificates from hostile or sloppy clients: each gets the correct
//! attribution or a clear non-attribution, never a panic. Run through
//! `attrelay check` (the same verification and policy as the relay) on PEM
//! files made with rcgen.

mod support;

use rcgen::{CertificateParams, DnType, DnValue, KeyPair, date_time_ymd};
use serde_json::Value;
use support::{LONG, Pki, attrelay, leaf_params, stderr, stdout};

const NOW: &str = "2026-06-01T00:00:00Z";

/// `check` of an NDR from an unknown IP: only a verified certificate-based
/// connector can relay it. Returns (exit status, first recipient's report).
fn ndr_with(pki: &Pki, config: &str, pem: &std::path::Path) -> (i32, Value) {
    let out = attrelay(&[
        "check",
        "--config",
        config,
        "--ip",
        "192.0.2.77",
        "--from",
        "",
        "--to",
        "x@internet.example",
        "--at",
        NOW,
        "--cert",
        pem.to_str().unwrap(),
        "--json",
    ]);
    let _ = pki;
    let json: Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    (out.status.code().unwrap(), json["recipients"][0].clone())
}

fn why(r: &Value) -> String {
    r["explanation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn names_in_every_legitimate_form_attribute() {
    let pki = Pki::new();
    let config = pki.write_config("").display().to_string();
    let mut cn_only = leaf_params("mail.contoso.com", &[], LONG.0, LONG.1);
    cn_only.subject_alt_names.clear();
    let mut san_only = leaf_params("ignored", &["mail.contoso.com"], LONG.0, LONG.1);
    san_only.distinguished_name = rcgen::DistinguishedName::new();
    let cases = [
        ("cn-only", cn_only),
        ("san-only", san_only),
        (
            "upper-case-trailing-dot",
            leaf_params("MAIL.CONTOSO.COM.", &["MAIL.CONTOSO.COM."], LONG.0, LONG.1),
        ),
        (
            "idn-a-label",
            leaf_params(
                "xn--mller-kva.contoso.com",
                &["xn--mller-kva.contoso.com"],
                LONG.0,
                LONG.1,
            ),
        ),
    ];
    for (name, params) in cases {
        let pem = pki.leaf(name, params);
        let (code, r) = ndr_with(&pki, &config, &pem);
        assert_eq!(
            (code, r["code"].as_u64(), r["tenant"].as_str()),
            (0, Some(250), Some("contoso")),
            "{name}: {r}"
        );
    }
}

#[test]
fn hostile_certificates_are_never_authentication() {
    let pki = Pki::new();
    let config = pki.write_config("").display().to_string();
    // Not valid yet.
    let pem = pki.leaf(
        "future",
        leaf_params(
            "mail.contoso.com",
            &["mail.contoso.com"],
            (2030, 1, 1),
            (2040, 1, 1),
        ),
    );
    let (code, r) = ndr_with(&pki, &config, &pem);
    assert_eq!((code, r["code"].as_u64()), (1, Some(550)), "{r}");
    assert!(
        why(&r).contains("certificate not valid before 2030-01-01T00:00:00Z"),
        "{}",
        why(&r)
    );

    // An embedded NUL: "mail.contoso.com\0.evil.example" must not pass for mail.contoso.com.
    let mut nul = leaf_params("x", &[], LONG.0, LONG.1);
    nul.subject_alt_names.clear();
    nul.distinguished_name = rcgen::DistinguishedName::new();
    nul.distinguished_name.push(
        DnType::CommonName,
        DnValue::Utf8String("mail.contoso.com\0.evil.example".into()),
    );
    let pem = pki.leaf("nul", nul);
    let (code, r) = ndr_with(&pki, &config, &pem);
    assert_eq!((code, r["code"].as_u64()), (1, Some(550)), "{r}");
    assert!(r["tenant"].is_null());

    // A wildcard in the middle, a bare wildcard, spaces: not names at all.
    let pem = pki.leaf(
        "junk",
        leaf_params(
            "mail.*.com",
            &["*", "mail .contoso.com", "*.*.contoso.com"],
            LONG.0,
            LONG.1,
        ),
    );
    let (code, r) = ndr_with(&pki, &config, &pem);
    assert_eq!((code, r["code"].as_u64()), (1, Some(550)), "{r}");
}

#[test]
fn very_large_certificates_and_chains_do_not_break_anything() {
    let pki = Pki::new();
    let config = pki.write_config("").display().to_string();
    // 2 000 SANs, the last one the real name.
    let mut sans: Vec<String> = (0..2000)
        .map(|i| format!("host{i}.unrelated.example"))
        .collect();
    sans.push("mail.contoso.com".into());
    let refs: Vec<&str> = sans.iter().map(String::as_str).collect();
    let pem = pki.leaf(
        "many-sans",
        leaf_params("mail.contoso.com", &refs, LONG.0, LONG.1),
    );
    let (code, r) = ndr_with(&pki, &config, &pem);
    assert_eq!(
        (code, r["tenant"].as_str()),
        (0, Some("contoso")),
        "{}",
        r["code"]
    );

    // A chain of 300 unrelated CA certificates after the leaf: path building
    // is bounded, the leaf still verifies through the real intermediate
    // (placed last), or is rejected, but never hangs or panics.
    let leaf = std::fs::read_to_string(pki.path("contoso.pem")).unwrap();
    let (leaf_pem, inter_pem) = leaf.split_at(leaf.find("-----END CERTIFICATE-----").unwrap() + 26);
    let mut chain = leaf_pem.to_string();
    for i in 0..300 {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, format!("junk CA {i}"));
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.not_before = date_time_ymd(2010, 1, 1);
        p.not_after = date_time_ymd(2045, 1, 1);
        chain.push_str(&p.self_signed(&KeyPair::generate().unwrap()).unwrap().pem());
    }
    chain.push_str(inter_pem);
    let big = pki.path("big-chain.pem");
    std::fs::write(&big, chain).unwrap();
    let (code, r) = ndr_with(&pki, &config, &big);
    assert!(code == 0 || code == 1, "{r}");
    assert!([250, 550].contains(&r["code"].as_u64().unwrap()), "{r}");
}
