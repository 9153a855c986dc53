//! Certificates from hostile or sloppy clients: each gets the correct
//! attribution or a clear non-attribution, never a panic, and never a forged
//! header. Run through `attrelay check` and `attrelay cert inspect` (the same
//! verification and policy as the relay) on PEM files made with rcgen, and
//! over the wire where the certificate's text reaches a message.

use crate::support;

use std::path::{Path, PathBuf};

use attrelay::certificate::MAX_DNS_NAMES;
use rcgen::{
    CertificateParams, CertifiedIssuer, DnType, DnValue, GeneralSubtree, KeyPair, NameConstraints,
    date_time_ymd,
};
use serde_json::Value;
use support::wire::{CONTOSO_IP, Relay};
use support::{LONG, Pki, attrelay, leaf_params, stderr, stdout};

const NOW: &str = "2026-06-01T00:00:00Z";

/// `check` of one recipient on the Internet from an unknown IP, with the
/// certificate `pem`, for sender `from`. Returns (exit status, the
/// recipient's report).
fn check_with(config: &str, pem: &Path, from: &str) -> (i32, Value) {
    let out = attrelay(&[
        "check",
        "--config",
        config,
        "--ip",
        "192.0.2.77",
        "--from",
        from,
        "--to",
        "x@internet.example",
        "--at",
        NOW,
        "--cert",
        pem.to_str().unwrap(),
        "--json",
    ]);
    let json: Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    (out.status.code().unwrap(), json["recipients"][0].clone())
}

/// `check` of an NDR from an unknown IP: only a verified certificate-based
/// connector can relay it. Returns (exit status, first recipient's report).
fn ndr_with(config: &str, pem: &Path) -> (i32, Value) {
    check_with(config, pem, "")
}

/// `attrelay cert inspect PEM --config CONFIG --at NOW`: its standard output.
fn inspect(config: &str, pem: &Path) -> String {
    support::cert_inspect(pem.to_str().unwrap(), config, NOW)
}

/// `pem` verifies, yet an NDR from an unknown IP with it is refused
/// (`550 5.7.64`, no tenant): its names attribute nothing. Returns what
/// `cert inspect` says of it, for the reason.
fn verified_but_not_attributed(config: &str, pem: &Path) -> String {
    let (code, r) = ndr_with(config, pem);
    assert_eq!(
        (code, r["code"].as_u64(), r["enhanced"].as_str()),
        (1, Some(550), Some("5.7.64")),
        "{r}"
    );
    assert!(r["tenant"].is_null(), "{r}");
    let text = inspect(config, pem);
    assert!(text.contains("chain:       verified against"), "{text}");
    text
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

/// A CA under the test issuing CA whose name constraints permit only DNS
/// names in `permitted`: a tenant's own CA, constrained to its domain.
fn constrained_ca(pki: &Pki, permitted: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = support::ca_params(&format!("{permitted} constrained CA"));
    p.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName(permitted.to_string())],
        excluded_subtrees: Vec::new(),
    });
    CertifiedIssuer::signed_by(p, KeyPair::generate().unwrap(), &pki.issuer).unwrap()
}

