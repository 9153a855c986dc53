//! The embedding example, built by cargo and run as a gateway would run it.

use std::process::Command;

fn embed(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_embed"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn the_tenants_server_relays_and_a_stranger_does_not() {
    let ours = embed(&["203.0.113.10", "john@contoso.com", "kate@tailspintoys.com"]);
    assert_eq!(
        ours,
        "MAIL FROM:<john@contoso.com> 250 2.1.0 Sender OK\n\
         RCPT TO:<kate@tailspintoys.com> 250 2.1.5 Recipient OK (tenant contoso)\n"
    );
    let stranger = embed(&[
        "198.51.100.1",
        "john@contoso.com",
        "kate@tailspintoys.com",
        "joe@contoso.com",
    ]);
    assert_eq!(
        stranger,
        "MAIL FROM:<john@contoso.com> 250 2.1.0 Sender OK\n\
         RCPT TO:<kate@tailspintoys.com> 550 5.7.64 TenantAttribution; Relay Access Denied (tenant -)\n\
         RCPT TO:<joe@contoso.com> 250 2.1.5 Recipient OK (tenant contoso)\n"
    );
}
