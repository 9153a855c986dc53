//! Bad configuration gets an error naming the file, the line and the key, and
//! exit status 2; dubious configuration gets a warning with the reference's advice.

use crate::support;
use crate::support::Edit;

use support::{attrelay, stderr};

/// Writes `text` as a config file and runs `check` on it; returns (exit, stderr).
fn run(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, text).unwrap();
    let out = attrelay(&[
        "check",
        "--config",
        path.to_str().unwrap(),
        "--ip",
        "203.0.113.10",
        "--from",
        "a@contoso.com",
        "--to",
        "b@example.org",
        "--at",
        "2020-01-01T00:00:00Z",
    ]);
    (out.status.code(), stderr(&out), path.display().to_string())
}

const TENANT: &str = r#"
[[tenant]]
id = "contoso"
accepted_domains = ["contoso.com"]

[[tenant.connector]]
name = "Contoso on-premises"
type = "on-premises"
sender_ip_addresses = ["203.0.113.0/24"]
tls_sender_certificate_name = "*.contoso.com"
"#;

fn expect_error(text: &str, line: usize, key: &str, message: &str) {
    let (code, err, path) = run(text);
    assert_eq!(code, Some(2), "exit status for {key}: {err}");
    let prefix = format!("attrelay: {path}:{line}:");
    assert!(err.contains(&prefix), "expected {prefix:?} in {err:?}");
    assert!(
        err.contains(&format!(": {key}: ")),
        "expected key {key:?} in {err:?}"
    );
    assert!(err.contains(message), "expected {message:?} in {err:?}");
}

