//! Runner: a gateway composed with `wac` (`gateway/compose.wac`) from the
//! gateway socket, the directory provider and a base policy component, on
//! wasmtime. With the default policy plugged in it passes the kit; with an
//! operator's policy it judges by that policy, its verdicts still checked.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use attrelay_policy::scenarios::KitScenario;

use super::gateway::WasmtimeGateway;
use super::{Host, assert_passes, certs};
use crate::support;

/// `wac compose gateway/compose.wac` with `policy` plugged in, into `out`.
fn compose(policy: &Path, out: &Path) {
    let socket = support::build_gateway_variant("socket");
    let provider = support::build_gateway_variant("directory-provider");
    let dep = |name: &str, path: &Path| format!("{name}={}", path.display());
    let output = Command::new("wac")
        .arg("compose")
        .arg(support::root().join("gateway/compose.wac"))
        .args(["--dep", &dep("attrelay:gateway-socket", &socket)])
        .args(["--dep", &dep("attrelay:directory-provider", &provider)])
        .args(["--dep", &dep("operator:policy", policy)])
        .arg("-o")
        .arg(out)
        .output()
        .expect("running wac (cargo install wac-cli; .ci/run does)");
    assert!(
        output.status.success(),
        "wac compose: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The composition with the default policy, once per test run.
fn with_default_policy() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        let dir = support::root().join("target/test-components");
        std::fs::create_dir_all(&dir).unwrap();
        let policy = dir.join("default-policy.wasm");
        std::fs::write(&policy, attrelay::policy::DEFAULT_POLICY).unwrap();
        let out = dir.join("composed-default.wasm");
        compose(&policy, &out);
        out
    })
}

#[test]
fn a_gateway_composed_with_the_default_policy_passes_the_kit() {
    assert_passes(&mut WasmtimeGateway::from_file(with_default_policy()));
}

/// One scenario of the kit's shape, judged by `host`: what its recipients got.
fn judge(host: &mut WasmtimeGateway, json: &str) -> Vec<super::Observed> {
    let s: KitScenario = serde_json::from_str(json).unwrap();
    let (mail, rcpts) = host.run(&s, certs());
    assert_eq!(mail.code, 250, "{mail:?}");
    rcpts
}

#[test]
fn a_gateway_composed_with_an_operators_policy_judges_by_it_within_the_checks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("composed-rogue.wasm");
    compose(&support::build_component("rogue-policy"), &out);
    let mut host = WasmtimeGateway::from_file(&out);
    // An unknown client relaying to the Internet: the default policy says
    // 550 5.7.64; this operator's policy accepts everything.
    let open = r#"{"name": "open", "layer": "host", "client_ip": "192.0.2.77",
        "time": "2017-08-01T00:00:00Z", "tls": null, "settings": {"behavior": "attribute-by-domain"},
        "sender": "a@internet.example", "recipients": [
        {"address": "b@elsewhere.example", "code": 0, "enhanced": "", "tenant": null, "reason": "", "warning": false},
        {"address": "kate@contoso.com", "code": 0, "enhanced": "", "tenant": null, "reason": "", "warning": false}]}"#;
    let got = judge(&mut host, open);
    assert_eq!(
        (got[0].code, got[0].enhanced.as_str()),
        (250, "2.1.5"),
        "{got:?}"
    );
    // It reads the directory the socket loaded, through the provider.
    assert_eq!(got[1].tenant.as_deref(), Some("contoso"), "{got:?}");
    // Its verdict naming a tenant the directory does not have fails the
    // socket's checks: 451 4.3.5, never an accept.
    let unknown = open.replace("attribute-by-domain", "unknown-tenant");
    let got = judge(&mut host, &unknown);
    assert_eq!(
        (got[0].code, got[0].enhanced.as_str()),
        (451, "4.3.5"),
        "{got:?}"
    );
    assert_eq!(got[0].reason.as_deref(), Some("policy-failure"));
}