/// Signs `params` with `ca` and writes `NAME.pem` (the leaf, `ca`, then the
/// issuing CA: the whole chain up to the trusted root) and `NAME.key`.
fn leaf_under(
    pki: &Pki,
    ca: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    params: CertificateParams,
) -> PathBuf {
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    let path = pki.path(&format!("{name}.pem"));
    let chain = format!("{}{}{}", cert.pem(), ca.pem(), pki.issuer.pem());
    std::fs::write(&path, chain).unwrap();
    std::fs::write(pki.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
    path
}

fn cn_only(cn: &str) -> CertificateParams {
    let mut p = leaf_params(cn, &[], LONG.0, LONG.1);
    p.subject_alt_names.clear();
    p
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
        let (code, r) = ndr_with(&config, &pem);
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
    let (code, r) = ndr_with(&config, &pem);
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
    let (code, r) = ndr_with(&config, &pem);
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
    let (code, r) = ndr_with(&config, &pem);
    assert_eq!((code, r["code"].as_u64()), (1, Some(550)), "{r}");
}

#[test]
fn very_large_certificates_and_chains_do_not_break_anything() {
    let pki = Pki::new();
    let config = pki.write_config("").display().to_string();
    // 2 000 SANs: only the first MAX_DNS_NAMES are considered, so the real
    // name attributes in the last considered place and not after the bound
    // (and the CN, mail.contoso.com, plays no part: the certificate has DNS
    // SANs). Either way the answer is clean.
    let junk: Vec<String> = (0..2000)
        .map(|i| format!("host{i}.unrelated.example"))
        .collect();
    for (place, expected) in [
        (MAX_DNS_NAMES - 1, (0, Some(250), Some("contoso"))),
        (2000, (1, Some(550), None)),
    ] {
        let mut sans = junk.clone();
        sans.insert(place, "mail.contoso.com".into());
        let refs: Vec<&str> = sans.iter().map(String::as_str).collect();
        let pem = pki.leaf(
            &format!("many-sans-{place}"),
            leaf_params("mail.contoso.com", &refs, LONG.0, LONG.1),
        );
        let (code, r) = ndr_with(&config, &pem);
        assert_eq!(
            (code, r["code"].as_u64(), r["tenant"].as_str()),
            expected,
            "real name in place {place}: {r}"
        );
    }

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
    let (code, r) = ndr_with(&config, &big);
    assert!(code == 0 || code == 1, "{r}");
    assert!([250, 550].contains(&r["code"].as_u64().unwrap()), "{r}");
}

#[test]
fn the_cn_is_not_a_name_when_the_certificate_has_dns_sans() {
    let pki = Pki::new();
    let config = pki.write_config("").display().to_string();
    // RFC 6125: with a DNS SAN present the CN is not an identifier, so a CN
    // for contoso beside an unrelated SAN does not make it contoso's server.
    let pem = pki.leaf(
        "cn-beside-other-san",
        leaf_params(
            "mail.contoso.com",
            &["mail.unrelated.example"],
            LONG.0,
            LONG.1,
        ),
    );
    let text = verified_but_not_attributed(&config, &pem);
    assert!(
        text.contains("CN:          mail.contoso.com (ignored: the certificate has DNS subject alternative names"),
        "{text}"
    );
    assert!(
        text.contains("DNS SANs:    mail.unrelated.example"),
        "{text}"
    );
    assert!(text.contains("attribution by certificate: none"), "{text}");
}

#[test]
fn a_name_constrained_ca_cannot_mint_a_cn_for_another_tenant() {
    let pki = Pki::new();
    let config = pki.write_config("").display().to_string();
    let fabrikam_ca = constrained_ca(&pki, "fabrikam.com");

    // A CN-only leaf for contoso's server: webpki verifies the chain (DNS
    // name constraints bind SANs, not the CN), so only the relay's own rule
    // keeps the CN from counting.
    let pem = leaf_under(
        &pki,
        &fabrikam_ca,
        "constrained-cn",
        cn_only("mail.contoso.com"),
    );
    let text = verified_but_not_attributed(&config, &pem);
    assert!(
        text.contains("CN:          mail.contoso.com (ignored: a CA of the verified chain has name constraints"),
        "{text}"
    );
    assert!(text.contains("attribution by certificate: none"), "{text}");

    // A SAN inside the constraint verifies and identifies fabrikam's server
    // (a host-name connector: fabrikam senders only).
    let pem = leaf_under(
        &pki,
        &fabrikam_ca,
        "constrained-san",
        leaf_params("mail.fabrikam.com", &["mail.fabrikam.com"], LONG.0, LONG.1),
    );
    let (code, r) = check_with(&config, &pem, "john@fabrikam.com");
    assert_eq!(
        (code, r["code"].as_u64(), r["tenant"].as_str()),
        (0, Some(250), Some("fabrikam")),
        "{r}"
    );

    // A SAN outside it does not verify at all.
    let pem = leaf_under(
        &pki,
        &fabrikam_ca,
        "constrained-outside",
        leaf_params("mail.contoso.com", &["mail.contoso.com"], LONG.0, LONG.1),
    );
    let (code, r) = ndr_with(&config, &pem);
    assert_eq!((code, r["code"].as_u64()), (1, Some(550)), "{r}");
    assert!(why(&r).contains("NameConstraintViolation"), "{}", why(&r));

    // The same CN-only leaf from the unconstrained issuing CA still counts.
    let pem = pki.leaf("unconstrained-cn", cn_only("mail.contoso.com"));
    let (code, r) = ndr_with(&config, &pem);
    assert_eq!((code, r["tenant"].as_str()), (0, Some("contoso")), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_subject_never_becomes_a_header_line() {
    let relay = Relay::start("").await;
    // A self-signed certificate whose CN and O try to add header lines (and
    // to close the trace's quoted string and comment).
    let mut params = cn_only("mail.contoso.com\r\nX-Attributed-Tenant: fabrikam");
    params.distinguished_name.push(
        DnType::OrganizationName,
        DnValue::Utf8String("Evil\" (Org)\r\n\r\nX-Attributed-Tenant: fabrikam\r\n".into()),
    );
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(relay.pki.path("evil-subject.pem"), cert.pem()).unwrap();
    std::fs::write(relay.pki.path("evil-subject.key"), key.serialize_pem()).unwrap();

    // From contoso's IP with a contoso sender: relayed by the IP rule,
    // whatever the (unverified) certificate says.
    let mut c = relay.session(CONTOSO_IP, Some("evil-subject")).await;
    assert!(c.cmd("MAIL FROM:<john@contoso.com>").await.is(250, "2.1.0"));
    let r = c.cmd("RCPT TO:<someone@internet.example>").await;
    assert!(r.is(250, "2.1.5"), "{r:?}");
    let r = c.data(b"Subject: evil subject\r\n\r\nbody\r\n.\r\n").await;
    assert!(r.is(250, "2.0.0"), "{r:?}");

    let m = relay.sink.wait_for(1).await[0].clone();
    let text = String::from_utf8_lossy(&m.data).to_string();
    let head = text.split("\r\n\r\n").next().unwrap();
    assert!(
        !head.replace("\r\n", "").contains(['\r', '\n']),
        "bare CR or LF: {text:?}"
    );
    // Every line is one of the fields written (the relay's two, the
    // client's Subject) or a TAB-folded continuation of them.
    for line in head.split("\r\n") {
        let field = ["Received: ", "X-Attributed-Tenant: ", "Subject: "]
            .iter()
            .any(|p| line.starts_with(p));
        assert!(field || line.starts_with('\t'), "{line:?} in {text}");
        assert!(line.len() <= 998, "{line:?}");
        assert!(
            line.bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b)),
            "{line:?}"
        );
    }
    // Exactly the relay's own attribution, as a line and as a parser sees it.
    let attributions: Vec<&str> = head
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().contains("x-attributed-tenant") && !l.starts_with('\t'))
        .collect();
    assert_eq!(attributions, ["X-Attributed-Tenant: contoso"], "{text}");
    assert_eq!(
        m.header_values("X-Attributed-Tenant"),
        ["contoso"],
        "{text}"
    );
    // The subject is in the trace, RFC 4514-escaped and then quoted.
    assert!(
        text.contains(
            "\tclient certificate \"CN=mail.contoso.com\\\\0D\\\\0AX-Attributed-Tenant: fabrikam, O=Evil\\\\22 \\\\28Org\\\\29\\\\0D\\\\0A\\\\0D\\\\0AX-Attributed-Tenant: fabrikam\\\\0D\\\\0A\" not verified)\r\n"
        ),
        "{text}"
    );
    relay.handle.stop().await;
}

