//! `attrelay config test`: what `serve` would refuse, found before it is
//! started — every problem listed, nothing bound, nothing written.

use crate::support::relay::Setup;
use crate::support::{attrelay, stdout};

#[test]
fn a_configuration_serve_would_start_on_passes() {
    let setup = Setup::new()
        .set("server.tls_cert", "contoso.pem")
        .set("server.tls_key", "contoso.key")
        .set("delivery.directory", "outbox");
    let path = setup.write();
    let out = attrelay(&["config", "test", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).ends_with(": ok\n"), "{}", stdout(&out));
    assert!(!setup.path("spool").exists(), "config test writes nothing");
}

#[test]
fn every_file_serve_would_refuse_is_listed() {
    let setup = Setup::new()
        // A certificate in DER (not PEM), a key that is not the
        // certificate's, a CA file that is not there, a spool under a file.
        .file("server.der", [0x30u8, 0x82, 0x01, 0x0a, 0x02])
        .set("server.tls_cert", "server.der")
        .set("server.tls_key", "contoso.key")
        .set("delivery.tls_ca", vec!["no-such-ca.pem"])
        .set("delivery.next_hop", "smtp.example.net:25")
        .set("spool.path", "/etc/hostname/spool");
    let path = setup.write();
    let out = attrelay(&["config", "test", "--config", path.to_str().unwrap()]);
    let said = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    // Each problem names the configuration's file, line and key, then the
    // file and its cause, once.
    let file = path.display().to_string();
    let line_of = |key: &str| {
        let text = std::fs::read_to_string(&path).unwrap();
        let (table, name) = key.split_once('.').unwrap();
        let mut in_table = false;
        text.lines()
            .position(|l| {
                if l.starts_with('[') {
                    in_table = l == format!("[{table}]");
                }
                in_table && l.starts_with(&format!("{name} ="))
            })
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("{key} in {text}"))
    };
    let cert = said
        .lines()
        .find(|l| l.contains("server.tls_cert"))
        .unwrap_or_else(|| panic!("{said}"));
    assert!(
        cert.starts_with(&format!(
            "{file}:{}: server.tls_cert: ",
            line_of("server.tls_cert")
        )),
        "{cert}"
    );
    assert!(
        cert.contains("server.der") && cert.contains("openssl x509 -inform der"),
        "{cert}"
    );
    assert!(
        said.contains(&format!(
            "{file}:{}: delivery.tls_ca[0]: ",
            line_of("delivery.tls_ca")
        )) && said.contains("no-such-ca.pem"),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "{file}:{}: spool.path: /etc/hostname/spool cannot be created",
            line_of("spool.path")
        )),
        "{said}"
    );
    // (The directory lint's warnings come too, each marked so.)
    let problems = said.lines().filter(|l| !l.contains(": warning: ")).count();
    assert_eq!(problems, 3, "one line per problem: {said}");
    assert_eq!(
        said.matches("No such file or directory").count(),
        1,
        "each cause once: {said}"
    );
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let setup = Setup::new()
        .set("server.tls_cert", "contoso.pem")
        .set("server.tls_key", "wildcard.key")
        .set("delivery.directory", "outbox");
    let path = setup.write();
    let out = attrelay(&["config", "test", "--config", path.to_str().unwrap()]);
    let said = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("server.tls_cert / tls_key:"), "{said}");
}

/// `serve` says the same as `config test` about the files it names, and
/// binds nothing: a missing certificate is named with the configuration's
/// file, line and key, and its cause once.
#[test]
fn serve_names_the_key_of_a_file_it_cannot_read() {
    let setup = Setup::new()
        .set("server.tls_cert", "certs/nope.pem")
        .set("server.tls_key", "contoso.key");
    let path = setup.write();
    let out = attrelay(&["serve", "--config", path.to_str().unwrap()]);
    let said = crate::support::stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains(&format!("{}:", path.display())) && said.contains(": server.tls_cert: "),
        "{said}"
    );
    assert!(said.contains("certs/nope.pem"), "{said}");
    assert_eq!(
        said.matches("No such file or directory").count(),
        1,
        "{said}"
    );
    assert!(!setup.path("spool").exists(), "nothing written");
}

/// `config show` prints the keys the file sets with the values in effect
/// (paths resolved, domains normalised); `--defaults` every key, and what
/// it prints is itself a configuration with the same effect.
#[test]
fn config_show_prints_what_is_in_effect_and_its_defaults_round_trip() {
    let setup = Setup::new()
        .set("server.idle_timeout_secs", 30)
        .set("delivery.next_hop", "smtp.example.net:2525")
        .merge_tenant("contoso", "smart_hosts = [\"mail.contoso.com:25\"]");
    let path = setup.write();
    let shown = crate::support::succeeded(&attrelay(&[
        "config",
        "show",
        "--config",
        path.to_str().unwrap(),
    ]));
    assert!(shown.contains("idle_timeout_secs = 30"), "{shown}");
    assert!(
        shown.contains("next_hop = \"smtp.example.net:2525\""),
        "{shown}"
    );
    assert!(
        shown.contains("smart_hosts = [\"mail.contoso.com:25\"]"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("path = \"{}\"", setup.path("spool").display())),
        "resolved: {shown}"
    );
    assert!(
        !shown.contains("retry_max_secs"),
        "not set in the file: {shown}"
    );

    let full = crate::support::succeeded(&attrelay(&[
        "config",
        "show",
        "--defaults",
        "--config",
        path.to_str().unwrap(),
    ]));
    for default in [
        "retry_max_secs = 3600",
        "max_queue_age_secs = 432000",
        "idle_timeout_secs = 30",
        "timeout_ms = 200",
    ] {
        assert!(full.contains(default), "{default}: {full}");
    }
    let again = setup.path("shown.toml");
    std::fs::write(&again, &full).unwrap();
    let tested = attrelay(&["config", "test", "--config", again.to_str().unwrap()]);
    assert_eq!(tested.status.code(), Some(0), "{}", stdout(&tested));
    let full_again = crate::support::succeeded(&attrelay(&[
        "config",
        "show",
        "--defaults",
        "--config",
        again.to_str().unwrap(),
    ]));
    let body = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&full_again), body(&full), "the same configuration");
}