#[test]
fn a_valid_configuration_runs() {
    let (code, err, _) = run(TENANT);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn invalid_cidr_and_ip() {
    expect_error(
        &TENANT.edited("203.0.113.0/24", "203.0.113.0/33"),
        9,
        "tenant[0].connector[0].sender_ip_addresses[0]",
        "'203.0.113.0/33' is not an IP address or CIDR range",
    );
    expect_error(
        &TENANT.edited("203.0.113.0/24", "203.0.113.7/24"),
        9,
        "tenant[0].connector[0].sender_ip_addresses[0]",
        "did you mean 203.0.113.0/24",
    );
    expect_error(
        &TENANT.edited("203.0.113.0/24", "mail.contoso.com"),
        9,
        "tenant[0].connector[0].sender_ip_addresses[0]",
        "not an IP address",
    );
}

#[test]
fn misplaced_wildcards() {
    for bad in ["mail.*.contoso.com", "*mail.contoso.com", "*.*.contoso.com"] {
        expect_error(
            &TENANT.edited("*.contoso.com", bad),
            10,
            "tenant[0].connector[0].tls_sender_certificate_name",
            "a '*' is allowed only as the whole leftmost label",
        );
    }
}

#[test]
fn unknown_keys() {
    expect_error(
        &format!("{TENANT}sender_ip_adresses = [\"1.2.3.4\"]\n"),
        11,
        "tenant.connector.sender_ip_adresses",
        "unknown field `sender_ip_adresses`",
    );
    expect_error(
        &format!("[server]\nhostname = \"relay.example.test\"\nlisten_on = 1\n{TENANT}"),
        3,
        "server.listen_on",
        "unknown field `listen_on`",
    );
    expect_error(
        &TENANT.edited("\"on-premises\"", "\"cloud\""),
        8,
        "tenant.connector.type",
        "unknown variant `cloud`",
    );
}

#[test]
fn a_domain_belongs_to_one_tenant_and_ids_are_unique() {
    let second =
        "\n[[tenant]]\nid = \"other\"\naccepted_domains = [\"example.net\", \"CONTOSO.com\"]\n";
    expect_error(
        &format!("{TENANT}{second}"),
        14,
        "tenant[1].accepted_domains[1]",
        "domain contoso.com is already an accepted domain of tenant 'contoso' (line 4)",
    );
    let dup = "\n[[tenant]]\nid = \"contoso\"\naccepted_domains = [\"example.net\"]\n";
    expect_error(
        &format!("{TENANT}{dup}"),
        13,
        "tenant[1].id",
        "duplicate tenant id 'contoso' (first defined on line 3)",
    );
}

#[test]
fn policy_settings_refused_by_the_policy_point_at_their_line() {
    let text = format!(
        "[policy.settings]\nenforcement = \"2017-07-05T00:00:00Z\"\nbefore_enforcment = \"warn\"\n{TENANT}"
    );
    expect_error(
        &text,
        3,
        "policy.settings.before_enforcment",
        "unknown setting 'before_enforcment'",
    );
}

#[test]
fn host_name_connector_draws_the_wildcard_advice() {
    let (code, err, path) = run(&TENANT.edited("*.contoso.com", "mail.contoso.com"));
    assert_eq!(code, Some(0), "a warning is not an error: {err}");
    assert!(
        err.contains(&format!(
            "warning: {path}: line 7: tenant[0].connector[0].tls_sender_certificate_name"
        )),
        "{err}"
    );
    assert!(
        err.contains("set it to *.contoso.com so that the certificate-based rule applies"),
        "{err}"
    );
}

#[test]
fn unreadable_file() {
    let out = attrelay(&[
        "check",
        "--config",
        "/nonexistent/relay.toml",
        "--ip",
        "1.2.3.4",
        "--from",
        "",
        "--to",
        "x@y.example",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/relay.toml: cannot read the configuration"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn policyd_settings_are_checked() {
    expect_error(
        &format!("[policyd]\nlisten = [\"localhost:10040\"]\n{TENANT}"),
        2,
        "policyd.listen[0]",
        "'localhost:10040' is neither an address:port",
    );
    expect_error(
        &format!("[policyd]\nlisten = [\"127.0.0.1:10040\", \"unix:policy.sock\"]\n{TENANT}"),
        2,
        "policyd.listen[1]",
        "needs an absolute path",
    );
    expect_error(
        &format!("[policyd]\nlisten = [\"127.0.0.1:10040\"]\naccept_action = \"PERMIT\"\n{TENANT}"),
        3,
        "policyd.accept_action",
        "'PERMIT' is neither 'OK' nor 'DUNNO'",
    );
    expect_error(
        &format!(
            "[server]\nhostname = \"relay.example.test\"\n\n[policyd]\nmax_connections = 8\n{TENANT}"
        ),
        4,
        "policyd.listen",
        "needs at least one listen address",
    );
    expect_error(
        &format!(
            "[policyd]\nlisten = [\"unix:/run/p.sock\"]\nsocket_mode = \"rw-rw----\"\n{TENANT}"
        ),
        3,
        "policyd.socket_mode",
        "not an octal file mode",
    );
    expect_error(
        &format!("[policyd]\nlisten = [\"127.0.0.1:10040\"]\nidle_timeout_secs = 0\n{TENANT}"),
        3,
        "policyd.idle_timeout_secs",
        "must be between 1 and 86400",
    );
}

#[test]
fn delivery_dns_settings_are_checked() {
    expect_error(
        &format!(
            "[delivery]\nnext_hop = \"mx\"\ndns_servers = [\"9.9.9.9\", \"resolver.example\"]\n{TENANT}"
        ),
        3,
        "delivery.dns_servers[1]",
        "'resolver.example' is not an IP address",
    );
    expect_error(
        &format!("[delivery]\nnext_hop = \"mx\"\nmx_port = 0\n{TENANT}"),
        3,
        "delivery.mx_port",
        "must be between 1 and 65535",
    );
}

#[test]
fn an_admin_endpoint_off_loopback_needs_a_good_token() {
    use std::os::unix::fs::PermissionsExt as _;
    for listen in ["0.0.0.0:9725", "192.0.2.1:9725", "[2001:db8::1]:9725"] {
        expect_error(
            &format!("[admin]\nlisten = \"{listen}\"\n{TENANT}"),
            2,
            "admin.listen",
            &format!("{listen} is not a loopback address: without token_file"),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let token_file = |name: &str, text: &str, mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    };
    let with_token =
        |file: &str| format!("[admin]\nlisten = \"0.0.0.0:9725\"\ntoken_file = {file:?}\n{TENANT}");
    let short = token_file("short.token", "tooshort\n", 0o600);
    expect_error(
        &with_token(&short),
        3,
        "admin.token_file",
        &format!("{short}: the token has 8 characters; at least 16 are needed"),
    );
    let spaced = token_file("spaced.token", "0123456789 abcdef\n", 0o600);
    expect_error(
        &with_token(&spaced),
        3,
        "admin.token_file",
        "printable ASCII without spaces",
    );
    let missing = dir.path().join("missing.token").display().to_string();
    expect_error(
        &with_token(&missing),
        3,
        "admin.token_file",
        &format!("{missing}: cannot read the token"),
    );

    // A good token may go off loopback; one every user can read is flagged.
    let private = token_file("private.token", "0123456789abcdef0123\n", 0o600);
    let (code, err, _) = run(&with_token(&private));
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("readable by every user"), "{err}");
    let shared = token_file("shared.token", "0123456789abcdef0123\n", 0o644);
    let (code, err, path) = run(&with_token(&shared));
    assert_eq!(code, Some(0), "a warning is not an error: {err}");
    assert!(
        err.contains(&format!("warning: {path}: line 3: admin.token_file: ")),
        "{err}"
    );
    assert!(err.contains("readable by every user"), "{err}");
}

#[test]
fn spool_reserve_is_checked() {
    expect_error(
        &format!("[spool]\npath = \"spool\"\nmin_free_bytes = 2000000000000000\n{TENANT}"),
        3,
        "spool.min_free_bytes",
        "must be between 0 and 1125899906842624",
    );
    expect_error(
        &format!("[spool]\nmin_free_bytes = \"64M\"\n{TENANT}"),
        2,
        "spool.min_free_bytes",
        "invalid type: string",
    );
    // 0: no reserve, only a real ENOSPC is answered 452.
    let (code, err, _) = run(&format!("[spool]\nmin_free_bytes = 0\n{TENANT}"));
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn ipv6_prefix_length_is_checked() {
    for bad in ["16", "129"] {
        expect_error(
            &format!(
                "[server]\nhostname = \"relay.example.test\"\nipv6_prefix_length = {bad}\n{TENANT}"
            ),
            3,
            "server.ipv6_prefix_length",
            "must be between 32 and 128",
        );
    }
    for good in ["32", "64", "128"] {
        let (code, err, _) = run(&format!("[server]\nipv6_prefix_length = {good}\n{TENANT}"));
        assert_eq!(code, Some(0), "{good}: {err}");
    }
}

#[test]
fn recipient_lists_are_checked_entry_by_entry() {
    let with = |recipients: &str| {
        TENANT.edited(
            "accepted_domains = [\"contoso.com\"]\n",
            &format!("accepted_domains = [\"contoso.com\"]\nrecipients = {recipients}\n"),
        )
    };
    let (code, err, _) = run(&with(
        r#"["alice@contoso.com", "\"John Smith\"@Contoso.COM"]"#,
    ));
    assert_eq!(code, Some(0), "{err}");
    expect_error(
        &with(r#"["alice@contoso.com", "bob@fabrikam.com"]"#),
        5,
        "tenant[0].recipients[1]",
        "fabrikam.com is not an accepted domain of tenant 'contoso'",
    );
    expect_error(
        &with(r#"["alice"]"#),
        5,
        "tenant[0].recipients[0]",
        "'alice' is not an address local@domain",
    );
    expect_error(
        &with(r#"["john smith@contoso.com"]"#),
        5,
        "tenant[0].recipients[0]",
        "is not an address local@domain",
    );
    expect_error(
        &with("[]"),
        5,
        "tenant[0].recipients",
        "the recipient list of tenant 'contoso' is empty",
    );
}

#[test]
fn a_recipient_file_error_names_the_file_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let list = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let with_file = |file: &str| {
        TENANT.edited(
            "accepted_domains = [\"contoso.com\"]\n",
            &format!("accepted_domains = [\"contoso.com\"]\nrecipients_file = {file:?}\n"),
        )
    };
    let good = list(
        "good.txt",
        "# exported\n\nalice@contoso.com\r\n  bob@CONTOSO.com  \n",
    );
    let (code, err, _) = run(&with_file(&good));
    assert_eq!(code, Some(0), "{err}");

    let bad = list(
        "bad.txt",
        "# exported\nalice@contoso.com\n  bob@contoso.com # Bob\n",
    );
    let (code, err, _) = run(&with_file(&bad));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("attrelay: {bad}:3:3: tenant[0].recipients_file: ")),
        "{err}"
    );
    assert!(err.contains("is not an address local@domain"), "{err}");

    let foreign = list("foreign.txt", "alice@contoso.com\nbob@fabrikam.com\n");
    let (code, err, _) = run(&with_file(&foreign));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "attrelay: {foreign}:2:1: tenant[0].recipients_file: fabrikam.com is not an accepted domain of tenant 'contoso'"
        )),
        "{err}"
    );

    // An empty export must not silently refuse every recipient.
    let empty = list("empty.txt", "# nothing exported\n");
    expect_error(
        &with_file(&empty),
        5,
        "tenant[0].recipients_file",
        "the recipient list of tenant 'contoso' is empty",
    );
    let missing = dir.path().join("missing.txt").display().to_string();
    expect_error(
        &with_file(&missing),
        5,
        "tenant[0].recipients_file",
        &format!("cannot read {missing}"),
    );
}

#[test]
fn dsn_rate_is_checked() {
    let (code, err, _) = run(&format!(
        "[delivery]\ndsn_rate_per_domain_per_hour = 0\n{TENANT}"
    ));
    assert_eq!(
        code,
        Some(0),
        "0 (no DSNs for unauthenticated senders) is valid: {err}"
    );
    expect_error(
        &format!("[delivery]\ndsn_rate_per_domain_per_hour = 2000000\n{TENANT}"),
        2,
        "delivery.dsn_rate_per_domain_per_hour",
        "must be between 0 and 1000000",
    );
}

#[test]
fn delivery_tls_policy_and_bounds_are_checked() {
    expect_error(
        &format!("[delivery]\nnext_hop = \"mx\"\ntls = \"always\"\n{TENANT}"),
        3,
        "delivery.tls",
        "is not \"opportunistic\", \"required\" or \"verify\"",
    );
    expect_error(
        &format!("[delivery]\nnext_hop = \"mx\"\ntls = \"verify\"\n{TENANT}"),
        3,
        "delivery.tls",
        "\"verify\" needs tls_ca",
    );
    expect_error(
        &format!(
            "[delivery]\nnext_hop = \"mx\"\ntls_ca = [\"ca.pem\"]\ntls = \"opportunistic\"\n{TENANT}"
        ),
        4,
        "delivery.tls",
        "tls_ca is used only with tls = \"verify\"",
    );
    expect_error(
        &format!("[delivery]\nnext_hop = \"mx\"\nmx_address_limit = 0\n{TENANT}"),
        3,
        "delivery.mx_address_limit",
        "must be between 1 and 100",
    );
    expect_error(
        &format!("[delivery]\nnext_hop = \"mx\"\nattempt_timeout_secs = 0\n{TENANT}"),
        3,
        "delivery.attempt_timeout_secs",
        "must be between 1 and 86400",
    );
    expect_error(
        &format!(
            "[delivery]\nnext_hop = \"mx\"\nmax_connections = 10\nmax_idle_connections = 50\n{TENANT}"
        ),
        4,
        "delivery.max_idle_connections",
        "50 is more than max_connections (10)",
    );
    expect_error(
        &format!("[delivery]\nnext_hop = \"mx\"\nconnection_idle_secs = 0\n{TENANT}"),
        3,
        "delivery.connection_idle_secs",
        "must be between 1 and 300",
    );
    let (code, err, _) = run(&format!(
        "[delivery]\nnext_hop = \"mx\"\ntls = \"required\"\nmx_session_limit = 3\n{TENANT}"
    ));
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_policy_service_off_loopback_draws_a_warning() {
    let (code, err, _) = run(&format!(
        "[policyd]\nlisten = [\"0.0.0.0:10040\"]\nsocket_group = \"0\"\n{TENANT}"
    ));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("policyd.listen[0]"), "{err}");
    assert!(err.contains("is not a loopback address"), "{err}");
    expect_error(
        &format!(
            "[policyd]\nlisten = [\"127.0.0.1:10040\"]\nsocket_group = \"no-such-group-here\"\n{TENANT}"
        ),
        3,
        "policyd.socket_group",
        "is neither a group of /etc/group nor a numeric group id",
    );
}

#[test]
fn a_tenant_policy_budget_above_the_pool_slot_is_an_error() {
    // The pool's slots are sized by policy.memory_limit_mib: a larger tenant
    // budget could never be granted, so it is refused, not quietly capped.
    let text = "[policy]\nmemory_limit_mib = 16\n\n[[tenant]]\nid = \"contoso\"\naccepted_domains = [\"contoso.com\"]\npolicy = \"tenant.wasm\"\npolicy_memory_limit_mib = 32\n";
    expect_error(
        text,
        8,
        "tenant[0].policy_memory_limit_mib",
        "32 MiB is more than policy.memory_limit_mib (16 MiB)",
    );
    let text = text.edited("= 32", "= 0");
    expect_error(
        &text,
        8,
        "tenant[0].policy_memory_limit_mib",
        "must be at least 1 MiB",
    );
}
