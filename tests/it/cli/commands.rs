//! `attrelay check` and `attrelay cert inspect` as a user runs them: the built
//! binary, real PEM files made at test time (a root CA, an intermediate,
//! leaves), asserting reply codes, tenants, explanations and exit status.

use crate::support;
use crate::support::Edit;

use serde_json::Value;
use support::relay::Setup;
use support::{Pki, attrelay, stderr, stdout};

const ENFORCED: &str = "2017-08-01T00:00:00Z";
const GRACE: &str = "2017-03-01T00:00:00Z";
const NOW: &str = "2026-06-01T00:00:00Z";
const UNKNOWN_IP: &str = "192.0.2.77";
const CONTOSO_IP: &str = "203.0.113.10";

struct Ctx {
    pki: Pki,
    config: String,
}

fn ctx() -> Ctx {
    let pki = Pki::new();
    let config = pki.write_config("").display().to_string();
    Ctx { pki, config }
}

impl Ctx {
    fn pem(&self, name: &str) -> String {
        self.pki.path(&format!("{name}.pem")).display().to_string()
    }

    /// `cert inspect NAME.pem --config relay.toml --at NOW`: its standard output (exit 0 asserted).
    fn inspect(&self, name: &str) -> String {
        support::cert_inspect(&self.pem(name), &self.config, NOW)
    }

    /// Runs `check --json` and returns (exit code, parsed report).
    fn check(
        &self,
        ip: &str,
        cert: Option<&str>,
        from: &str,
        to: &[&str],
        at: &str,
    ) -> (i32, Value) {
        let mut args = vec![
            "check",
            "--config",
            &self.config,
            "--ip",
            ip,
            "--from",
            from,
            "--at",
            at,
            "--json",
        ];
        let pem;
        if let Some(c) = cert {
            pem = self.pem(c);
            args.extend(["--cert", &pem]);
        }
        for t in to {
            args.extend(["--to", t]);
        }
        let out = attrelay(&args);
        let json: Value = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {}\nstderr: {}", stdout(&out), stderr(&out))
        });
        (out.status.code().unwrap(), json)
    }
}