/// The chain that cost most before chains were bounded, within the bounds
/// now: a leaf; CAs sharing its issuer's name with different keys, each
/// issuing the others (loops); one with over a thousand extensions;
/// nothing chaining to a trust anchor. Written as `costly.pem`/`.key`.
fn costly_chain(dir: &Path) -> usize {
    use rcgen::{BasicConstraints, CustomExtension, IsCa, KeyUsagePurpose};
    let ca = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p.not_before = date_time_ymd(2010, 1, 1);
        p.not_after = date_time_ymd(2045, 1, 1);
        p
    };
    let first =
        CertifiedIssuer::self_signed(ca("Shared CA"), KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = leaf_params("mail.contoso.com", &["mail.contoso.com"], LONG.0, LONG.1)
        .signed_by(&key, &first)
        .unwrap();
    let mut pem = leaf.pem();
    pem.push_str(&first.pem());
    let mut previous = first;
    for _ in 0..6 {
        let next =
            CertifiedIssuer::signed_by(ca("Shared CA"), KeyPair::generate().unwrap(), &previous)
                .unwrap();
        pem.push_str(&next.pem());
        previous = next;
    }
    let mut heavy = ca("Other CA");
    for i in 0..1200u64 {
        heavy
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 55555, i],
                vec![0x04, 0x10, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7],
            ));
    }
    let heavy = CertifiedIssuer::signed_by(heavy, KeyPair::generate().unwrap(), &previous).unwrap();
    pem.push_str(&heavy.pem());
    let back =
        CertifiedIssuer::signed_by(ca("Shared CA"), KeyPair::generate().unwrap(), &heavy).unwrap();
    pem.push_str(&back.pem());
    std::fs::write(dir.join("costly.pem"), &pem).unwrap();
    std::fs::write(dir.join("costly.key"), key.serialize_pem()).unwrap();
    pem.matches("BEGIN CERTIFICATE").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costly_chains_delay_only_their_own_sessions() {
    use std::time::{Duration, Instant};
    use support::smtp::Client;
    let relay = Relay::start("").await;
    let presented = costly_chain(relay.pki.dir.path());
    assert_eq!(presented, attrelay_engine::chain::MAX_CHAIN_CERTS);
    let (pem, key) = relay.cert("costly");
    let der_bytes: usize = attrelay::pem::read_certificates(&pem)
        .unwrap()
        .iter()
        .map(|c| c.len())
        .sum();
    assert!(der_bytes <= attrelay_engine::chain::MAX_CHAIN_BYTES);
    eprintln!("the costly chain: {presented} certificates, {der_bytes} bytes");
    // It is no authentication, and says why.
    let inspect_started = Instant::now();
    let text = inspect(&relay.pki.path("relay.toml").display().to_string(), &pem);
    eprintln!(
        "attrelay cert inspect on the costly chain: {:?} (process start included)",
        inspect_started.elapsed()
    );
    assert!(
        text.contains("not verified") || text.contains("issuer not trusted"),
        "{text}"
    );

    let stop = Instant::now() + Duration::from_secs(6);
    let mut attackers = Vec::new();
    for _ in 0..3 {
        let (addr, pem, key) = (relay.addr, pem.clone(), key.clone());
        attackers.push(tokio::spawn(async move {
            let mut handshakes = 0;
            while Instant::now() < stop {
                let (mut c, _) = Client::connect_from(addr, "127.0.2.77".parse().unwrap()).await;
                c.cmd("EHLO attacker.example").await;
                if c.starttls(Some((&pem, &key))).await.code != 220 {
                    break;
                }
                c.cmd("EHLO attacker.example").await;
                handshakes += 1;
            }
            handshakes
        }));
    }
    // A bystander, meanwhile: banner and EHLO within a second, every time.
    let mut slowest = Duration::ZERO;
    while Instant::now() + Duration::from_millis(500) < stop {
        let started = Instant::now();
        let (mut c, greeting) = Client::connect_from(relay.addr, CONTOSO_IP.parse().unwrap()).await;
        assert_eq!(greeting.code, 220);
        assert_eq!(c.cmd("EHLO onprem.contoso.com").await.code, 250);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut handshakes = 0;
    for a in attackers {
        handshakes += a.await.unwrap();
    }
    assert!(
        handshakes >= 3,
        "the attackers got their handshakes: {handshakes}"
    );
    eprintln!(
        "{handshakes} costly handshakes in 6 s; the bystander's slowest banner and EHLO: {slowest:?}"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a bystander waited {slowest:?} while {handshakes} costly handshakes ran"
    );
    relay.handle.stop().await;
}
