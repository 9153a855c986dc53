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
    assert!(
        said.contains("[server] tls_cert / tls_key:") && said.contains("server.der"),
        "{said}"
    );
    assert!(
        said.contains("[delivery] tls_cert / tls_key / tls_ca:") && said.contains("no-such-ca.pem"),
        "{said}"
    );
    assert!(
        said.contains("[spool] path: /etc/hostname/spool cannot be created"),
        "{said}"
    );
    assert_eq!(said.lines().count(), 3, "one line per problem: {said}");
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
    assert!(said.contains("[server] tls_cert / tls_key:"), "{said}");
}
