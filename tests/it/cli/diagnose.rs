//! The diagnostics an administrator runs: `attrelay diagnose send-log` on
//! Exchange send protocol logs written at test time in both formats, and
//! `attrelay directory lint` on configurations with what the reference
//! warns about — each with its exit status.

use crate::support::relay::Setup;
use crate::support::{Pki, attrelay, stderr, stdout};

const FIELDS: &str = "#Fields: date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,event,data,context";

/// The lines one session writes when it sends a certificate: the label in
/// `context` as Exchange writes it, quoted when a value has commas.
fn session(
    id: &str,
    subject: &str,
    issuer: &str,
    thumbprint: &str,
    alternate: Option<&str>,
) -> String {
    let at = |n: u32, data: &str, context: &str| {
        format!(
            "2016-10-04T00:00:0{n}.000Z,Outbound to Office 365,{id},{n},10.0.0.5:2{n}000,192.0.2.1:25,*,{data},{context}\r\n"
        )
    };
    let quoted = |v: &str| {
        if v.contains(',') {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v.to_string()
        }
    };
    let mut s = format!(
        "2016-10-04T00:00:00.000Z,Outbound to Office 365,{id},0,10.0.0.5:20000,192.0.2.1:25,+,,\r\n"
    );
    s += &at(1, "220 relay.example.test ESMTP", "");
    s += &at(2, "", "Sending certificate");
    s += &at(3, &quoted(subject), "Certificate subject");
    s += &at(4, &quoted(issuer), "Certificate issuer name");
    s += &at(5, "0A1B2C3D", "Certificate serial number");
    s += &at(6, thumbprint, "Certificate thumbprint");
    if let Some(names) = alternate {
        s += &at(7, &quoted(names), "Certificate alternate names");
    }
    s
}