fn rcpt(report: &Value, i: usize) -> (u64, String, Value, String) {
    let r = &report["recipients"][i];
    (
        r["code"].as_u64().unwrap(),
        r["enhanced"].as_str().unwrap().to_string(),
        r["tenant"].clone(),
        r["explanation"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[test]
fn certificate_based_connector_relays_ndrs_forwarding_and_foreign_senders() {
    let c = ctx();
    for from in ["", "john@fabrikam-other.example", "john@fabrikam.com"] {
        let (code, report) = c.check(
            UNKNOWN_IP,
            Some("contoso"),
            from,
            &["kate@tailspintoys.example"],
            ENFORCED,
        );
        let (reply, enhanced, tenant, _) = rcpt(&report, 0);
        assert_eq!(
            (code, reply, enhanced.as_str()),
            (0, 250, "2.1.5"),
            "from {from:?}: {report}"
        );
        assert_eq!(tenant, "contoso");
        assert_eq!(report["recipients"][0]["reason"], "originating-certificate");
    }
}

#[test]
fn wildcard_and_multi_san_certificates_attribute() {
    let c = ctx();
    for cert in ["wildcard", "multisan"] {
        let (code, report) = c.check(
            UNKNOWN_IP,
            Some(cert),
            "",
            &["x@internet.example"],
            ENFORCED,
        );
        assert_eq!(code, 0, "{cert}: {report}");
        assert_eq!(rcpt(&report, 0).2, "contoso", "{cert}");
    }
}

#[test]
fn unverifiable_certificates_are_not_authentication() {
    let c = ctx();
    let cases = [
        ("selfsigned", "self-signed"),
        ("expired", "certificate expired at 2016-01-01T00:00:00Z"),
        (
            "contoso-leaf-only",
            "was the intermediate certificate sent?",
        ),
        ("foreign", "issuer not trusted"),
    ];
    for (cert, why) in cases {
        let (code, report) = c.check(
            UNKNOWN_IP,
            Some(cert),
            "",
            &["x@internet.example"],
            ENFORCED,
        );
        let (reply, enhanced, tenant, explanation) = rcpt(&report, 0);
        assert_eq!(
            (code, reply, enhanced.as_str()),
            (1, 550, "5.7.64"),
            "{cert}: {report}"
        );
        assert_eq!(
            report["recipients"][0]["text"],
            "TenantAttribution; Relay Access Denied"
        );
        assert!(tenant.is_null());
        assert!(explanation.contains(why), "{cert}: {explanation}");
    }
}

#[test]
fn renewed_certificate_and_changed_ip_are_denied_with_the_closest_connector() {
    let c = ctx();
    let (code, report) = c.check(
        UNKNOWN_IP,
        Some("renewed"),
        "john@contoso.com",
        &["x@internet.example"],
        NOW,
    );
    let (reply, _, _, why) = rcpt(&report, 0);
    assert_eq!((code, reply), (1, 550));
    assert!(
        why.contains("closest: connector 'Contoso on-premises' (tenant contoso)"),
        "{why}"
    );
    assert!(
        why.contains("the certificate carries [mail.contoso-mail.net]"),
        "{why}"
    );

    let (code, report) = c.check(
        UNKNOWN_IP,
        None,
        "john@contoso.com",
        &["x@internet.example"],
        NOW,
    );
    let (reply, enhanced, _, why) = rcpt(&report, 0);
    assert_eq!((code, reply, enhanced.as_str()), (1, 550, "5.7.64"));
    assert!(
        why.contains(
            "client IP 192.0.2.77 is not in its sender IP addresses [203.0.113.0/24, 2001:db8::/32]"
        ),
        "{why}"
    );
}

#[test]
fn grace_period_then_enforcement() {
    let c = ctx();
    let (code, report) = c.check(CONTOSO_IP, None, "", &["x@internet.example"], GRACE);
    assert_eq!(code, 1);
    assert_eq!(report["recipients"][0]["code"], 451);
    assert_eq!(report["recipients"][0]["enhanced"], "4.4.4");
    assert_eq!(
        report["recipients"][0]["text"],
        "Relay Access Denied, unrecognized sender domain. ATTR36"
    );
    let (_, report) = c.check(CONTOSO_IP, None, "", &["x@internet.example"], ENFORCED);
    assert_eq!(report["recipients"][0]["code"], 550);
    assert_eq!(
        report["recipients"][0]["text"],
        "Relay Access Denied ATTR36. For more details please refer to KB 3169958"
    );
    assert_eq!(report["recipients"][0]["reason"], "attr36");
}

#[test]
fn warn_mode_accepts_with_a_warning_header() {
    let setup = Setup::seed()
        .set("policy.settings.before_enforcement", "warn")
        .merge("[policy.settings]\nenforcement = 2030-01-01T00:00:00Z\n");
    let path = setup.write();
    let out = attrelay(&[
        "check",
        "--config",
        path.to_str().unwrap(),
        "--ip",
        CONTOSO_IP,
        "--from",
        "",
        "--to",
        "x@internet.example",
        "--at",
        NOW,
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains("250 2.1.5"), "{text}");
    assert!(text.contains("header: X-Attrelay-Warning: ATTR36 unrecognized sender domain <> for tenant contoso; relay will be refused from 2030-01-01T00:00:00Z"), "{text}");
}

#[test]
fn host_name_connector_and_ties() {
    let c = ctx();
    let (code, report) = c.check(
        UNKNOWN_IP,
        Some("fabrikam-host"),
        "john@fabrikam.com",
        &["x@internet.example"],
        NOW,
    );
    assert_eq!((code, rcpt(&report, 0).2), (0, Value::from("fabrikam")));
    let (code, report) = c.check(
        UNKNOWN_IP,
        Some("fabrikam-host"),
        "",
        &["x@internet.example"],
        NOW,
    );
    assert_eq!(
        (code, report["recipients"][0]["reason"].clone()),
        (1, Value::from("attr36"))
    );

    let (code, report) = c.check(UNKNOWN_IP, Some("tie"), "", &["x@internet.example"], NOW);
    let (reply, _, tenant, why) = rcpt(&report, 0);
    assert_eq!((code, reply), (1, 550));
    assert!(tenant.is_null());
    assert!(
        why.contains("ambiguous: the certificate matches connectors of tenants adatum, northwind"),
        "{why}"
    );
    // A tie is no attribution, whatever the sender: the plain
    // TenantAttribution refusal (not ATTR36, which would send the
    // administrator looking at sender domains), naming both tenants.
    for sender in ["", "john@northwind.com"] {
        let (code, report) = c.check(
            UNKNOWN_IP,
            Some("tie"),
            sender,
            &["x@internet.example"],
            NOW,
        );
        let r = &report["recipients"][0];
        assert_eq!(code, 1, "{report}");
        assert_eq!(
            (
                r["code"].as_u64(),
                r["enhanced"].as_str(),
                r["reason"].as_str()
            ),
            (Some(550), Some("5.7.64"), Some("tenant-attribution")),
            "{sender}: {report}"
        );
        assert!(
            r["text"]
                .as_str()
                .unwrap_or_default()
                .contains("TenantAttribution; Relay Access Denied"),
            "{report}"
        );
        assert!(
            rcpt(&report, 0)
                .3
                .contains("tenants adatum and northwind equally specifically"),
            "{report}"
        );
        assert!(r["tenant"].is_null());
    }
}

#[test]
fn mixed_recipients_and_incoming_mail() {
    let c = ctx();
    let (code, report) = c.check(
        CONTOSO_IP,
        None,
        "john@fabrikam-other.example",
        &[
            "kate@contoso.com",
            "bob@tailspintoys.com",
            "someone@internet.example",
        ],
        NOW,
    );
    assert_eq!(code, 1, "one recipient refused: exit 1");
    let got: Vec<(u64, Value)> = (0..3)
        .map(|i| (rcpt(&report, i).0, rcpt(&report, i).2))
        .collect();
    assert_eq!(
        got,
        vec![
            (250, Value::from("contoso")),
            (250, Value::from("tailspintoys")),
            (550, Value::from("contoso"))
        ]
    );
    assert_eq!(report["recipients"][1]["reason"], "incoming");
    assert_eq!(report["recipients"][2]["rcpt"], "someone@internet.example");
}

#[test]
fn text_output_and_exit_codes() {
    let c = ctx();
    let out = attrelay(&[
        "check",
        "--config",
        &c.config,
        "--ip",
        CONTOSO_IP,
        "--from",
        "<john@contoso.com>",
        "--to",
        "<x@internet.example>",
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(
        text.contains("RCPT TO:<x@internet.example>\n  250 2.1.5 Recipient OK\n  tenant: contoso"),
        "{text}"
    );
    // The configuration's host-name connector draws the reference's advice.
    assert!(
        stderr(&out).contains(
            "connector 'Fabrikam HCW' of tenant 'fabrikam' uses certificate name mail.fabrikam.com"
        ),
        "{}",
        stderr(&out)
    );

    let bad_ip = attrelay(&[
        "check",
        "--config",
        &c.config,
        "--ip",
        "203.0.113.300",
        "--from",
        "",
        "--to",
        "x@y.example",
    ]);
    assert_eq!(bad_ip.status.code(), Some(2));
    assert!(
        stderr(&bad_ip).contains("--ip: '203.0.113.300' is not an IPv4 or IPv6 address"),
        "{}",
        stderr(&bad_ip)
    );
    let no_to = attrelay(&[
        "check", "--config", &c.config, "--ip", CONTOSO_IP, "--from", "",
    ]);
    assert_eq!(no_to.status.code(), Some(2));
    let bad_at = attrelay(&[
        "check",
        "--config",
        &c.config,
        "--ip",
        CONTOSO_IP,
        "--from",
        "",
        "--to",
        "x@y.example",
        "--at",
        "tomorrow",
    ]);
    assert_eq!(bad_at.status.code(), Some(2));
    assert!(stderr(&bad_at).contains("--at"), "{}", stderr(&bad_at));
    let missing_cert = attrelay(&[
        "check",
        "--config",
        &c.config,
        "--ip",
        CONTOSO_IP,
        "--from",
        "",
        "--to",
        "x@y.example",
        "--cert",
        "/nonexistent.pem",
    ]);
    assert_eq!(missing_cert.status.code(), Some(2));
    assert!(
        stderr(&missing_cert).contains("/nonexistent.pem: cannot read"),
        "{}",
        stderr(&missing_cert)
    );
}

#[test]
fn check_with_another_policy_component() {
    let c = ctx();
    let rogue = support::build_component("rogue-policy");
    let out = attrelay(&[
        "check",
        "--config",
        &c.config,
        "--ip",
        UNKNOWN_IP,
        "--from",
        "",
        "--to",
        "x@internet.example",
        "--policy",
        rogue.to_str().unwrap(),
        "--json",
    ]);
    // The rogue component without settings accepts everything: `--policy` really swaps the component.
    let report: Value = serde_json::from_str(&support::succeeded(&out)).unwrap();
    assert_eq!(report["policy"], rogue.display().to_string());
}

#[test]
fn cert_inspect_explains_every_connector() {
    let c = ctx();
    let text = c.inspect("renewed");
    assert!(
        text.contains("subject:     CN=mail.contoso-mail.net"),
        "{text}"
    );
    assert!(
        text.contains("issuer:      CN=attrelay Test Issuing CA, O=attrelay tests"),
        "{text}"
    );
    assert!(
        text.contains("DNS SANs:    mail.contoso-mail.net"),
        "{text}"
    );
    assert!(text.contains("chain:       verified against"), "{text}");
    assert!(text.contains("no     'Contoso on-premises' (tenant contoso) *.contoso.com: none of the certificate's names [mail.contoso-mail.net] is contoso.com or a subdomain of it"), "{text}");
    assert!(text.contains("attribution by certificate: none"), "{text}");
    let closest: Vec<&str> = text.lines().filter(|l| l.ends_with("<- closest")).collect();
    assert_eq!(closest.len(), 1, "{text}");

    let text = c.inspect("multisan");
    assert!(text.contains("MATCH  'Contoso on-premises' (tenant contoso) *.contoso.com: matches mail1.contoso.com (wildcard)"), "{text}");
    assert!(
        text.contains("attribution by certificate: tenant contoso"),
        "{text}"
    );
    let serial_line = text.lines().find(|l| l.contains("serial:")).unwrap();
    assert!(
        serial_line
            .trim_start_matches("  serial:")
            .trim()
            .chars()
            .all(|ch| ch.is_ascii_hexdigit()),
        "{serial_line}"
    );
    let sha = text
        .lines()
        .find(|l| l.contains("SHA-256:"))
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap();
    assert_eq!(sha.len(), 64);

    let text = c.inspect("fabrikam-host");
    assert!(
        text.contains("mail.fabrikam.com is NOT an accepted domain"),
        "{text}"
    );
    assert!(
        text.contains(
            "warning: connector 'Fabrikam HCW' (tenant fabrikam) is set to mail.fabrikam.com"
        ),
        "{text}"
    );

    let text = c.inspect("selfsigned");
    assert!(
        text.contains("chain:       NOT verified: self-signed certificate"),
        "{text}"
    );
    assert!(
        text.contains("warning: the certificate is self-signed"),
        "{text}"
    );

    let text = c.inspect("expired");
    assert!(text.contains("(EXPIRED at 2026-06-01T00:00:00Z)"), "{text}");
    assert!(
        text.contains("NOT verified: certificate expired at 2016-01-01T00:00:00Z"),
        "{text}"
    );

    let text = c.inspect("tie");
    assert!(
        text.contains("attribution by certificate: ambiguous: tenants adatum, northwind"),
        "{text}"
    );

    // Without a configuration: the certificate alone.
    let out = attrelay(&["cert", "inspect", &c.pem("contoso")]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("chain:       not checked"),
        "{}",
        stdout(&out)
    );

    let out = attrelay(&["cert", "inspect", &c.config]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a TOML file is not a certificate"
    );
    assert!(
        stderr(&out).contains("contains no CERTIFICATE block"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn cert_inspect_advises_a_wildcard_for_several_host_names() {
    let pki = Pki::new();
    let path = pki.path("exact.toml");
    let text = support::fixture_toml("client_ca = [\"ca.pem\"]").edited(
        "tls_sender_certificate_name = \"*.contoso.com\"",
        "tls_sender_certificate_name = \"mail1.contoso.com\"",
    );
    std::fs::write(&path, text).unwrap();
    let out = attrelay(&[
        "cert",
        "inspect",
        pki.path("multisan.pem").to_str().unwrap(),
        "--config",
        path.to_str().unwrap(),
    ]);
    let text = stdout(&out);
    assert!(text.contains("warning: the certificate carries several host names (mail1.contoso.com, mail2.contoso.com); set connector 'Contoso on-premises' to *.contoso.com"), "{text}");
}

#[test]
fn check_runs_the_tenant_policies_and_the_shadow() {
    // `check` runs the relay's evaluation: contoso's own rules (a tenant
    // policy refusing a competitor's domain) and, beside them, the shadow.
    let c = ctx();
    let blocked = support::build_crate("examples/tenant-blocked-domains");
    let rogue = support::build_component("rogue-policy");
    let text = std::fs::read_to_string(&c.config)
        .unwrap()
        .replacen(
            "id = \"contoso\"\n",
            &format!(
                "id = \"contoso\"\npolicy = {:?}\npolicy_settings = {{ domains = \"competitor.example\" }}\n",
                blocked.display().to_string()
            ),
            1,
        )
        .replacen(
            "[server]",
            &format!("[policy]\nshadow = {:?}\n\n[server]", rogue.display().to_string()),
            1,
        );
    let config = c.pki.path("with-tenant-policy.toml");
    std::fs::write(&config, text).unwrap();
    let out = attrelay(&[
        "check",
        "--config",
        config.to_str().unwrap(),
        "--ip",
        CONTOSO_IP,
        "--from",
        "john@contoso.com",
        "--to",
        "ceo@mail.competitor.example",
        "--to",
        "kate@tailspintoys.com",
        "--to",
        "x@internet.example",
        "--json",
    ]);
    let report: Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", stdout(&out), stderr(&out)));
    assert_eq!(out.status.code(), Some(1), "{report}");
    let (code, enhanced, tenant, _) = rcpt(&report, 0);
    assert_eq!((code, enhanced.as_str()), (550, "5.7.1"), "{report}");
    assert_eq!(tenant, "contoso");
    assert_eq!(
        report["recipients"][0]["text"],
        "Relaying to competitor.example refused by tenant policy"
    );
    let (code, _, tenant, _) = rcpt(&report, 1);
    assert_eq!(
        (code, tenant.as_str().unwrap()),
        (250, "contoso"),
        "{report}"
    );
    // The shadow (the rogue component accepting everything with no tenant)
    // differs on every recipient the active policy attributed, and never decides.
    assert_eq!(report["recipients"][1]["shadow"]["code"], 250, "{report}");
    assert!(
        report["recipients"][1]["shadow"]["tenant"].is_null(),
        "{report}"
    );
}

#[test]
fn check_accepts_the_bare_postmaster_as_the_relay_does() {
    // RFC 5321 4.5.1: <postmaster> is accepted for the configured mailbox
    // without asking a policy, whoever sends it, as on the wire.
    let c = ctx();
    let (code, report) = c.check(
        UNKNOWN_IP,
        None,
        "a@internet.example",
        &["postmaster", "x@internet.example"],
        NOW,
    );
    assert_eq!(code, 1, "{report}");
    let r = &report["recipients"][0];
    assert_eq!(
        (r["code"].as_u64(), r["reason"].as_str()),
        (Some(250), Some("postmaster")),
        "{report}"
    );
    assert_eq!(r["rcpt"], "postmaster@relay.example.test", "{report}");
    assert_eq!(report["recipients"][1]["code"], 550, "{report}");
}