#[test]
fn a_send_log_in_either_format_leads_to_each_certificates_fix() {
    let pki = Pki::new();
    let config = Setup::for_pki(&pki).write();
    let issuer = "CN=Contoso Issuing CA, OU=PKI, O=\"Contoso, Ltd\", C=US";
    // Exchange 2010: no alternate names; one good certificate, one session
    // without TLS.
    let old = format!(
        "#Software: Microsoft Exchange Server\r\n#Version: 14.03.0123.000\r\n#Log-type: Send Protocol Log\r\n{FIELDS}\r\n{}2016-10-04T00:00:09.000Z,Outbound to Office 365,PLAIN,0,10.0.0.5:29999,192.0.2.1:25,+,,\r\n",
        session("S2010", "CN=mail.contoso.com", issuer, "AAAA1111", None)
    );
    // Exchange 2013+: alternate names; a renewed certificate, a host-name
    // connector's, and one two tenants match.
    let new = format!(
        "#Software: Microsoft Exchange Server\r\n#Version: 15.01.2507.006\r\n#Log-type: Send Protocol Log\r\n{FIELDS}\r\n{}{}{}{}",
        session(
            "R1",
            "CN=smtp.fabrikam.com, O=\"Fabrikam, Inc\"",
            issuer,
            "BBBB2222",
            Some("smtp.fabrikam.com")
        ),
        session(
            "R2",
            "CN=smtp.fabrikam.com, O=\"Fabrikam, Inc\"",
            issuer,
            "BBBB2222",
            Some("smtp.fabrikam.com")
        ),
        session(
            "H1",
            "CN=mail.fabrikam.com",
            issuer,
            "CCCC3333",
            Some("mail.fabrikam.com")
        ),
        session(
            "T1",
            "CN=mail.northwind.com",
            issuer,
            "DDDD4444",
            Some("mail.northwind.com;mail.adatum.com")
        ),
    );
    std::fs::write(pki.path("send2010.log"), old).unwrap();
    std::fs::write(pki.path("send2013.log"), new).unwrap();
    let cfg = config.display().to_string();
    let (a, b) = (pki.path("send2010.log"), pki.path("send2013.log"));
    let args = [
        "diagnose",
        "send-log",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--config",
        &cfg,
    ];
    let out = attrelay(&args);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "not every certificate attributed: {text}{}",
        stderr(&out)
    );
    assert!(
        text.contains(
            "5 sessions sent a certificate, 1 sent none (Exchange 2010, Exchange 2013 or later)"
        ),
        "{text}"
    );
    assert!(
        text.contains("issuer:      CN=Contoso Issuing CA, OU=PKI, O=\"Contoso, Ltd\", C=US"),
        "quoted commas: {text}"
    );
    let block = |thumbprint: &str| {
        text.split("\n\n")
            .find(|b| b.contains(&format!("thumbprint:  {thumbprint}")))
            .unwrap_or_else(|| panic!("{thumbprint} in {text}"))
            .to_string()
    };
    let good = block("AAAA1111");
    assert!(
        good.contains("verdict:     attributed to tenant contoso"),
        "{good}"
    );
    assert!(!good.contains("fix:"), "{good}");
    let renewed = block("BBBB2222");
    assert!(renewed.contains("sent:        2 sessions"), "{renewed}");
    assert!(
        renewed.contains("verdict:     attributed to no tenant"),
        "{renewed}"
    );
    assert!(
        renewed.contains("expects mail.fabrikam.com")
            && renewed.contains("renewed under another name"),
        "{renewed}"
    );
    assert!(renewed.contains("Hybrid Configuration Wizard"), "{renewed}");
    let host = block("CCCC3333");
    assert!(
        host.contains("verdict:     identifies tenant fabrikam's server only"),
        "{host}"
    );
    assert!(host.contains("set TlsSenderCertificateName (tls_sender_certificate_name) of connector 'Fabrikam HCW' (tenant fabrikam) to *.fabrikam.com"), "{host}");
    let tie = block("DDDD4444");
    assert!(
        tie.contains("verdict:     ambiguous between tenants adatum and northwind"),
        "{tie}"
    );
    assert!(text.contains("1 sessions sent no certificate"), "{text}");
    assert!(text.contains("cannot tell from a log: a send log records the certificate, not whether its chain verifies"), "{text}");

    // The same as JSON; and a log of only good certificates exits 0.
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let report: serde_json::Value = serde_json::from_str(&stdout(&attrelay(&json_args))).unwrap();
    assert_eq!(
        report["certificates"].as_array().unwrap().len(),
        4,
        "{report}"
    );
    let only_good = attrelay(&[
        "diagnose",
        "send-log",
        a.to_str().unwrap(),
        "--config",
        &cfg,
    ]);
    assert_eq!(only_good.status.code(), Some(0), "{}", stdout(&only_good));
    let missing = attrelay(&[
        "diagnose",
        "send-log",
        "/nonexistent/send.log",
        "--config",
        &cfg,
    ]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("/nonexistent/send.log"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn the_directory_lint_names_each_regretted_grant_with_its_line() {
    let pki = Pki::new();
    // The whole Internet granted to a tenant: it loads, and `check` relays
    // for anyone writing a contoso sender, so the lint must say so.
    let config = Setup::for_pki(&pki)
        .merge(
            "[[tenant]]\nid = \"open\"\naccepted_domains = [\"open.example\"]\n[[tenant.connector]]\nname = \"everyone\"\ntype = \"on-premises\"\nsender_ip_addresses = [\"0.0.0.0/0\"]\n",
        )
        .write();
    let cfg = config.display().to_string();
    let out = attrelay(&["directory", "lint", "--config", &cfg]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let warning = text
        .lines()
        .find(|l| l.contains("0.0.0.0/0 makes every address on the Internet tenant open's server"))
        .unwrap_or_else(|| panic!("{text}"));
    // It names the file, and a line of the connector that grants it.
    let line: usize = warning
        .strip_prefix(&format!("{cfg}:"))
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{warning}"));
    let toml = std::fs::read_to_string(&config).unwrap();
    let lines: Vec<&str> = toml.lines().collect();
    let header = (0..line)
        .rev()
        .find(|i| lines[*i].starts_with('['))
        .unwrap();
    let block: Vec<&str> = lines[header..]
        .iter()
        .take_while(|l| !l.is_empty())
        .copied()
        .collect();
    assert!(
        lines[header] == "[[tenant.connector]]" && block.iter().any(|l| l.contains("everyone")),
        "{warning}\n{block:?}"
    );
    // The fixture's woodgrove tenants share names by design: more specific wins.
    assert!(
        text.contains("the most specific name takes the certificate"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&attrelay(&[
        "directory",
        "lint",
        "--config",
        &cfg,
        "--json",
    ])))
    .unwrap();
    assert!(
        json.as_array()
            .unwrap()
            .iter()
            .any(|w| w["warning"].as_str().unwrap_or("").contains("0.0.0.0/0")),
        "{json}"
    );
    // check and config test say the same.
    let check = attrelay(&[
        "check",
        "--config",
        &cfg,
        "--ip",
        "8.8.8.8",
        "--from",
        "a@open.example",
        "--to",
        "x@internet.example",
    ]);
    assert!(
        stderr(&check).contains("0.0.0.0/0 makes every address"),
        "{}",
        stderr(&check)
    );
    let tested = attrelay(&["config", "test", "--config", &cfg]);
    assert!(
        stdout(&tested).contains("warning: tenant[") && stdout(&tested).contains("0.0.0.0/0"),
        "{}",
        stdout(&tested)
    );

    // A directory with nothing to regret: exit 0.
    let pki = Pki::new();
    let clean = pki.path("clean.toml");
    std::fs::write(
        &clean,
        "[server]\nclient_ca = [\"ca.pem\"]\n[[tenant]]\nid = \"a\"\naccepted_domains = [\"a.example\"]\n[[tenant.connector]]\nname = \"a\"\ntype = \"on-premises\"\nsender_ip_addresses = [\"192.0.2.0/24\"]\ntls_sender_certificate_name = \"*.a.example\"\n",
    )
    .unwrap();
    let out = attrelay(&["directory", "lint", "--config", clean.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("1 tenants, no warnings"),
        "{}",
        stdout(&out)
    );
}
